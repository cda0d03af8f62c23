"""The model's layer computations by name: the interface between the model and the backends.

Each config field below names one of several forms of the same function and gradient; "auto"
takes the form that runs best on the backend JAX uses (docs/performance.md, "Why the CPU
backend does what it does", says why):

  conv_impl   auto | xla | onednn      oneDNN's convolutions through XLA:CPU's custom call on a
                                       single CPU device where that works, XLA's elsewhere
  pool_impl   auto | slices | reduce_window
                                       max pooling over strided slices everywhere (faster than
                                       XLA's reduce_window and its select_and_scatter gradient
                                       on CPUs and GPUs, measured)
  lrn_impl    auto | reduce_window | matmul | slices
                                       LRN's window sum: reduce_window everywhere (faster than
                                       the matrix product on GPUs too, measured)
  conv1_impl  auto | direct | space_to_depth
                                       conv1 as a stride-1 convolution of pixel blocks on GPUs,
                                       as is on CPUs
"""

from __future__ import annotations

from typing import Callable

import jax

from alexnet_jax.backend import sliced_pool, xla
from alexnet_jax.backend.cpu import onednn

CONV_IMPLS = ("auto", "xla", "onednn")
POOL_IMPLS = ("auto", "slices", "reduce_window")
LRN_IMPLS = ("auto", "reduce_window", "matmul", "slices")
CONV1_IMPLS = ("auto", "direct", "space_to_depth")

_CONVS = {"xla": xla.conv2d, "onednn": onednn.conv2d_if_float32}
_POOLS = {"slices": sliced_pool.max_pool, "reduce_window": xla.max_pool}
_WINDOW_SUMS = {"reduce_window": xla.window_sum_reduce_window, "matmul": xla.window_sum_matmul,
                "slices": xla.window_sum_slices}


def _on_cpu() -> bool:
  return jax.default_backend() == "cpu"


def resolve_conv_impl(impl: str) -> str:
  """oneDNN is chosen only where JAX sees one device: XLA's SPMD partitioner cannot split a
  custom call, and would gather every operand onto every device."""
  if impl == "auto":
    return "onednn" if _on_cpu() and jax.device_count() == 1 and onednn.available() else "xla"
  return impl


def resolve_pool_impl(impl: str) -> str:
  return "slices" if impl == "auto" else impl


def resolve_lrn_impl(impl: str) -> str:
  return "reduce_window" if impl == "auto" else impl


def resolve_conv1_impl(impl: str) -> str:
  if impl == "auto":
    return "direct" if _on_cpu() else "space_to_depth"
  return impl


def conv_function(impl: str, *, space_to_depth: bool = False) -> Callable:
  """`conv(x_NHWC, kernel_HWIO, stride, padding) -> y_NHWC` for config.model.conv_impl=`impl`;
  space_to_depth: a strided convolution folded to stride 1 (config.model.conv1_impl)."""
  if space_to_depth:
    return xla.conv2d_space_to_depth
  return _CONVS[resolve_conv_impl(impl)]


def pool_function(impl: str) -> Callable:
  """`pool(x_NHWC, window, stride) -> y` (max, VALID) for config.model.pool_impl=`impl`."""
  return _POOLS[resolve_pool_impl(impl)]


def window_sum_function(impl: str) -> Callable:
  """`window_sum(squares, n) -> sums over the n channels centred on each` for
  config.model.lrn_impl=`impl`."""
  return _WINDOW_SUMS[resolve_lrn_impl(impl)]


def checks(*, pool_impl: str, conv1_impl: str, conv_impl: str,
           lrn_impl: str) -> list[tuple[bool, str]]:
  """(ok, the one-line error naming the field) for each choice the model was given."""
  return [
      (pool_impl in POOL_IMPLS,
       f"config.model.pool_impl={pool_impl!r}: choose {', '.join(POOL_IMPLS)}"),
      (conv1_impl in CONV1_IMPLS,
       f"config.model.conv1_impl={conv1_impl!r}: choose {', '.join(CONV1_IMPLS)}"),
      (conv_impl in CONV_IMPLS,
       f"config.model.conv_impl={conv_impl!r}: choose {', '.join(CONV_IMPLS)}"),
      (conv_impl != "onednn" or onednn.available(),
       "config.model.conv_impl=onednn: this JAX cannot run XLA:CPU's oneDNN convolution here "
       "(it needs the CPU backend and a jaxlib with that op); use auto or xla"),
      (lrn_impl in LRN_IMPLS,
       f"config.model.lrn_impl={lrn_impl!r}: choose {', '.join(LRN_IMPLS)}"),
  ]

