"""Checkpoints: restore onto other meshes and strategies, damaged checkpoints, what is kept,
when saves happen, stop signals, and no checkpoint of a NaN state."""

import json
import logging
import os
import shutil
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import runs
from alexnet_jax import checkpoint as ckpt_lib
from alexnet_jax import cli, optim, program
from alexnet_jax import sharding as shard_lib
from configs import test as test_config

# Every strategy's layout: a checkpoint saved under one restores under any other, on any mesh.
STRATEGY_NAMES = ["data", "fsdp", "two_tower", "weird_trick"]
DEVICE_COUNTS = [8, 2]


def state_shapes(cfg):
  fns = program.model_fns(cfg)
  return jax.eval_shape(program.init_state_fn(fns, optim.make_optimizer(cfg.optim), cfg.seed))


def target(shapes, strategy_name: str, num_devices: int):
  """Abstract state carrying the shardings of `strategy_name` on the first `num_devices`."""
  strategy = shard_lib.get_strategy(strategy_name)
  devices = jax.devices()[:num_devices]
  mesh = shard_lib.make_mesh(strategy, strategy.default_mesh_shape(len(devices)), devices)
  shardings = shard_lib.tree_shardings(shapes, mesh, strategy)
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      shapes, shardings)


def random_state(abstract, step: int, seed: int = 0):
  """Distinct random values in every leaf (no compilation needed), placed per `abstract`."""
  rng = np.random.default_rng(seed)

  def value(s):
    if jnp.issubdtype(s.dtype, jnp.floating):
      x = rng.normal(size=s.shape).astype(s.dtype)
    else:
      x = rng.integers(0, 1000, size=s.shape).astype(s.dtype)
    return jax.device_put(x, s.sharding)

  state = jax.tree.map(value, abstract)
  return state.replace(step=jax.device_put(np.asarray(step, np.int32), abstract.step.sharding))


def assert_same_values(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


PAIRS = [(a, n, b, m) for a in STRATEGY_NAMES for b in STRATEGY_NAMES
         for n, m in ((8, 2), (2, 8)) if (a, n) != (b, m)]


@pytest.mark.parametrize("save_strategy,save_devices,restore_strategy,restore_devices", PAIRS)
def test_restore_onto_another_strategy_and_mesh(tmp_path, save_strategy, save_devices,
                                                restore_strategy, restore_devices):
  shapes = state_shapes(test_config.get_config())
  saved = random_state(target(shapes, save_strategy, save_devices), step=7)
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path), every_steps=1)
  checkpointer.save(7, saved, {"plateau": {}})
  checkpointer.close()

  goal = target(shapes, restore_strategy, restore_devices)
  restored = ckpt_lib.Checkpointer(str(tmp_path)).restore(goal)
  assert restored.step == 7
  assert_same_values(saved, restored.state)
  for got, want in zip(jax.tree.leaves(restored.state), jax.tree.leaves(goal)):
    assert got.sharding.is_equivalent_to(want.sharding, got.ndim), (got.sharding, want.sharding)
  if restore_strategy != "data":  # really split: a device holds only part of fc6's kernel
    fc6 = restored.state.params["fc6"]["kernel"]
    assert fc6.addressable_shards[0].data.size < fc6.size


# --- damaged and half-written checkpoints ---------------------------------------------------


def small_state(step: int):
  return {"step": jnp.asarray(step, jnp.int32), "w": jnp.arange(12.0).reshape(3, 4) * step}


def save_steps(directory, steps, **kwargs):
  checkpointer = ckpt_lib.Checkpointer(str(directory), every_steps=1, **kwargs)
  for step in steps:
    checkpointer.save(step, small_state(step), {"plateau": {"drops": step}})
  checkpointer.close()


def truncate_array_data(step_dir):
  """Every array data file cut in half, as an interrupted copy of the directory leaves them."""
  files = [os.path.join(d, f) for d, _, names in os.walk(os.path.join(step_dir, "state"))
           for f in names if os.path.basename(d) == "d"]
  assert files
  for path in files:
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)


def delete_array_index(step_dir):
  os.remove(os.path.join(step_dir, "state", "manifest.ocdbt"))


def garble(*parts):
  def damage(step_dir):
    with open(os.path.join(step_dir, *parts), "w") as f:
      f.write('{"not json')
  damage.__name__ = "garble_" + parts[0]
  return damage


@pytest.mark.parametrize("damage", [
    truncate_array_data, delete_array_index, garble("meta", "metadata"),
    garble("metrics", "metrics"), garble("_CHECKPOINT_METADATA")], ids=lambda f: f.__name__)
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog, damage):
  save_steps(tmp_path, [1, 2])
  damage(str(tmp_path / "2"))
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path), every_steps=1)
  with caplog.at_level(logging.WARNING, "alexnet_jax.checkpoint"):
    restored = checkpointer.restore(jax.eval_shape(lambda: small_state(0)))
  assert restored.step == 1 and restored.meta["plateau"] == {"drops": 1}
  np.testing.assert_array_equal(restored.state["w"], small_state(1)["w"])
  warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
  assert str(tmp_path / "2") in warning and str(tmp_path / "1") in warning
  for noise in ("bound method", "tensorstore_spec", "Traceback"):  # one readable line
    assert noise not in warning
  # The damaged one is moved aside (kept for inspection), so step 2 can be saved again.
  assert checkpointer.all_steps() == [1]
  assert os.listdir(tmp_path / ckpt_lib.DAMAGED_DIR)[0].startswith("2-")
  assert checkpointer.save(2, small_state(2), {"plateau": {}})
  checkpointer.close()


def test_all_checkpoints_damaged_is_an_error_not_a_fresh_start(tmp_path):
  save_steps(tmp_path, [1, 2])
  delete_array_index(str(tmp_path / "1"))
  delete_array_index(str(tmp_path / "2"))
  with pytest.raises(ckpt_lib.CheckpointError, match="no checkpoint .* can be restored"):
    ckpt_lib.Checkpointer(str(tmp_path)).restore(jax.eval_shape(lambda: small_state(0)))


def test_train_over_only_damaged_checkpoints_stops_with_one_line(tmp_path, capsys):
  save_steps(tmp_path / "run" / "checkpoints", [1])
  delete_array_index(str(tmp_path / "run" / "checkpoints" / "1"))
  code = cli.main(["train", "--config", "configs/test.py", "--workdir", str(tmp_path / "run")])
  err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
  assert code == 1 and len(err) == 1 and "no checkpoint in" in err[0] and "can be restored" in err[0]


def test_a_checkpoint_left_half_written_is_never_loaded(tmp_path):
  save_steps(tmp_path, [1, 2])
  # What a process killed mid-save leaves: the step written under Orbax's temporary name.
  shutil.copytree(tmp_path / "2", tmp_path / "3.orbax-checkpoint-tmp")
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path), every_steps=1)
  assert checkpointer.latest_step() == 2
  assert checkpointer.restore(jax.eval_shape(lambda: small_state(0))).step == 2
  # The resumed run saves step 3 again; the leftover is gone by then.
  assert checkpointer.save(3, small_state(3), {})
  checkpointer.close()
  assert sorted(os.listdir(tmp_path)) == ["1", "2", "3"]
  restored = ckpt_lib.Checkpointer(str(tmp_path)).restore(jax.eval_shape(lambda: small_state(0)))
  np.testing.assert_array_equal(restored.state["w"], small_state(3)["w"])


def test_a_second_ctrl_c_inside_the_start_of_a_save_leaves_no_half_written_step(tmp_path,
                                                                                 monkeypatch):
  """The run stops at once with its checkpoints as they were: Orbax had created the step's
  temporary directory when the interrupt landed."""
  save_steps(tmp_path, [1, 2])
  before = sorted(os.listdir(tmp_path))
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path), every_steps=1)

  def interrupted_save(step, **kwargs):
    os.makedirs(tmp_path / f"{step}.orbax-checkpoint-tmp")
    (tmp_path / f"{step}.orbax-checkpoint-tmp" / "_CHECKPOINT_METADATA").write_text("{}")
    raise KeyboardInterrupt

  monkeypatch.setattr(checkpointer.manager, "save", interrupted_save)
  with pytest.raises(KeyboardInterrupt):
    checkpointer.save(3, small_state(3), {})
  checkpointer.close()
  assert sorted(os.listdir(tmp_path)) == before


# --- what is kept, when saves happen ----------------------------------------------------------


def test_keeps_the_last_k_and_the_best_by_validation_top1(tmp_path):
  errors = {2: 0.5, 4: 0.3, 6: 0.4}  # evaluated steps; the others are plain saves
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path), every_steps=1, keep=2)
  for step in range(1, 8):
    metrics = {"top1_err": errors[step], "top5_err": 0.1} if step in errors else None
    checkpointer.save(step, small_state(step), {}, metrics=metrics)
  checkpointer.close()
  reopened = ckpt_lib.Checkpointer(str(tmp_path), read_only=True)
  assert reopened.all_steps() == [4, 6, 7]
  assert reopened.best_step() == 4

  without_best = ckpt_lib.Checkpointer(str(tmp_path / "b"), every_steps=1, keep=2, keep_best=False)
  for step in range(1, 8):
    without_best.save(step, small_state(step), {}, metrics={"top1_err": 0.1 * step})
  without_best.close()
  assert without_best.all_steps() == [6, 7]


def test_saves_every_n_steps_and_every_n_minutes(tmp_path):
  now = [0.0]
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path), every_steps=5, every_minutes=2,
                                       clock=lambda: now[0])
  assert [s for s in range(1, 12) if checkpointer.due(s)] == [5, 10]
  now[0] = 119.0
  assert not checkpointer.due(3)
  now[0] = 120.0
  assert checkpointer.due(3)
  checkpointer.save(3, small_state(3), {})
  assert not checkpointer.due(4)  # the clock restarts at each save
  now[0] = 240.0
  assert checkpointer.due(4)
  checkpointer.close()
  by_time_only = ckpt_lib.Checkpointer(str(tmp_path / "t"), every_steps=0, every_minutes=1,
                                       clock=lambda: now[0])
  assert not by_time_only.due(1000)


def test_stop_signals_finish_the_step_and_a_second_ctrl_c_interrupts():
  before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
  signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
  stop = ckpt_lib.StopSignals()
  stop.install()
  try:
    assert not stop.requested(sync_point=True)
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop.requested(sync_point=False) and stop.name == "SIGTERM"
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
  finally:
    stop.uninstall()
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
  assert signal.getsignal(signal.SIGTERM) == before[signal.SIGTERM]
  # A SIGINT ignored on purpose (nohup, a background job) stays ignored.
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  stop.install()
  assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
  stop.uninstall()
  signal.signal(signal.SIGINT, before[signal.SIGINT])


def test_meta_records_the_input_position_and_rng(caplog):
  meta = ckpt_lib.make_meta(step=50, seed=3, steps_per_epoch=44, plateau={"drops": 0},
                            class_names=("a", "b"))
  assert meta["input"] == {"step": 50, "epoch": 1, "batch_in_epoch": 6, "steps_per_epoch": 44}
  assert meta["rng"]["seed"] == 3 and "step" in meta["rng"]["dropout_key"]
  assert json.loads(json.dumps(meta)) == meta
  with caplog.at_level(logging.WARNING, "alexnet_jax.checkpoint"):
    ckpt_lib.check_meta(meta, step=50, seed=3, steps_per_epoch=22)
  assert "44 steps per epoch, now 22" in caplog.text


# --- NaN -----------------------------------------------------------------------------------------


def test_a_nan_loss_stops_the_run_with_its_step_and_keeps_the_last_good_checkpoint(tmp_path):
  """A run resumed from a state whose parameters are 1e10 times too large (the reference run's
  step 20, scaled) gets a NaN loss at its first step. Every step is due for a checkpoint and no
  step before the 24th is logged, so only the check before each save stands between the NaN
  state and a checkpoint of it."""
  reference = runs.reference_run()
  work = str(tmp_path / "run")
  os.makedirs(os.path.join(work, "checkpoints"))
  shutil.copy(os.path.join(reference, "config.json"), work)
  cfg = test_config.get_config()
  abstract = target(state_shapes(cfg), "data", 1)
  good = ckpt_lib.Checkpointer(os.path.join(reference, "checkpoints"), read_only=True).restore(
      abstract, 20)
  blown_up = good.state.replace(params=jax.tree.map(lambda p: p * 1e10, good.state.params))
  checkpointer = ckpt_lib.Checkpointer(os.path.join(work, "checkpoints"))
  checkpointer.save(20, blown_up, good.meta)
  checkpointer.close()

  process = runs.start(work, str(tmp_path / "log"), "--config.checkpoint_every_steps=1",
                       "--config.log_every_steps=4")
  process.wait(timeout=300)
  log = open(tmp_path / "log").read()
  assert process.returncode == 1, log[-3000:]
  [message] = [line for line in log.splitlines() if line.startswith("error:")]
  assert "the training loss became NaN or Inf at step 21;" in message
  assert "last good checkpoint (step 20) is kept" in message
  assert "Traceback" not in log
  assert runs.finished_steps(work) == [20]
  kept = ckpt_lib.Checkpointer(os.path.join(work, "checkpoints"), read_only=True).restore(abstract)
  assert kept.step == 20
  for leaf in jax.tree.leaves((kept.state.params, kept.state.opt_state)):
    assert np.all(np.isfinite(np.asarray(leaf, np.float64)))
