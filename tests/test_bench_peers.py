"""The benchmarks' helpers: the PyTorch peer's layout, the comparison's settings, the pipeline
benchmark on a few images (figures are printed by the scripts, not asserted here)."""

import os
import sys

import jax
import pytest

from alexnet_jax import program
from alexnet_jax.configlib import base_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import compare_torch  # noqa: E402
from runs import FAST_COMPILE_FLAGS  # noqa: E402  (tests/runs.py)
import input_pipeline  # noqa: E402


def test_torch_peer_has_torchvisions_layout_and_our_owt_shapes():
  import torch
  import torch_alexnet

  model = torch_alexnet.alexnet()
  shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
  assert list(shapes) == [f"{part}.{i}.{kind}" for part, indices in
                          (("features", (0, 3, 6, 8, 10)), ("classifier", (1, 4, 6)))
                          for i in indices for kind in ("weight", "bias")]
  assert sum(v.numel() for v in model.parameters()) == 61_100_840
  cfg = base_config()
  cfg.model.name, cfg.model.num_classes = "owt", 1000
  ours = jax.eval_shape(program.model_fns(cfg).init, jax.random.key(0))[0]
  names = ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]
  keys = [k for k in shapes if k.endswith("weight")]
  for name, key in zip(names, keys):
    kernel = ours[name]["kernel"].shape
    if len(kernel) == 4:  # HWIO here, OIHW there
      assert shapes[key] == (kernel[3], kernel[2], kernel[0], kernel[1]), name
    else:  # (in, out) here, (out, in) there
      assert shapes[key] == kernel[::-1], name

  narrow = torch_alexnet.alexnet(10, width=0.125).state_dict()
  assert narrow["features.0.weight"].shape == (8, 3, 11, 11)  # round(64 / 8), as ours
  assert narrow["classifier.1.weight"].shape == (512, 32 * 36)

  bench = torch_alexnet.TorchBench(2, torch_alexnet.Variant(channels_last=True),
                                   image_size=64, num_classes=10)
  before = model.state_dict()["features.0.weight"].clone()
  times = bench.run(1)
  assert len(times) == 1 and times[0] > 0
  assert not torch.equal(bench.model.state_dict()["features.0.weight"], before)  # it trained


def test_comparison_settings_parse():
  label, overrides, env = compare_torch.parse_variant(
      "no flags:--config.model.pool_impl=reduce_window ALEXNET_JAX_XLA_DEFAULTS=0")
  assert label == "no flags"
  assert overrides == ["model.pool_impl=reduce_window"]
  assert env == {"ALEXNET_JAX_XLA_DEFAULTS": "0"}
  with pytest.raises(SystemExit, match="neither"):
    compare_torch.parse_variant("bad:oops")


def test_comparison_builds_the_configs_network_on_both_sides_and_survives_a_failed_peer(tmp_path):
  import json
  import subprocess

  out = tmp_path / "compare.json"
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, "benchmarks", "compare_torch.py"), "--config",
       "configs/owt.py", "--batch", "4", "--rounds", "1", "--steps", "1",
       "--torch", "eager_cl,eager@PYTHONHOME=/nonexistent", "--json", str(out),
       "--override", "model.width=0.125", "--override", "data.crop_size=67",
       "--override", "model.num_classes=10"],
      cwd=tmp_path, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=FAST_COMPILE_FLAGS))
  assert result.returncode == 0, result.stderr[-3000:]
  figures = json.loads(out.read_text())
  # A peer whose interpreter cannot start is left out; the others are still compared.
  assert figures["left_out"] == ["torch eager, PYTHONHOME=/nonexistent"]
  ours, torch_row = figures["rows"]
  assert ours["label"] == "ours (alexnet_jax)" and torch_row["label"] == "torch eager channels_last"
  assert torch_row["ready"]["model"] == "torch.nn copy of torchvision's AlexNet, width 0.125"
  assert torch_row["ready"]["settings"] == {}  # cuDNN and TF32 settings exist on GPUs only
  assert torch_row["images_per_s"] > 0 and torch_row["ours_over_it"] > 0
  with pytest.raises(SystemExit, match="the PyTorch peer is torchvision's layout"):
    compare_torch.network(compare_torch.argparse.Namespace(config="configs/paper.py",
                                                           override=[]))


def test_pipeline_benchmark_measures_original_and_prepared_images(tmp_path, monkeypatch):
  from alexnet_jax import prepare

  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  unique = str(tmp_path / "unique")
  input_pipeline.make_originals(unique, 3, 80, 60, 90)
  prepare.prepare_folder(unique, unique + "_small", size=36, workers=1)
  for name, source in (("original", unique), ("prepared", unique + "_small")):
    root = str(tmp_path / name)
    input_pipeline.link_folder(root, source, 3, 16)
    assert len(os.listdir(os.path.join(root, "train"))) == input_pipeline.CLASSES
    cfg = input_pipeline.pipeline_config(root, batch=4, resize=36, crop=32)
    figures = input_pipeline.measure(cfg, batches=2, warmup=1)
    assert figures["images"] == 8
    assert figures["images_per_s"] == pytest.approx(8 / figures["wall_s"])
    assert figures["images_per_cpu_s"] == pytest.approx(8 / figures["cpu_s"])
    assert input_pipeline.decoder_alone(root, batch=4, batches=2, resize=36, crop=32) > 0


def test_conv_layer_benchmark_times_owts_five_convolutions(tmp_path):
  import subprocess

  import conv_layers

  cfg = base_config()
  cfg.model.name, cfg.model.num_classes = "owt", 1000
  params = jax.eval_shape(program.model_fns(cfg).init, jax.random.key(0))[0]
  side = 224
  for name, in_side, cin, cout, k, stride, pad in conv_layers.OWT_CONVS:
    assert params[name]["kernel"].shape == (k, k, cin, cout), name
    assert in_side == side, name
    side = (side + 2 * pad - k) // stride + 1
    if name in ("conv1", "conv2"):  # each followed by a 3x3/2 max pool
      side = (side - 3) // 2 + 1
  result = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "conv_layers.py"),
                           "--batch", "2", "--repeats", "1", "--threads", "1"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
  assert result.returncode == 0, result.stderr[-2000:]
  lines = result.stdout.splitlines()
  assert [l.split(":")[0] for l in lines[1:6]] == ["conv1", "conv2", "conv3", "conv4", "conv5"]
  # Both of ours (XLA's convolutions and oneDNN's), then PyTorch's, on every line.
  assert "XLA forward" in lines[1] and "oneDNN forward" in lines[1]
  assert "input grad 0," in lines[1] and "PyTorch channels_last" in lines[1]
  assert lines[-1].startswith("all five: XLA") and "oneDNN" in lines[-1] and "PyTorch" in lines[-1]
