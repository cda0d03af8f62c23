"""`launch.py bench`: the real train step on synthetic data, its figures, and no TensorFlow."""

import json
import os
import subprocess
import sys
import types

import pytest

from alexnet_jax import bench, cli, configlib, flops
from alexnet_jax.data import synthetic
from alexnet_jax.configlib import base_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Any attempt to import TensorFlow fails, as on a machine that has none.
BLOCK_TENSORFLOW = """
import importlib.abc, sys
class NoTensorFlow(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name == "tensorflow" or name.startswith("tensorflow."):
      raise ImportError("TensorFlow is not installed here (blocked by the test)")
    return None
sys.meta_path.insert(0, NoTensorFlow())
"""


def test_bench_runs_the_train_step_without_tensorflow(tmp_path):
  out = tmp_path / "bench.json"
  code = BLOCK_TENSORFLOW + (
      "import runpy, sys\n"
      f"sys.argv = ['launch.py', 'bench', '--config', 'configs/test.py', '--batch', '16', "
      f"'--steps', '20', '--dtype', 'bfloat16', '--json', {str(out)!r}]\n"
      "try:\n"
      "  runpy.run_path('launch.py', run_name='__main__')\n"
      "except SystemExit as e:\n"
      "  assert not e.code, e.code\n"
      "print('tensorflow loaded:', any(m.startswith('tensorflow') for m in sys.modules))\n")
  env = {**os.environ, "PYTHONPATH": ROOT}
  env.pop("ALEXNET_JAX_XLA_DEFAULTS", None)
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  text = result.stdout
  for needle in ("compile:", "step: median", "20 steps after warm-up", "images/s", "bfloat16",
                 "GFLOP per training image", "MFU", "tensorflow loaded: False"):
    assert needle in text, (needle, text)

  figures = json.loads(out.read_text())
  times = figures["step_times"]
  assert len(times) == 20 and all(t > 0 for t in times)
  assert figures["batch"] == 16 and figures["model"] == "small" and figures["dtype"] == "bfloat16"
  assert figures["images_per_second"] == pytest.approx(16 / figures["median_step_seconds"])
  cfg = configlib.load("configs/test.py")
  assert figures["flops_per_image"] == flops.train_flops_per_image(cfg.model, cfg.data.crop_size)
  assert figures["devices"] == 8 and figures["mesh"] == {"data": 8, "model": 1}  # conftest's CPU devices
  assert figures["mfu"] == pytest.approx(
      figures["achieved_tflops"] / (figures["peak_tflops"] * 8))
  # The command line put its XLA flags in place before JAX started.
  assert "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution" in figures["xla_flags"]


def test_bad_arguments_stop_before_compiling(capsys):
  assert cli.main(["bench", "--config", "configs/test.py", "--batch", "12"]) == 2
  err = capsys.readouterr().err
  assert "batch_size=12" in err and "8 devices" in err and len(err.strip().splitlines()) == 1
  assert cli.main(["bench", "--config", "configs/test.py", "--steps", "1"]) == 2
  assert "--steps 1" in capsys.readouterr().err


def fake_device(platform, kind):
  return types.SimpleNamespace(platform=platform, device_kind=kind)


def test_peak_table_for_gpus_and_an_assumed_peak_for_cpus():
  h100 = fake_device("gpu", "NVIDIA H100 80GB HBM3")
  assert bench.device_peak(h100, "bfloat16").tflops == 989.4
  assert bench.device_peak(h100, "float32").tflops == 494.7
  assert bench.device_peak(fake_device("gpu", "NVIDIA H100 PCIe"), "bfloat16").tflops == 756.0
  assert bench.device_peak(fake_device("gpu", "NVIDIA A100-SXM4-40GB"), "bfloat16").tflops == 312.0
  unknown = bench.device_peak(fake_device("gpu", "Mystery GPU"), "bfloat16")
  assert unknown.tflops is None and "--peak-tflops" in unknown.source
  cpu = bench.device_peak(fake_device("cpu", "cpu"), "float32")
  assert cpu.tflops is None or (cpu.tflops > 0 and cpu.source.startswith("assumed"))


def test_result_figures():
  result = bench.Result(
      config="owt", model="owt", batch=256, dtype="bfloat16", platform="gpu",
      device_kind="NVIDIA H100", devices=2, mesh={"data": 2}, compile_seconds=3.0,
      step_times=[0.02, 0.01, 0.03, 0.01, 0.02], flops_per_image=4_285_130_880,
      peak_tflops=989.4, peak_source="table")
  assert result.median == 0.02
  assert result.images_per_second == pytest.approx(12_800)
  assert result.achieved_tflops == pytest.approx(4.28513088 * 12_800 / 1e3)
  assert result.mfu == pytest.approx(result.achieved_tflops / (2 * 989.4))
  report = result.report()
  assert "12,800.0 images/s" in report and "MFU 2.8%" in report and "128 per device" in report
  no_peak = bench.Result(**{**result.__dict__, "peak_tflops": None, "peak_source": "unknown"})
  assert no_peak.mfu is None and "MFU not given" in no_peak.report()


def test_synthetic_batch_has_the_pipelines_shapes():
  cfg = base_config()
  batch = synthetic.synthetic_batch(cfg, 4)
  assert batch["image"].shape == (4, 224, 224, 3) and batch["image"].dtype == "uint8"
  assert batch["label"].dtype == "int32" and batch["label"].max() < cfg.model.num_classes
  assert batch["mask"].all() and batch["rgb_shift"].shape == (4, 3)
