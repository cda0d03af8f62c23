"""JAX's persistent compilation cache, on by default: a second run skips XLA's compilation.

The command line calls `enable()` at start-up, before anything compiles. Compiled programs are
kept in `$XDG_CACHE_HOME/alexnet_jax/jax_compile` (`~/.cache/...` when XDG_CACHE_HOME is unset);
`ALEXNET_JAX_COMPILE_CACHE=DIR` puts them in DIR, and `ALEXNET_JAX_COMPILE_CACHE=0` turns the
cache off. A cache directory set with JAX's own JAX_COMPILATION_CACHE_DIR wins over ours.

Every program is kept, however quickly it compiled (each is one small file; a dozen for a
training run on a CPU). The key covers the program, the devices, JAX's version and the XLA
flags, so a changed model or flag compiles anew and adds an entry: delete the folder to reclaim
the space. Only process 0 of a multi-process run writes.

XLA:CPU (jax 0.10) cannot serialise a program that holds the oneDNN convolution custom call
(config.model.conv_impl=onednn, auto's choice on a single CPU device): writing it fails with
"MemoryError: std::bad_alloc", which JAX reports as a warning and then runs the program it
compiled. Those programs (the train and eval steps) compile in every run, the rest still comes
from the cache, and that one warning is silenced here; with conv_impl=xla everything is cached.

On GPUs JAX also keeps XLA's per-fusion autotuning results (cuDNN convolution algorithms, GEMM
tilings) in `DIR/xla_gpu_per_fusion_autotune_cache_dir`, so a program that changed still skips
autotuning for the fusions it shares with one seen before. JAX does this itself once the cache
is on (`jax_persistent_cache_enable_xla_caches`, set here explicitly) and only process 0 writes
there; it sets the directory in each program's compile options, which would override an
`--xla_gpu_per_fusion_autotune_cache_dir` in XLA_FLAGS anyway.
"""

from __future__ import annotations

import logging
import os
import warnings

from alexnet_jax.backend import xla_flags

log = logging.getLogger(__name__)

ENV = "ALEXNET_JAX_COMPILE_CACHE"
# JAX's own environment variables for the settings made here: a user's value wins.
JAX_DIR_ENV = "JAX_COMPILATION_CACHE_DIR"
MIN_COMPILE_SECS_ENV = "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"
MIN_ENTRY_BYTES_ENV = "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"
XLA_CACHES_ENV = "JAX_PERSISTENT_CACHE_ENABLE_XLA_CACHES"
AUTOTUNE_CACHE = "xla_gpu_per_fusion_autotune_cache_dir"
# JAX's warning when XLA:CPU cannot serialise a program with a oneDNN custom call (see above).
UNSERIALISABLE = r"Error writing persistent compilation cache entry for .*std::bad_alloc"


def cache_dir(environ=None) -> str | None:
  """The cache folder this environment asks for, or None when the cache is off."""
  environ = os.environ if environ is None else environ
  if xla_flags.switched_off(environ, ENV):
    return None
  if environ.get(ENV):
    return os.path.abspath(os.path.expanduser(environ[ENV]))
  base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "alexnet_jax", "jax_compile")


def enable(environ=None) -> str | None:
  """Turn JAX's persistent compilation cache on; return its folder (None when switched off).

  Call before the first compilation: JAX decides once per process whether it uses the cache.
  """
  environ = os.environ if environ is None else environ
  directory = cache_dir(environ)
  if directory is None:
    return None
  import jax

  if environ.get(JAX_DIR_ENV):  # jax has read it already; the user's choice
    directory = environ[JAX_DIR_ENV]
  else:
    jax.config.update("jax_compilation_cache_dir", directory)
  if MIN_COMPILE_SECS_ENV not in environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  if MIN_ENTRY_BYTES_ENV not in environ:
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)  # no size floor
  if XLA_CACHES_ENV not in environ:
    jax.config.update("jax_persistent_cache_enable_xla_caches", AUTOTUNE_CACHE)
  warnings.filterwarnings("ignore", message=UNSERIALISABLE, category=UserWarning)
  log.debug("JAX compilation cache in %s (%s=0 turns it off)", directory, ENV)
  return directory
