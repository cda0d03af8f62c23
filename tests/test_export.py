"""Export to safetensors and import back: identical arrays, self-describing metadata, clear
errors for files of another model, damaged files and existing outputs."""

import json
import os

import jax
import numpy as np
import pytest
import safetensors.numpy

from alexnet_jax import checkpoint as ckpt_lib
from alexnet_jax import cli, configlib, export, optim, program, safetensors_io
from configs import test as test_config


def make_workdir(path, cfg, step=30, class_names=None, seed=0):
  """A work directory as train leaves it (config.json, a checkpoint), with random values."""
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "config.json"), "w") as f:
    f.write(configlib.to_json(cfg))
  fns = program.model_fns(cfg)
  shapes = jax.eval_shape(program.init_state_fn(fns, optim.make_optimizer(cfg.optim), cfg.seed))
  rng = np.random.default_rng(seed)
  state = jax.tree.map(lambda s: np.asarray(rng.normal(size=s.shape), s.dtype), shapes)
  state = state.replace(step=np.asarray(step, np.int32))
  names = class_names or [f"class {i}" for i in range(cfg.model.num_classes)]
  checkpointer = ckpt_lib.Checkpointer(os.path.join(path, "checkpoints"), every_steps=1)
  meta = ckpt_lib.make_meta(step=step, seed=cfg.seed, steps_per_epoch=10, plateau={},
                            class_names=tuple(names))
  checkpointer.save(step, state, meta)
  checkpointer.close()
  return state


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("small_run"))
  return path, make_workdir(path, test_config.get_config())


def bn_config():
  cfg = test_config.get_config()
  cfg.model.name, cfg.model.width, cfg.model.num_classes = "bn", 0.125, 7
  cfg.data.resize_size = cfg.data.crop_size = 67
  return cfg


def assert_trees_identical(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert np.asarray(x).dtype == np.asarray(y).dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_export_then_import_gives_identical_arrays_and_full_metadata(small_run, tmp_path, capsys):
  workdir, state = small_run
  out = str(tmp_path / "model.safetensors")
  assert cli.main(["export", "--workdir", workdir, "--out", out]) == 0
  assert "wrote " + out in capsys.readouterr().out
  model = export.load(out)
  assert_trees_identical(model.params, jax.device_get(state.params))
  assert model.step == 30 and model.class_names == tuple(f"class {i}" for i in range(10))

  _, meta = safetensors_io.load(out)
  cfg = test_config.get_config()
  assert meta["format"] == "alexnet_jax" and meta["layout"] == "alexnet_jax"
  assert meta["variant"] == "small" and meta["num_classes"] == "10"
  assert json.loads(meta["class_names"])[3] == "class 3"
  assert (meta["input_size"], meta["resize_size"]) == ("32", "36")
  assert json.loads(meta["mean"]) == list(cfg.data.mean) and json.loads(meta["std"]) == list(cfg.data.std)
  assert meta["step"] == "30" and meta["dtype"] == "float32"
  assert json.loads(meta["model_config"]) == cfg.model.to_dict()
  # Any safetensors reader sees the same tensors under the documented names.
  other = safetensors.numpy.load_file(out)
  np.testing.assert_array_equal(other["params/fc6/kernel"], state.params["fc6"]["kernel"])


def test_batchnorm_statistics_travel_with_the_parameters(tmp_path):
  workdir = str(tmp_path / "bn")
  state = make_workdir(workdir, bn_config(), step=3)
  assert state.model_state["conv1_bn"]["mean"].shape == (12,)  # there are statistics to export
  out = str(tmp_path / "bn.safetensors")
  export.export(workdir=workdir, out=out)
  model = export.load(out)
  assert_trees_identical(model.model_state, state.model_state)
  assert_trees_identical(model.params, state.params)


def test_bfloat16_export(small_run, tmp_path):
  workdir, state = small_run
  out = str(tmp_path / "bf16.safetensors")
  assert cli.main(["export", "--workdir", workdir, "--out", out, "--dtype", "bfloat16"]) == 0
  model = export.load(out)
  expected = jax.tree.map(lambda a: np.asarray(a).astype(jax.numpy.bfloat16), state.params)
  assert_trees_identical(model.params, expected)
  values = sum(np.asarray(a).size for a in jax.tree.leaves(state.params))
  assert os.path.getsize(out) < 2 * values + 20_000  # 2 bytes per value (plus the header), not 4


def test_best_and_numbered_checkpoints(tmp_path):
  cfg = test_config.get_config()
  workdir = str(tmp_path / "run")
  make_workdir(workdir, cfg, step=5)
  checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), every_steps=1)
  restored = checkpointer.restore(jax.eval_shape(
      program.init_state_fn(program.model_fns(cfg), optim.make_optimizer(cfg.optim), 0)))
  for step, err in ((8, 0.2), (9, 0.4)):
    checkpointer.save(step, restored.state.replace(step=np.asarray(step, np.int32)),
                      restored.meta, metrics={"top1_err": err})
  checkpointer.close()
  assert export.from_workdir(workdir, "best").step == 8
  assert export.from_workdir(workdir, "latest").step == 9
  assert export.from_workdir(workdir, "5").step == 5
  with pytest.raises(export.ExportError, match=r"no checkpoint at step 6; it has steps \[5, 8, 9\]"):
    export.from_workdir(workdir, "6")


def test_an_existing_output_is_not_overwritten_without_overwrite(small_run, tmp_path, capsys):
  workdir, _ = small_run
  out = tmp_path / "model.safetensors"
  out.write_bytes(b"keep me")
  assert cli.main(["export", "--workdir", workdir, "--out", str(out)]) == 2
  assert "exists; pass --overwrite" in capsys.readouterr().err
  assert out.read_bytes() == b"keep me"
  assert cli.main(["export", "--workdir", workdir, "--out", str(out), "--overwrite"]) == 0
  assert export.load(str(out)).step == 30


def test_a_file_of_another_class_count_or_variant_names_the_first_mismatched_tensor(small_run,
                                                                                     tmp_path):
  workdir, _ = small_run
  out = str(tmp_path / "model.safetensors")
  export.export(workdir=workdir, out=out)
  hundred = test_config.get_config()
  hundred.model.num_classes = 100
  with pytest.raises(export.ExportError) as e:
    export.load(out, expect=hundred)
  assert "tensor params/fc8/bias has shape (10,) in the file but (100,) is expected" in str(e.value)

  owt = test_config.get_config()
  owt.model.name, owt.model.width = "owt", 0.25
  owt.data.crop_size = owt.data.resize_size = 64
  want = export.expected_tensors(owt)
  first = next(iter(want))  # params/conv1/bias: 16 channels here, 4 per tower x 2 in the file
  with pytest.raises(export.ExportError) as e:
    export.load(out, expect=owt)
  assert f"tensor {first} has shape (2, 4) in the file but {tuple(want[first].shape)}" in str(e.value)
  assert "variant 'owt'" in str(e.value)


def test_truncated_and_foreign_files_give_one_clear_error(small_run, tmp_path, capsys):
  workdir, _ = small_run
  good = str(tmp_path / "model.safetensors")
  export.export(workdir=workdir, out=good)
  data = open(good, "rb").read()
  cases = {
      "cut.safetensors": (data[: len(data) - 100], "truncated"),
      "header_cut.safetensors": (data[:40], "truncated"),
      "text.safetensors": (b"this is not a model at all, just text\n" * 10, "not a safetensors file"),
      "zip.safetensors": (b"PK\x03\x04" + bytes(200), "a PyTorch .pth?"),
      "empty.safetensors": (b"", "not a safetensors file"),
  }
  for name, (content, expected) in cases.items():
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(export.ExportError, match=None) as e:
      export.load(str(path))
    assert expected in str(e.value) and str(path) in str(e.value), (name, str(e.value))
    assert "\n" not in str(e.value)
  # Through the command line: one line on stderr, exit status 2.
  assert cli.main(["export", "--params", str(tmp_path / "cut.safetensors"),
                   "--out", str(tmp_path / "x.safetensors")]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: ") and "truncated" in err[0]


def test_our_safetensors_writer_agrees_with_the_reference_library(tmp_path):
  tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1, -2], np.int64),
             "c": np.zeros((0, 4), np.float32), "d": np.array(True)}
  ours = str(tmp_path / "ours.safetensors")
  safetensors_io.save(ours, tensors, {"k": "v"})
  theirs_read = safetensors.numpy.load_file(ours)
  for k, v in tensors.items():
    np.testing.assert_array_equal(theirs_read[k], v)
  theirs = str(tmp_path / "theirs.safetensors")
  safetensors.numpy.save_file(tensors, theirs, metadata={"k": "v"})
  read, meta = safetensors_io.load(theirs)
  assert meta == {"k": "v"}
  for k, v in tensors.items():
    assert read[k].dtype == v.dtype
    np.testing.assert_array_equal(read[k], v)
