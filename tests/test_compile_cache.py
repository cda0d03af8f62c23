"""The persistent compilation cache: where it goes, that a second process hits it, the off switch.

JAX decides once per process whether it uses the cache, so each case runs in a fresh process.
Hits and misses are counted with JAX's own monitoring events.
"""

import json
import os
import subprocess
import sys

import pytest

from alexnet_jax import cli, compile_cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Enables the cache as the command line does, compiles one small jitted function (and one
# eager operation), and prints JAX's cache events and settings as JSON.
PROGRAM = """
import json, sys
from alexnet_jax import compile_cache
directory = compile_cache.enable()
import jax, jax.numpy as jnp
events = {}
jax.monitoring.register_event_listener(
    lambda name, **kw: events.__setitem__(name, events.get(name, 0) + 1))

@jax.jit
def f(x):
  for i in range(5):
    x = jnp.tanh(x @ x) + i
  return x

f(jnp.ones((32, 32))).block_until_ready()
(jnp.arange(3) * 2).block_until_ready()
from jax._src import compiler  # the options each compilation gets (on GPUs: the autotune cache)
options = compiler.get_compile_options(1, 1)  # kept: debug_options points into it
debug = options.executable_build_options.debug_options
print(json.dumps({
    "directory": directory,
    "requests": events.get("/jax/compilation_cache/compile_requests_use_cache", 0),
    "hits": events.get("/jax/compilation_cache/cache_hits", 0),
    "misses": events.get("/jax/compilation_cache/cache_misses", 0),
    "autotune_dir": debug.xla_gpu_per_fusion_autotune_cache_dir,
}))
"""

JAX_CACHE_SETTINGS = (compile_cache.ENV, compile_cache.JAX_DIR_ENV,
                      compile_cache.MIN_COMPILE_SECS_ENV, compile_cache.MIN_ENTRY_BYTES_ENV,
                      compile_cache.XLA_CACHES_ENV)


def run(program, tmp_path, **env):
  """`program` in a fresh Python with HOME and XDG_CACHE_HOME under tmp_path; its stdout's last
  line as JSON, and its stderr."""
  full = {k: v for k, v in os.environ.items() if k not in JAX_CACHE_SETTINGS}
  full.update(HOME=str(tmp_path / "home"), XDG_CACHE_HOME=str(tmp_path / "xdg"),
              PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", **env)
  proc = subprocess.run([sys.executable, "-c", program], env=full, cwd=ROOT, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def entries(directory):
  return sorted(p for p in os.listdir(directory) if p.endswith("-cache"))


def test_where_the_cache_goes():
  home = os.path.expanduser("~")
  assert compile_cache.cache_dir({}) == os.path.join(home, ".cache", "alexnet_jax", "jax_compile")
  assert compile_cache.cache_dir({"XDG_CACHE_HOME": "/x"}) == "/x/alexnet_jax/jax_compile"
  assert compile_cache.cache_dir({"ALEXNET_JAX_COMPILE_CACHE": "/y/c", "XDG_CACHE_HOME": "/x"}) \
      == "/y/c"
  for off in ("0", "false", "no", "off", "OFF"):
    assert compile_cache.cache_dir({"ALEXNET_JAX_COMPILE_CACHE": off}) is None


def test_a_second_process_compiles_nothing_and_the_off_switch_writes_nothing(tmp_path):
  default = tmp_path / "xdg" / "alexnet_jax" / "jax_compile"
  first, _ = run(PROGRAM, tmp_path)
  assert first["directory"] == str(default)
  assert first["requests"] >= 2 and first["misses"] == first["requests"] and first["hits"] == 0
  written = entries(default)
  assert len(written) == first["requests"]  # every program, however quick to compile
  assert any(name.startswith("jit_f-") for name in written)

  second, _ = run(PROGRAM, tmp_path)
  assert second["requests"] == first["requests"] == second["hits"] and second["misses"] == 0
  assert entries(default) == written

  off, _ = run(PROGRAM, tmp_path / "off", ALEXNET_JAX_COMPILE_CACHE="0")
  assert off["directory"] is None and off["hits"] == off["misses"] == 0
  assert not (tmp_path / "off" / "xdg").exists() and not (tmp_path / "off" / "home").exists()


def test_a_folder_of_ones_own_and_jaxs_own_variable(tmp_path):
  mine, _ = run(PROGRAM, tmp_path, ALEXNET_JAX_COMPILE_CACHE=str(tmp_path / "mine"))
  assert mine["directory"] == str(tmp_path / "mine") and entries(tmp_path / "mine")
  # On GPUs XLA keeps its autotuning results next to the programs (JAX sets it per compilation).
  assert mine["autotune_dir"] == str(tmp_path / "mine" / compile_cache.AUTOTUNE_CACHE)
  theirs, _ = run(PROGRAM, tmp_path, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "theirs"))
  assert theirs["directory"] == str(tmp_path / "theirs") and entries(tmp_path / "theirs")
  assert not (tmp_path / "xdg").exists()


ONEDNN_PROGRAM = """
import json
from alexnet_jax import compile_cache
from alexnet_jax.backend.cpu import onednn
compile_cache.enable()
import jax, jax.numpy as jnp
x, w = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 4))
ours = jax.jit(onednn.conv2d, static_argnums=(2, 3))(x, w, 1, 1)
print(json.dumps({"available": onednn.available(),
                  "error": float(jnp.abs(ours - onednn.xla_conv(x, w, 1, 1)).max())}))
"""


def test_programs_xla_cpu_cannot_serialise_run_without_a_warning(tmp_path):
  """The oneDNN convolution custom call (one CPU device) is not serialisable in jax 0.10's
  XLA:CPU; the program still runs, and JAX's warning about it is silenced."""
  result, stderr = run(ONEDNN_PROGRAM, tmp_path, XLA_FLAGS="",
                       ALEXNET_JAX_COMPILE_CACHE=str(tmp_path / "c"))
  if not result["available"]:
    pytest.skip("this jaxlib has no oneDNN convolution custom call")
  assert result["error"] == 0.0
  assert "Error writing persistent compilation cache entry" not in stderr, stderr[-2000:]


def test_the_command_line_turns_it_on_first(monkeypatch):
  calls = []
  monkeypatch.setattr(compile_cache, "enable", lambda: calls.append("cache"))
  monkeypatch.setattr(cli, "setup_logging", lambda: calls.append("logging"))
  assert cli.main(["bench", "--config", "configs/test.py", "--steps", "1"]) == 2
  assert calls[0] == "cache"
