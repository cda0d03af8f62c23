"""Convolutions through oneDNN on CPU, called from JAX: the forward pass and input gradient.

Why. XLA:CPU runs a convolution either in YNNPACK or in Eigen's spatial convolution (patches
packed into small oneDNN matrix products); both were slower than PyTorch's oneDNN convolutions,
layer for layer (docs/performance.md, benchmarks/conv_layers.py). jaxlib also links oneDNN
itself and has a runtime op for its direct convolution, the custom call `__onednn$convolution`
(XLA's own oneDNN rewriter emits it, but that rewriter is not built into the pip wheels). Here
the model emits that custom call directly.

What runs where.
- forward: oneDNN's direct convolution (NHWC input, HWIO kernel).
- input gradient (stride 1): the same oneDNN forward convolution of the output gradient with
  the kernel flipped in space and read as HWOI, padded by k - 1 - padding. Strided layers take
  XLA's own input gradient (in AlexNet only conv1 is strided, and its input needs none).
- weight gradient: XLA's (Eigen) convolution. Expressed as a oneDNN forward convolution it ran
  slower than Eigen (the output gradient becomes a 27x27 or 55x55 "kernel"), so it stays.

Safety. The custom call's name and configuration are XLA internals, not a JAX API, and they have
changed between versions (e.g. whether spatial dimensions are counted from 0 or 1). `available()`
therefore runs both directions on a small asymmetric case against XLA's convolution once per
process before the model may use them; any error or mismatch means "not available" and the model
keeps XLA's convolutions (config.model.conv_impl=auto). Only float32 goes through oneDNN.

Sharding. XLA's SPMD partitioner cannot split a custom call: on a multi-device mesh it would
gather every operand onto every device. So `auto` chooses oneDNN only when JAX sees one device.
"""
from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Primitive
from jax.extend.mlir import ir
from jax.extend.mlir.dialects import stablehlo
from jax.interpreters import batching, mlir

Array = jax.Array
TARGET = "__onednn$convolution"


def xla_conv(x: Array, kernel: Array, stride: int, padding: int,
             kernel_layout: str = "HWIO") -> Array:
  """XLA's own convolution with the same arguments as the oneDNN one."""
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), [(padding, padding)] * 2,
                                      dimension_numbers=("NHWC", kernel_layout, "NHWC"))


# --- the primitive: one oneDNN forward convolution ------------------------------------------

_conv_p = Primitive("onednn_conv2d")


def _abstract_eval(x, kernel, *, stride, padding, kernel_layout):
  shape = jax.eval_shape(functools.partial(xla_conv, stride=stride, padding=padding,
                                           kernel_layout=kernel_layout), x, kernel).shape
  return jax.core.ShapedArray(shape, x.dtype)


def backend_config(stride: int, padding: int, kernel_layout: str) -> str:
  """The custom call's OneDnnConvolutionConfig as XLA parses it (JSON of the proto).

  Dimensions are the axes' positions (0-based); window values are XLA's own (stride 1 = none).
  """
  return json.dumps({"onednn_conv_config": {
      "dims": 4, "feature_groups": 1,
      "input": {"data": {"batch_dim": 0, "feature_dim": 3, "spatial_dims": [1, 2]}},
      "kernel": {"filter": {"input_feature_dim": kernel_layout.index("I"),
                            "output_feature_dim": kernel_layout.index("O"),
                            "spatial_dims": [kernel_layout.index("H"),
                                             kernel_layout.index("W")]}},
      "output": {"data": {"batch_dim": 0, "feature_dim": 3, "spatial_dims": [1, 2]}},
      "window": {"pad_left": [padding] * 2, "pad_right": [padding] * 2,
                 "strides": [stride] * 2, "window_dilations": [1, 1]}}})


def _lowering(ctx, x, kernel, *, stride, padding, kernel_layout):
  out_aval, = ctx.avals_out
  op = stablehlo.CustomCallOp(
      [mlir.aval_to_ir_type(ctx.module_context, out_aval)], [x, kernel], TARGET,
      backend_config=ir.StringAttr.get(backend_config(stride, padding, kernel_layout)),
      api_version=ir.IntegerAttr.get(ir.IntegerType.get_signless(32), 1))
  return op.results


def _batching(args, dims, **params):
  """vmap (e.g. over the paper's towers): one convolution per mapped element."""
  size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
  take = lambda a, d, i: a if d is None else jnp.take(a, i, axis=d)
  outs = [_conv_p.bind(*(take(a, d, i) for a, d in zip(args, dims)), **params)
          for i in range(size)]
  return jnp.stack(outs), 0


@functools.cache
def _compiled(stride, padding, kernel_layout):
  return jax.jit(lambda x, kernel: _conv_p.bind(x, kernel, stride=stride, padding=padding,
                                                kernel_layout=kernel_layout))


def _eager(x, kernel, *, stride, padding, kernel_layout):
  """Outside jit (op-by-op), compile the one convolution."""
  return _compiled(stride, padding, kernel_layout)(x, kernel)


_conv_p.def_impl(_eager)
_conv_p.def_abstract_eval(_abstract_eval)
mlir.register_lowering(_conv_p, _lowering, platform="cpu")
batching.primitive_batchers[_conv_p] = _batching


def onednn_conv(x: Array, kernel: Array, stride: int, padding: int,
                kernel_layout: str = "HWIO") -> Array:
  return _conv_p.bind(x, kernel, stride=stride, padding=padding, kernel_layout=kernel_layout)


# --- the differentiable convolution ---------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(x: Array, kernel: Array, stride: int, padding: int) -> Array:
  """NHWC x HWIO -> NHWC, stride and symmetric zero padding: backend.xla.conv2d through oneDNN."""
  return onednn_conv(x, kernel, stride, padding)


def _conv2d_fwd(x, kernel, stride, padding):
  return onednn_conv(x, kernel, stride, padding), (x, kernel)


def _conv2d_bwd(stride, padding, residuals, g):
  x, kernel = residuals
  k = kernel.shape[0]
  if stride == 1 and 0 <= padding <= k - 1:
    # The transposed convolution: flip the kernel in space, swap its in/out roles (HWOI).
    dx = onednn_conv(g, jnp.flip(kernel, (0, 1)), 1, k - 1 - padding, "HWOI")
  else:
    dx = jax.vjp(lambda x: xla_conv(x, kernel, stride, padding), x)[1](g)[0]
  dkernel = jax.vjp(lambda w: xla_conv(x, w, stride, padding), kernel)[1](g)[0]
  return dx, dkernel


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def conv2d_if_float32(x: Array, kernel: Array, stride: int, padding: int) -> Array:
  """conv2d for float32 inputs; other dtypes stay with XLA's convolution (the kernel in x's
  dtype either way): what config.model.conv_impl=onednn runs."""
  if x.dtype != jnp.float32:
    return xla_conv(x, kernel.astype(x.dtype), stride, padding)
  return conv2d(x, kernel.astype(x.dtype), stride, padding)


# --- may the model use it? ------------------------------------------------------------------


@functools.cache
def available() -> bool:
  """True when this process's XLA:CPU runs the custom call and matches XLA's convolution."""
  if jax.default_backend() != "cpu":
    return False
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 9, 9, 4), np.float32)
  kernel = rng.standard_normal((3, 3, 4, 6), np.float32)
  g = rng.standard_normal((2, 9, 9, 6), np.float32)

  def both_ways(x, kernel, g):
    """(oneDNN's, XLA's) pairs: forward at strides 2 and 1, then both gradients."""
    pairs = [(onednn_conv(x, kernel, s, 1), xla_conv(x, kernel, s, 1)) for s in (2, 1)]
    grads = [jax.grad(lambda x, w: jnp.vdot(conv(x, w, 1, 1), g), (0, 1))(x, kernel)
             for conv in (conv2d, xla_conv)]
    return pairs + list(zip(*grads))

  try:
    # One program, compiled once; evaluated now even when called while a jit-compiled function
    # is being traced.
    with jax.ensure_compile_time_eval():
      pairs = jax.jit(both_ways)(x, kernel, g)
    return all(got.shape == want.shape and np.allclose(got, want, rtol=1e-4, atol=1e-4)
               for got, want in pairs)
  except Exception:  # noqa: BLE001 - an XLA without the op, or with another config format
    return False
