"""The backend layer: how this machine runs what the model asks for.

The model names a layer's computation by its config field (config.model.conv_impl, pool_impl,
lrn_impl, conv1_impl) and asks `backend.ops` for the function; "auto" is resolved there, by the
backend JAX runs on. Everything written for one backend lives under `backend/cpu` and is reached
only through `backend.ops` and the start-up settings below, so a reader of the model sees
AlexNet, and a reader on a GPU sees no CPU code. docs/performance.md says why each choice is
what it is, with the measurements.

This module imports neither JAX nor the layer functions: the start-up settings must run before
JAX starts its threads and reads XLA_FLAGS.
"""

from __future__ import annotations

from alexnet_jax.backend import xla_flags
from alexnet_jax.backend.cpu import host_memory


def keep_host_memory() -> bool:
  """Let glibc keep freed memory for reuse on hosts without a GPU plugin (backend/cpu/host_memory
  says why); return whether it was applied. A program's entry point calls it first thing, before
  JAX starts its threads; tests leave their own process's malloc alone."""
  return host_memory.keep_freed_memory()


def start_up() -> list[str]:
  """Add this machine's XLA flags to XLA_FLAGS (a user's own flags win); return those added.
  Call before JAX creates a backend: XLA reads XLA_FLAGS once."""
  return xla_flags.apply_defaults()
