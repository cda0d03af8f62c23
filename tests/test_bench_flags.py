"""XLA flags set at start-up: merged under the user's own, known to this jaxlib, and effective."""

import os
import subprocess
import sys

from alexnet_jax.backend import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_user_flags_win_and_ours_are_added_once():
  merged = xla_flags.merge_flags("--xla_force_host_platform_device_count=8",
                                 ["--xla_force_host_platform_device_count=2", "--xla_a=1"])
  assert merged == "--xla_force_host_platform_device_count=8 --xla_a=1"
  assert xla_flags.merge_flags(merged, ["--xla_a=2"]) == merged


def test_apply_defaults_on_a_cpu_machine(monkeypatch):
  monkeypatch.setattr(xla_flags, "has_cuda_plugin", lambda: False)
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  added = xla_flags.apply_defaults(env)
  assert added == list(xla_flags.CPU_FLAGS)
  assert env["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=4",
                                      *xla_flags.CPU_FLAGS]
  assert xla_flags.apply_defaults(env) == []  # idempotent
  user = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=individual_convolution"}
  assert xla_flags.apply_defaults(user) == []  # the user's choice of the same flag stands
  assert user["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=individual_convolution"
  off = {xla_flags.OFF_SWITCH: "0"}
  assert xla_flags.apply_defaults(off) == [] and "XLA_FLAGS" not in off


def test_apply_defaults_on_a_gpu_machine_with_a_cache(monkeypatch, tmp_path):
  monkeypatch.setattr(xla_flags, "has_cuda_plugin", lambda: True)
  env = {xla_flags.CACHE_DIR: str(tmp_path)}
  added = xla_flags.apply_defaults(env)
  assert added == [*xla_flags.GPU_FLAGS,
                   f"--xla_gpu_per_fusion_autotune_cache_dir={tmp_path / 'autotune'}"]
  assert not any(f in env["XLA_FLAGS"] for f in xla_flags.CPU_FLAGS)
  assert env["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path / "jax")
  assert env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] == "0"


def run_python(code, **env):
  full_env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu", **env}
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=180)
  assert result.returncode == 0, result.stderr[-2000:]
  return result.stdout


CONVOLUTION_HLO = """
import jax, jax.numpy as jnp
x = jnp.ones((8, 27, 27, 64)); w = jnp.ones((5, 5, 64, 96))
conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME',
                                                 dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
text = jax.jit(conv).lower(x, w).compile().as_text()
calls = [line for line in text.splitlines() if 'ynn_fusion' in line and 'fusion(' in line]
print('convolution in YNNPACK:', bool(calls))
print('cache dir:', jax.config.jax_compilation_cache_dir)
"""


def test_every_flag_is_known_to_this_jaxlib_and_the_cpu_flag_moves_convolutions(tmp_path):
  # XLA aborts on an unknown flag, and parses GPU flags on a CPU too: all must be known here.
  every = " ".join(xla_flags.CPU_FLAGS + xla_flags.GPU_FLAGS
                   + xla_flags.cache_flags(str(tmp_path), gpu=True))
  ours = run_python(CONVOLUTION_HLO, XLA_FLAGS=every, JAX_COMPILATION_CACHE_DIR=str(tmp_path))
  assert "convolution in YNNPACK: False" in ours
  assert f"cache dir: {tmp_path}" in ours
  plain = run_python(CONVOLUTION_HLO, XLA_FLAGS="")
  assert "convolution in YNNPACK: True" in plain  # what the CPU flag changes
