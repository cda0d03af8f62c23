"""Real training runs for the resume, export and evaluation tests.

`python launch.py train` on configs/test.py in a subprocess, 2 virtual CPU devices, every step
logged: 24 steps of 32 digits, evaluations (and checkpoints with metrics) at steps 8, 16 and 24
under the plateau schedule, and checkpoints every 5 steps. The uninterrupted reference run is
made once per test run and shared by every worker. Subprocesses use the test run's compilation
cache (conftest.py), so only the first one compiles.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# XLA flags of the test processes: compiles several times faster, the same results to float
# rounding (each test compares programs built alike). XLA's backend (LLVM) optimisation off, and
# XLA:CPU's MLIR fusion emitters off (its older LLVM IR emitters compile these programs in about
# half the time; docs/performance.md). Eigen's convolutions and matrix products on one thread:
# two pytest-xdist workers, and groups of several processes, already keep both cores busy, and
# threads that wait for work spin on a core another process could use.
FAST_COMPILE_FLAGS = ("--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false "
                      "--xla_cpu_multi_thread_eigen=false")


def config_with(**overrides):
  """configs/test.py with `field=value` overrides (dotted fields as **{"optim.x": v})."""
  from alexnet_jax import configlib
  cfg = configlib.load_config(os.path.join(REPO, "configs", "test.py"))
  configlib.apply_overrides(cfg, [f"{k}={v}" for k, v in overrides.items()])
  return cfg


TOTAL_STEPS = 24
OVERRIDES = (
    "--config.num_epochs=0.55",  # 44 steps per epoch: round(0.55 * 44) = 24 steps
    "--config.eval_every_epochs=0.1818",  # round(0.1818 * 44) = every 8 steps
    "--config.log_every_steps=1",
    "--config.checkpoint_every_steps=5",
    "--config.optim.schedule=plateau",
    "--config.keep_checkpoints=2",
)


def session_dir() -> str:
  """The test run's folder of shared runs (made by conftest.py, one for every pytest-xdist
  worker, removed when the run ends)."""
  return os.environ["ALEXNET_JAX_TEST_RUNS"]


def env() -> dict[str, str]:
  out = dict(os.environ)
  out.update({
      "PYTHONPATH": REPO,
      "JAX_PLATFORMS": "cpu",
      "XLA_FLAGS": f"--xla_force_host_platform_device_count=2 {FAST_COMPILE_FLAGS}",
      "TF_CPP_MIN_LOG_LEVEL": "2",
  })  # ALEXNET_JAX_COMPILE_CACHE: the test run's one cache (conftest.py), inherited
  return out


def train_command(workdir: str, *extra: str) -> list[str]:
  return [sys.executable, os.path.join(REPO, "launch.py"), "train", "--config",
          os.path.join(REPO, "configs", "test.py"), "--workdir", workdir, *OVERRIDES, *extra]


def start(workdir: str, log_path: str, *extra: str) -> subprocess.Popen:
  """Start a training process writing its output to `log_path`."""
  log = open(log_path, "w")
  process = subprocess.Popen(train_command(workdir, *extra), cwd=REPO, env=env(), stdout=log,
                             stderr=subprocess.STDOUT)
  log.close()
  return process


def run(workdir: str, log_path: str, *extra: str, timeout: float = 300) -> str:
  process = start(workdir, log_path, *extra)
  process.wait(timeout=timeout)
  with open(log_path) as f:
    output = f.read()
  assert process.returncode == 0, output[-3000:]
  return output


@functools.cache
def reference_run() -> str:
  """The work directory of the uninterrupted run, made once per test run: the first worker to
  ask makes it under a lock, the others wait for it. Steps 3-4 traced with JAX's profiler
  (config.profile_steps), which changes no number."""
  workdir = os.path.join(session_dir(), "reference")
  done = os.path.join(session_dir(), "reference.done")
  with open(os.path.join(session_dir(), "reference.lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
    if not os.path.exists(done):
      shutil.rmtree(workdir, ignore_errors=True)  # a failed attempt's
      run(workdir, os.path.join(session_dir(), "reference.log"), "--config.profile_steps=3-4")
      open(done, "w").close()
  return workdir


def records(workdir: str) -> list[dict]:
  """metrics.jsonl, ignoring a last line cut short by a kill."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  out = []
  with open(path) as f:
    for line in f:
      try:
        out.append(json.loads(line))
      except json.JSONDecodeError:
        pass
  return out


def last_train_step(workdir: str, since: int = 0) -> int:
  """The last step logged in records[since:] (0 if none): a restarted run's own progress."""
  return max((r["step"] for r in records(workdir)[since:] if r["split"] == "train"), default=0)


def finished_steps(workdir: str) -> list[int]:
  """Steps with a complete (renamed into place) checkpoint."""
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def writing_checkpoint(workdir: str) -> bool:
  """Whether a checkpoint is being written (Orbax writes under a temporary name first)."""
  directory = os.path.join(workdir, "checkpoints")
  try:
    return any("tmp" in name for name in os.listdir(directory))
  except FileNotFoundError:
    return False


def wait_for(condition, process: subprocess.Popen, *, timeout: float = 240, poll: float = 0.002):
  """Poll `condition()` until true; fail if the process ends first."""
  deadline = time.monotonic() + timeout
  while not condition():
    if process.poll() is not None:
      raise AssertionError(f"the training process ended (rc {process.returncode}) before the "
                           "point where the test meant to stop it")
    if time.monotonic() > deadline:
      process.kill()
      raise AssertionError("timed out waiting for the training process")
    time.sleep(poll)


# A sitecustomize.py that makes packages impossible to import in every Python process started with
# its folder on PYTHONPATH: what a GPU host without TensorFlow looks like.
_BLOCKER = '''
import importlib.abc, importlib.machinery, sys
BLOCKED = {blocked!r}
class _Refuse(importlib.abc.Loader):
  def create_module(self, spec):
    raise ImportError(f"{{spec.name}} is blocked in this test")
  def exec_module(self, module):
    raise ImportError(f"{{module.__name__}} is blocked in this test")
class _Blocked(importlib.abc.MetaPathFinder):
  """Every import of the blocked packages fails (a look-up that does not import, such as
  importlib.util.find_spec, still finds them)."""
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in BLOCKED:
      return importlib.machinery.ModuleSpec(name, _Refuse())
    return None
sys.meta_path.insert(0, _Blocked())
'''


def import_blocker(*packages: str) -> str:
  """sitecustomize.py text under which importing any of `packages` raises ImportError."""
  return _BLOCKER.format(blocked=tuple(packages))

