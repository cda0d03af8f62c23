"""Test setup: 8 virtual CPU devices (for meshes), quiet TensorFlow, the repo on sys.path."""

import os
import sys

# Must happen before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The command line keeps compiled programs in ~/.cache; tests (and the programs they start)
# neither read nor write it. tests/test_compile_cache.py turns it on in its own processes.
os.environ.setdefault("ALEXNET_JAX_COMPILE_CACHE", "0")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)
