"""Freed host memory is kept for reuse: a large block freed by a worker thread comes back with no
page faults, as XLA:CPU's per-step temporary buffers do (alexnet_jax/backend/cpu/host_memory.py)."""

import os
import subprocess
import sys

import pytest

from alexnet_jax import backend
from alexnet_jax.backend.cpu import host_memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# In a fresh process (mallopt is process-wide): optionally apply the settings, then, in a new
# thread as XLA's workers are, allocate 256 MB, touch every page, free it, and count the page
# faults of doing the same a second time.
PROBE = r"""
import ctypes, resource, sys, threading
sys.path.insert(0, sys.argv[1])
from alexnet_jax.backend.cpu import host_memory
applied = host_memory.keep_freed_memory({}, gpu=False) if sys.argv[2] == "keep" else False
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
SIZE = 256 << 20
faults = []
def step():
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  block = libc.malloc(SIZE)
  ctypes.memset(block, 1, SIZE)
  libc.free(block)
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
def worker():
  step()
  step()
thread = threading.Thread(target=worker)
thread.start()
thread.join()
print(applied, faults[0], faults[1])
"""


def probe(mode: str) -> tuple[bool, int, int]:
  out = subprocess.run([sys.executable, "-c", PROBE, ROOT, mode], capture_output=True, text=True,
                       check=True, env={**os.environ, "GLIBC_TUNABLES": ""}).stdout.split()
  return out[0] == "True", int(out[1]), int(out[2])


@pytest.mark.skipif(host_memory._glibc_mallopt() is None, reason="glibc's mallopt only")
def test_a_freed_large_block_is_reused_without_page_faults():
  applied, first, second = probe("keep")
  pages = (256 << 20) // os.sysconf("SC_PAGE_SIZE")
  assert applied
  assert first > pages // 2  # the first touch faults the block in (the probe measures faults)
  assert second < pages // 100  # the second reuses it
  # Without the settings glibc unmaps the block on free, and the second touch faults again.
  applied, _, second_default = probe("default")
  assert not applied and second_default > pages // 2


def test_switched_off_and_on_gpu_hosts_nothing_is_changed(monkeypatch):
  monkeypatch.setattr(host_memory, "_glibc_mallopt", lambda: pytest.fail("mallopt was called"))
  assert not host_memory.keep_freed_memory({host_memory.OFF_SWITCH: "0"}, gpu=False)
  assert not host_memory.keep_freed_memory({}, gpu=True)


def test_each_setting_is_passed_to_mallopt(monkeypatch):
  calls = []
  monkeypatch.setattr(host_memory, "_glibc_mallopt",
                      lambda: lambda param, value: calls.append((param, value)) or 1)
  assert host_memory.keep_freed_memory({}, gpu=False)
  assert calls == [(-8, 1), (-4, 0), (-1, -1)]  # M_ARENA_MAX, M_MMAP_MAX, M_TRIM_THRESHOLD
  monkeypatch.setattr(host_memory, "_glibc_mallopt", lambda: lambda param, value: 0)
  assert not host_memory.keep_freed_memory({}, gpu=False)  # a refused setting is reported


def test_the_program_applies_them_before_main(monkeypatch):
  from alexnet_jax import cli
  order = []
  monkeypatch.setattr(backend, "keep_host_memory", lambda: order.append("malloc") or True)
  monkeypatch.setattr(cli, "main", lambda: order.append("main") or 0)
  assert cli.entry_point() == 0 and order == ["malloc", "main"]
