"""Keep freed host memory for reuse, so a CPU train step does not page-fault its buffers afresh.

Why. XLA:CPU allocates each step's temporary buffers (most of a GB for `owt` at batch 128) with
malloc from its worker threads and frees them when the step ends. glibc serves a request that
large with a fresh mmap and returns it to the kernel on free (a worker thread's arena cannot
hold it at all), so every step page-faulted the whole block in again; without those faults the
step ran measurably faster (docs/performance.md).

Three mallopt settings make glibc keep the memory: one arena for all threads (the main arena can
grow to any size), no mmap for large blocks, no trimming of the heap's free top. A freed block
is then reused by the next step with no kernel work. The cost: the process keeps its peak host
memory until it exits.

Applied by the command line (`cli.entry_point`, through `backend.keep_host_memory`) on machines
without a CUDA plugin for JAX (on a GPU host the large buffers live on the device, and a single
arena would serialise the input pipeline's many threads). ALEXNET_JAX_KEEP_HOST_MEMORY=0 leaves
glibc's defaults. A C library other than glibc (musl, macOS) is left alone.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

from alexnet_jax.backend import xla_flags

OFF_SWITCH = "ALEXNET_JAX_KEEP_HOST_MEMORY"
# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
SETTINGS = (
    (M_ARENA_MAX, 1),  # every thread allocates from the main arena, which can grow without limit
    (M_MMAP_MAX, 0),  # large blocks from the heap, not from mmap (which free would unmap)
    (M_TRIM_THRESHOLD, -1),  # -1: never return the heap's free top to the kernel
)


def _glibc_mallopt():
  if not sys.platform.startswith("linux"):
    return None
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.gnu_get_libc_version  # only glibc has it
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return None
  mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  mallopt.restype = ctypes.c_int
  return mallopt


def keep_freed_memory(environ=None, *, gpu: bool | None = None) -> bool:
  """Apply the settings above to this process; return whether they were applied.

  Call before JAX starts its threads (a thread keeps the arena it first allocated from).
  """
  environ = os.environ if environ is None else environ
  if xla_flags.switched_off(environ, OFF_SWITCH):
    return False
  if gpu is None:
    gpu = xla_flags.has_cuda_plugin()
  if gpu:
    return False
  mallopt = _glibc_mallopt()
  if mallopt is None:
    return False
  return all(mallopt(param, value) == 1 for param, value in SETTINGS)
