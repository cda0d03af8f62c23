"""Layers written for XLA:CPU's speed, each the same function (and gradient) as its plain form in
backend/xla.py.

Max pooling. `jax.lax.reduce_window(max)` differentiates to `select_and_scatter`, which XLA:CPU
lowers to a variadic reduce-window that tracks argmax indices in int32 tensors the size of the
activations, plus iotas and broadcasts to build them: a sizeable part of a CPU training step
(docs/performance.md). Here the 2-D pool is two 1-D pools (columns, then rows) over strided
slices, with a hand-written backward that routes each output's gradient to the first maximum of
its window in row-major order, exactly what select_and_scatter does (the first row holding the
window's maximum, then the first column within that row; tests check equality with ties).
Everything is slices, compares, selects and pads, which XLA fuses.

conv1 as space-to-depth. torchvision/paper conv1 reads 3 channels with an 11x11 kernel at
stride 4: a poor shape for convolution kernels (3 input channels) and worse for its weight
gradient. Folding each 4x4 block of pixels into 48 channels turns it into a 3x3 stride-1
convolution over 48 channels with the kernel zero-padded to 12x12, the same sums plus exact
zeros. The parameter keeps its (11, 11, 3, out) shape; the fold happens inside the step.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

Array = jax.Array


# --- max pooling ------------------------------------------------------------------------------


def _windows(x: Array, axis: int, window: int, stride: int) -> list[Array]:
  """The `window` strided slices along `axis` whose elementwise max is the 1-D pool."""
  length = x.shape[axis]
  out = (length - window) // stride + 1
  return [jax.lax.slice_in_dim(x, k, k + (out - 1) * stride + 1, stride, axis)
          for k in range(window)]


def _max_of_windows(x: Array, axis: int, window: int, stride: int) -> Array:
  slices = _windows(x, axis, window, stride)
  y = slices[0]
  for s in slices[1:]:
    y = jnp.maximum(y, s)
  return y


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool_1d(x: Array, axis: int, window: int, stride: int) -> Array:
  """Max pooling along one axis (VALID padding)."""
  return _max_of_windows(x, axis, window, stride)


def _max_pool_1d_fwd(x, axis, window, stride):
  y = _max_of_windows(x, axis, window, stride)
  return y, (x, y)


def _max_pool_1d_bwd(axis, window, stride, residuals, g):
  """Each output's gradient goes to the first position of its window holding the maximum.

  Window offset k of output o is input position k + stride*o. Grouping positions by their
  phase r = position % stride makes every scatter a unit-stride shift: offset k lands in phase
  k % stride at block o + k // stride. The phases are then interleaved back.
  """
  x, y = residuals
  length, out = x.shape[axis], y.shape[axis]
  blocks = -(-length // stride)
  zero = jnp.zeros((), g.dtype)
  taken = None
  phases: list[Array | None] = [None] * stride
  for k, xk in enumerate(_windows(x, axis, window, stride)):
    hit = xk == y
    if taken is None:
      taken = hit
    else:
      hit = hit & ~taken
      taken = taken | hit
    shift = k // stride
    pad = [(0, 0)] * x.ndim
    pad[axis] = (shift, blocks - out - shift)
    part = jnp.pad(jnp.where(hit, g, zero), pad)
    r = k % stride
    phases[r] = part if phases[r] is None else phases[r] + part
  filled = [p if p is not None else jnp.zeros_like(phases[0]) for p in phases]
  dx = jnp.stack(filled, axis=axis + 1)  # (..., blocks, stride, ...)
  shape = list(x.shape)
  shape[axis] = blocks * stride
  dx = dx.reshape(shape)
  return (jax.lax.slice_in_dim(dx, 0, length, 1, axis),)


max_pool_1d.defvjp(_max_pool_1d_fwd, _max_pool_1d_bwd)


def max_pool(x: Array, window: int, stride: int) -> Array:
  """NHWC max pooling, `window` x `window` at `stride`, VALID; select_and_scatter's gradient."""
  return max_pool_1d(max_pool_1d(x, 2, window, stride), 1, window, stride)


# --- conv1 as space-to-depth ------------------------------------------------------------------


def space_to_depth(x: Array, block: int) -> Array:
  """(N, H, W, C) -> (N, H/block, W/block, block*block*C), channel order (row, col, c)."""
  n, h, w, c = x.shape
  x = x.reshape(n, h // block, block, w // block, block, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(n, h // block, w // block, block * block * c)


def strided_conv_as_space_to_depth(x: Array, kernel: Array, stride: int, padding: int) -> Array:
  """The NHWC convolution `x * kernel` (stride `stride`, symmetric zero `padding`) computed as a
  stride-1 convolution of space-to-depth(x) with the kernel zero-padded to a multiple of the
  stride. Same result as jax.lax.conv_general_dilated up to float summation order.
  """
  n, h, w, c = x.shape
  k = kernel.shape[0]
  out_h = (h + 2 * padding - k) // stride + 1
  out_w = (w + 2 * padding - k) // stride + 1
  blocks_k = -(-k // stride)  # kernel size in blocks
  # Input rows needed: (out - 1) * stride + blocks_k * stride, from -padding on.
  need_h = (out_h - 1 + blocks_k) * stride
  need_w = (out_w - 1 + blocks_k) * stride
  x = jnp.pad(x, ((0, 0), (padding, max(0, need_h - h - padding)),
                  (padding, max(0, need_w - w - padding)), (0, 0)))[:, :need_h, :need_w]
  x = space_to_depth(x, stride)
  kk = blocks_k * stride
  kernel = jnp.pad(kernel, ((0, kk - k), (0, kk - k), (0, 0), (0, 0)))
  cout = kernel.shape[-1]
  kernel = kernel.reshape(blocks_k, stride, blocks_k, stride, c, cout)
  kernel = kernel.transpose(0, 2, 1, 3, 4, 5).reshape(blocks_k, blocks_k, stride * stride * c, cout)
  return jax.lax.conv_general_dilated(x, kernel.astype(x.dtype), (1, 1), "VALID",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
