"""The train step, the eval loop, the training loop and the command line."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from alexnet_jax import (cli, configlib, data, distributed, metrics, optim, program, sharding,
                         train)
from alexnet_jax.data import arrays, synthetic
from alexnet_jax.metric_writer import read_metrics
from runs import config_with

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def one_step_setup(cfg):
  fns = program.model_fns(cfg)
  tx = optim.make_optimizer(cfg.optim)
  schedule = optim.make_schedule(cfg.optim, 10, 100)
  init = program.init_state_fn(fns, tx, cfg.seed)
  return fns, tx, schedule, init


# XLA's backend optimisation off: the same program, compiled several times faster. For the
# tests below that compare numbers, both sides are compiled so.
FAST = {"xla_backend_optimization_level": 0}


def create_state(init):
  return jax.jit(init, compiler_options=FAST)()


random_batch = synthetic.synthetic_batch


# --- the step -------------------------------------------------------------------------------


def full_size(name, size):
  return config_with(**{"model.name": name, "model.width": 1.0, "model.num_classes": 1000,
                        "data.crop_size": size, "data.resize_size": 256})


def test_the_papers_full_size_network_starts_as_the_paper_says_and_trains_a_step():
  cfg = full_size("paper", 227)
  fns, tx, schedule, init = one_step_setup(cfg)
  state = create_state(init)
  # The paper's initialisation (section 5): every weight from N(0, 0.01^2); biases 1 in conv2,
  # conv4, conv5 and the fully connected layers, 0 elsewhere.
  for name, layer in state.params.items():
    kernel = np.asarray(layer["kernel"])
    assert abs(kernel.mean()) < 1e-3, name
    assert kernel.std() == pytest.approx(0.01, rel=0.05 if kernel.size > 30_000 else 0.2), name
    ones = name in ("conv2", "conv4", "conv5", "fc6", "fc7", "fc8")
    np.testing.assert_array_equal(layer["bias"], 1.0 if ones else 0.0, err_msg=name)
  assert sorted(state.params) == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7",
                                  "fc8"]
  before = np.asarray(state.params["fc6"]["kernel"][..., :4])
  step = jax.jit(program.make_train_step(cfg, fns, tx, schedule), donate_argnums=0,
                 compiler_options=FAST)
  state, metrics = step(state, random_batch(cfg, 2))
  assert int(state.step) == 1
  assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
  assert not np.array_equal(np.asarray(state.params["fc6"]["kernel"][..., :4]), before)


@pytest.mark.parametrize("name,size", [("paper6", 227), ("owt", 224), ("bn", 227)])
def test_the_other_full_size_variants_trace_a_train_step(name, size):
  """Traced, not run (the paper's network runs one above): every shape at full size, the state
  coming out as it went in, scalar metrics."""
  cfg = full_size(name, size)
  fns, tx, schedule, init = one_step_setup(cfg)
  state = jax.eval_shape(init)
  step = program.make_train_step(cfg, fns, tx, schedule)
  new_state, metrics = jax.eval_shape(step, state, random_batch(cfg, 2))
  assert jax.tree.structure(new_state) == jax.tree.structure(state)
  for a, b in zip(jax.tree.leaves(new_state), jax.tree.leaves(state)):
    assert (a.shape, a.dtype) == (b.shape, b.dtype)
  assert metrics["loss"].shape == () and metrics["grad_norm"].shape == ()
  assert state.params["fc8"]["kernel"].shape[-1] == 1000


def test_the_train_step_mirrors_the_images_whose_flip_is_set():
  """Crops leave the host unmirrored: a step on (crops, flip) equals one on the crops mirrored by
  hand with no flip set, and differs from one with the flags cleared."""
  cfg = config_with()
  fns, tx, schedule, init = one_step_setup(cfg)
  step = jax.jit(program.make_train_step(cfg, fns, tx, schedule), compiler_options=FAST)
  state = create_state(init)
  batch = dict(random_batch(cfg, 8), flip=np.arange(8) % 2 == 0)
  none = np.zeros(8, bool)
  by_hand = dict(batch, image=arrays.mirrored(batch["image"], batch["flip"]), flip=none)
  loss = lambda b: float(step(state, b)[1]["loss"])
  assert loss(batch) == loss(by_hand)
  assert loss(batch) != loss(dict(batch, flip=none))


def test_top_k_errors_count_the_rank_of_the_true_label():
  logits = jnp.asarray([[0.0, 5.0, 1.0, 2.0, 3.0, 4.0, -1.0],    # label 1: top-1
                        [6.0, 5.0, 1.0, 2.0, 3.0, 4.0, -1.0],    # label 1: rank 1 (top-5)
                        [6.0, 5.0, 1.0, 2.0, 3.0, 4.0, -1.0]])   # label 6: rank 6
  m = metrics.train_metrics(logits, jnp.asarray([1, 1, 6]), jnp.asarray([True, True, True]))
  assert float(m["top1_err"]) == pytest.approx(2 / 3)
  assert float(m["top5_err"]) == pytest.approx(1 / 3)
  masked = metrics.train_metrics(logits, jnp.asarray([1, 1, 6]), jnp.asarray([True, True, False]))
  assert float(masked["top5_err"]) == 0.0 and float(masked["top1_err"]) == pytest.approx(0.5)


def test_data_parallel_step_on_8_devices_equals_one_device():
  cfg = config_with()
  fns, tx, schedule, init = one_step_setup(cfg)
  batch = random_batch(cfg, 32)
  step_fn = program.make_train_step(cfg, fns, tx, schedule)

  single, m1 = jax.jit(step_fn, compiler_options=FAST)(create_state(init), batch)

  strategy = sharding.get_strategy("data")
  mesh = sharding.make_mesh(strategy, (8, 1))
  shapes = jax.eval_shape(init)
  shardings = sharding.tree_shardings(shapes, mesh, strategy)
  state = jax.device_put(create_state(init), shardings)
  global_batch = sharding.batch_feed(mesh, strategy, 32).put(batch)
  assert len(global_batch["image"].sharding.device_set) == 8
  multi, m8 = jax.jit(step_fn, out_shardings=(shardings, NamedSharding(mesh, P())),
                      compiler_options=FAST)(state, global_batch)
  assert float(m8["loss"]) == pytest.approx(float(m1["loss"]), rel=1e-5)
  for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(multi.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-6)


def test_eval_counts_every_example_exactly_once():
  # 360 held-out digits in batches of 64 (8 devices): 6 batches, the last padded and masked.
  cfg = config_with(eval_batch_size=64, **{"sharding.mesh": "8x1"})
  built = program.build(cfg, compiler_options=FAST)
  state = built.create_state()
  got = train.run_eval(built, state.params, state.model_state)
  assert got["count"] == 360
  eval_step = built.eval_step

  # The same figures computed directly over all real examples at once.
  batches = list(data.eval_iterator(cfg))
  images = np.concatenate([b["image"][b["mask"]] for b in batches])
  labels = np.concatenate([b["label"][b["mask"]] for b in batches])
  assert len(images) == 360
  one = eval_step(state.params, state.model_state,
                  {"image": images, "label": labels, "mask": np.ones(360, bool)})
  for k in ("top1_err", "top5_err", "loss"):
    assert got[k] == pytest.approx(float(one[k]) / 360, rel=1e-5, abs=1e-7)


# --- the loop and the command line ----------------------------------------------------------


def run_launch(*args, env_extra=None, timeout=600):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device, as a user has
  env["PYTHONPATH"] = REPO
  env.update(env_extra or {})
  return subprocess.run([sys.executable, os.path.join(REPO, "launch.py"), *args], env=env,
                        capture_output=True, text=True, timeout=timeout, cwd=REPO)


@pytest.mark.long(seconds=55)
def test_default_config_reaches_its_stated_accuracy(tmp_path):
  """`python launch.py train` (configs/default.py, offline digits) reaches >= 98% held out."""
  workdir = tmp_path / "default"
  proc = run_launch("train", "--workdir", str(workdir), "--config.progress=false")
  assert proc.returncode == 0, proc.stderr[-3000:]
  records = read_metrics(str(workdir))
  evals = [r for r in records if r["split"] == "eval"]
  final = evals[-1]
  assert final["count"] == 360
  assert 1 - final["top1_err"] >= 0.98, final
  assert "held-out" in proc.stdout and "accuracy" in proc.stdout
  # The work directory holds the run: resolved config, JSON-lines metrics, TensorBoard, checkpoints.
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["model"]["name"] == "small" and saved["data"]["name"] == "digits"
  train_records = [r for r in records if r["split"] == "train"]
  assert train_records[-1]["step"] == final["step"] == max(r["step"] for r in records)
  assert all(k in train_records[0] for k in ("loss", "top1_err", "top5_err", "lr", "img_per_s"))
  tb_files = [f for f in os.listdir(workdir / "tb") if "tfevents" in f]
  assert tb_files and os.path.getsize(workdir / "tb" / tb_files[0]) > 100
  assert str(final["step"]) in os.listdir(workdir / "checkpoints")


def test_same_workdir_resumes_from_the_latest_checkpoint(tmp_path, monkeypatch):
  workdir = str(tmp_path / "run")
  cfg = config_with(num_epochs=0.25, checkpoint_every_steps=4, log_every_steps=1,
                    eval_every_epochs=10.0)
  # Where several processes wait for each other (a no-op in this one): after the program is
  # built, and after process 0 alone opened the writers, before the first step.
  barriers = []
  monkeypatch.setattr(distributed, "wait_for_peers", barriers.append)
  train.train_and_evaluate(cfg, workdir)  # 11 steps; checkpoints at 4, 8, 11
  assert barriers == ["program built", "training starts"]
  first = [r for r in read_metrics(workdir) if r["split"] == "train"]
  assert [r["step"] for r in first] == list(range(1, 12))
  assert sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints"))
                if d.isdigit()) == [4, 8, 11][-cfg.keep_checkpoints:]

  cfg.num_epochs = 0.5
  train.train_and_evaluate(cfg, workdir)  # resumes at 11, runs to 22
  second = [r for r in read_metrics(workdir) if r["split"] == "train"][len(first):]
  assert [r["step"] for r in second] == list(range(12, 23))


@pytest.mark.parametrize("override,needle", [
    ("model.name=vgg", "config.model.name='vgg'"),
    ("data.name=no_such_dataset_xyz", "no_such_dataset_xyz"),
    ("batch_size=12", "config.batch_size=12 is not divisible by the 8 devices"),
    ("data.crop_size=40", "config.data.crop_size=40 is larger than config.data.resize_size=36"),
    ("optim.learning_rate=-0.1", "config.optim.learning_rate=-0.1"),
    ("model.dropout=1.5", "config.model.dropout=1.5"),
    ("model.num_classes=7", "config.model.num_classes=7 but dataset 'digits' has 10 classes"),
    ("sharding.strategy=magic", "config.sharding.strategy='magic'"),
    ("nonexistent=1", "--config.nonexistent: no such field"),
])
def test_bad_config_stops_with_one_line_naming_the_field(override, needle, tmp_path, capsys,
                                                         monkeypatch):
  compiled = []
  monkeypatch.setattr(program, "make_train_step", lambda *a, **k: compiled.append(1))
  rc = cli.main(["train", "--config", os.path.join(REPO, "configs", "test.py"),
                 "--workdir", str(tmp_path / "w"), f"--config.{override}"])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2
  assert err[-1].startswith("error: ") and needle in err[-1], err
  assert not compiled  # nothing was built, let alone compiled


def test_unknown_config_file_and_workdir_of_another_run(tmp_path, capsys):
  assert cli.main(["train", "--config", "no_such_config"]) == 2
  assert "no such config" in capsys.readouterr().err
  workdir = tmp_path / "w"
  workdir.mkdir()
  other = config_with(**{"model.name": "paper", "model.num_classes": 1000})
  (workdir / "config.json").write_text(configlib.to_json(other))
  assert cli.main(["train", "--config", os.path.join(REPO, "configs", "test.py"),
                   "--workdir", str(workdir)]) == 2
  assert "holds a run with a different config.model" in capsys.readouterr().err


def test_overrides_are_parsed_to_the_fields_type():
  cfg = config_with()
  configlib.apply_overrides(cfg, ["optim.learning_rate=1", "data.flip=true", "model.name=owt",
                                  "optim.decay_exclude=bias,scale", "data.mean=(0.5,0.5,0.5)"])
  assert cfg.optim.learning_rate == 1.0 and isinstance(cfg.optim.learning_rate, float)
  assert cfg.data.flip is True and cfg.model.name == "owt"
  assert cfg.optim.decay_exclude == ("bias", "scale") and cfg.data.mean == (0.5, 0.5, 0.5)
  with pytest.raises(configlib.ConfigError, match="config.batch_size"):
    configlib.apply_overrides(cfg, ["batch_size=many"])
  assert configlib.from_json(configlib.to_json(cfg)).to_dict() == cfg.to_dict()


def test_prefetch_to_device_keeps_order_and_reads_only_size_ahead():
  strategy = sharding.get_strategy("data")
  mesh = sharding.make_mesh(strategy, (8, 1))
  pulled = []

  def source():
    for i in range(5):
      pulled.append(i)
      yield {"x": np.full((8, 2), i, np.float32)}

  stream = sharding.batch_feed(mesh, strategy, 8).prefetch(source(), 2)
  first = next(stream)
  assert float(first["x"][0, 0]) == 0 and len(pulled) == 3  # batch 0 out, 1 and 2 in flight
  assert len(first["x"].sharding.device_set) == 8
  assert [float(b["x"][0, 0]) for b in stream] == [1, 2, 3, 4]
