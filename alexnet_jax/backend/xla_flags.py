"""XLA flags that make AlexNet faster, applied when the command line starts (before JAX starts).

XLA reads XLA_FLAGS once, when JAX creates its first backend, so `cli.main` calls
`backend.start_up()` (`apply_defaults()` here) first thing. A flag the user already put in
XLA_FLAGS wins over ours; ALEXNET_JAX_XLA_DEFAULTS=0 turns ours off altogether. XLA aborts on a
flag it does not know, so each set is applied only where it was checked: CPU flags on machines
without a CUDA plugin for JAX, GPU flags on machines with one.

CPU: XLA:CPU hands each convolution to YNNPACK by default; for AlexNet's weight-gradient
convolutions (the batch becomes the contraction, e.g. conv2's 27x27x128 -> 5x5 window) XLA's own
Eigen convolutions were much faster (docs/performance.md). YNNPACK keeps the matrix products
(fc6-fc8), where it beat Eigen.

GPU (not yet measured on a GPU): the latency-hiding scheduler overlaps the data-parallel
gradient all-reduce with the backward pass.

ALEXNET_JAX_CACHE_DIR=DIR keeps compiled programs (JAX's persistent compilation cache) and, on
GPUs, XLA's per-fusion autotuning results (cuDNN convolution algorithms, GEMM tilings) in DIR,
so a second run skips both compilation and autotuning.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os

CPU_FLAGS = (
    # Convolutions to Eigen, not YNNPACK (matrix products stay with YNNPACK).
    "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",
)
GPU_FLAGS = (
    "--xla_gpu_enable_latency_hiding_scheduler=true",
)
CUDA_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_plugins.xla_cuda12",
                "jax_plugins.xla_cuda13")
OFF_SWITCH = "ALEXNET_JAX_XLA_DEFAULTS"
CACHE_DIR = "ALEXNET_JAX_CACHE_DIR"
# The CPU flag names a fusion type that XLA:CPU knows from jaxlib 0.10 on.
MIN_JAXLIB_FOR_CPU_FLAGS = (0, 10)


def switched_off(environ, name: str) -> bool:
  """Whether environment variable `name` turns one of our start-up settings off (0/false/no/off)."""
  return environ.get(name, "1").lower() in ("0", "false", "no", "off")


def flag_name(flag: str) -> str:
  return flag.split("=", 1)[0].lstrip("-")


def merge_flags(existing: str, extra: tuple[str, ...] | list[str]) -> str:
  """`existing` XLA_FLAGS plus each of `extra` whose flag name is not set there already."""
  present = {flag_name(f) for f in existing.split()}
  added = [f for f in extra if flag_name(f) not in present]
  return " ".join([existing.strip()] + added).strip()


def has_cuda_plugin() -> bool:
  for name in CUDA_PLUGINS:
    try:
      if importlib.util.find_spec(name) is not None:
        return True
    except (ImportError, ValueError):  # a parent package that is absent
      continue
  return False


def _jaxlib_version() -> tuple[int, ...]:
  try:
    text = importlib.metadata.version("jaxlib")
  except importlib.metadata.PackageNotFoundError:
    return ()
  return tuple(int(p) for p in text.split(".")[:2] if p.isdigit())


def default_flags(*, gpu: bool | None = None) -> tuple[str, ...]:
  """The flags for this machine: GPU ones where a CUDA plugin is installed, else CPU ones."""
  gpu = has_cuda_plugin() if gpu is None else gpu
  if gpu:
    return GPU_FLAGS
  if _jaxlib_version() >= MIN_JAXLIB_FOR_CPU_FLAGS:
    return CPU_FLAGS
  return ()


def cache_flags(cache_dir: str, *, gpu: bool) -> tuple[str, ...]:
  if gpu:
    return (f"--xla_gpu_per_fusion_autotune_cache_dir={os.path.join(cache_dir, 'autotune')}",)
  return ()


def apply_defaults(environ=None) -> list[str]:
  """Add our flags to XLA_FLAGS in `environ` (default os.environ); return those added.

  Call before JAX creates a backend. Also points JAX's persistent compilation cache at
  $ALEXNET_JAX_CACHE_DIR when that is set (and JAX_COMPILATION_CACHE_DIR is not).
  """
  environ = os.environ if environ is None else environ
  if switched_off(environ, OFF_SWITCH):
    return []
  gpu = has_cuda_plugin()
  wanted = list(default_flags(gpu=gpu))
  cache_dir = environ.get(CACHE_DIR, "")
  if cache_dir:
    wanted += cache_flags(cache_dir, gpu=gpu)
    environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(cache_dir, "jax"))
    # Cache every program, not only those that took over a second to compile.
    environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  before = environ.get("XLA_FLAGS", "")
  after = merge_flags(before, wanted)
  if after != before.strip():
    environ["XLA_FLAGS"] = after
  present = {flag_name(f) for f in before.split()}
  return [f for f in wanted if flag_name(f) not in present]
