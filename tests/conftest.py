"""Test setup: 8 virtual CPU devices (for meshes), faster-compiling XLA flags, quiet
TensorFlow, the repo on sys.path, one compilation cache and one folder of shared trained runs for
the whole run."""

import atexit
import os
import shutil
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from runs import FAST_COMPILE_FLAGS  # noqa: E402  (tests/runs.py; imports no JAX)

# Must happen before jax is imported anywhere: programs (the random initialisers' above all)
# compile several times faster with these flags and compute the same to float rounding; each
# test compares programs built alike. Tests that run what a user runs (the default config's
# accuracy) start `launch.py` without them.
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=8 {FAST_COMPILE_FLAGS}")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# One persistent compilation cache shared by the whole test run: this process and every
# `launch.py` it starts (they inherit the variable) compile a program once, however many tests
# build it. A fresh folder per run, removed at the end, so a run never reads another's programs
# and ~/.cache is never touched. tests/test_compile_cache.py sets its own in its own processes.
if "ALEXNET_JAX_COMPILE_CACHE" not in os.environ:
  _session_cache = tempfile.mkdtemp(prefix="alexnet_jax_test_compile_cache_")
  atexit.register(shutil.rmtree, _session_cache, ignore_errors=True)
  os.environ["ALEXNET_JAX_COMPILE_CACHE"] = _session_cache
# Likewise one folder for the trained runs several tests share (tests/runs.py): made once per test
# run, not once per pytest-xdist worker (the workers inherit this process's environment).
if "ALEXNET_JAX_TEST_RUNS" not in os.environ:
  _session_runs = tempfile.mkdtemp(prefix="alexnet_jax_test_runs_")
  atexit.register(shutil.rmtree, _session_runs, ignore_errors=True)
  os.environ["ALEXNET_JAX_TEST_RUNS"] = _session_runs

from alexnet_jax import compile_cache  # noqa: E402

# On from the first compilation (JAX decides once per process), as the command line does; not
# only from the first test that happens to call cli.main.
compile_cache.enable()

import pytest  # noqa: E402


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
  """Under pytest-xdist (pyproject's `-n 2 --dist loadgroup`), the tests of a module that share a
  module-scoped fixture (a trained run, a multi-process group) go to one worker, so the fixture
  runs once; every other test goes to whichever worker is free. A test's own xdist_group mark
  (tests/test_multiprocess.py names its group) wins. Tests marked `long` come first."""
  for item in items:
    if item.get_closest_marker("xdist_group"):
      continue
    definitions = getattr(item, "_fixtureinfo", None)
    shared = definitions and any(defs[-1].scope == "module"
                                 for defs in definitions.name2fixturedefs.values())
    if shared:
      item.add_marker(pytest.mark.xdist_group(item.module.__name__))
  # Long tests first, longest first (`long(seconds=...)`: a rough cost on the 2-core machine):
  # each worker takes the next test or group as it frees up, so a long one left to the end
  # would run alone while the other worker idles.
  def cost(item):
    mark = item.get_closest_marker("long")
    return -mark.kwargs.get("seconds", 60) if mark else 0

  items.sort(key=cost)


# A test that carries its own xdist_group mark: under loadgroup its id comes back with the group.
ALWAYS_GROUPED = "test_multiprocess.py::test_every_strategy_trains_alike_in_every_layout["


def pytest_xdist_node_collection_finished(node, ids):
  """xdist groups by suffixing each grouped test's node id with its group (`...]@name`); where
  that fails (pytest 9.2 with xdist 3.8) every module fixture would run on both workers,
  doubling the suite's time and load without an error, so the run stops instead."""
  if node.config.getvalue("dist") == "loadgroup" and any(
      ALWAYS_GROUPED in i and "@" not in i.rpartition("]")[2] for i in ids):
    pytest.exit("pytest-xdist's loadgroup did not group the tests that share a fixture: this "
                "pytest and pytest-xdist do not work together (pytest-dev/pytest-xdist#1386); "
                "pip install -e '.[test]' for the versions pyproject.toml names, or run -n 0",
                returncode=4)
