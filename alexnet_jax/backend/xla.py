"""The layers in XLA's own operations, for any backend: their plain forms, the reference each
faster form must equal (tests compare them), and the other forms written with nothing but XLA's
operations (LRN's window sum three ways, conv1 as space-to-depth)."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array


def conv2d(x: Array, kernel: Array, stride: int, padding: int) -> Array:
  """NHWC x HWIO -> NHWC, stride and symmetric zero padding; the kernel in x's dtype."""
  return jax.lax.conv_general_dilated(
      x, kernel.astype(x.dtype), (stride, stride), [(padding, padding)] * 2,
      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def max_pool(x: Array, window: int, stride: int) -> Array:
  """NHWC max pooling, VALID; its gradient is XLA's select_and_scatter."""
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, window, window, 1),
                               (1, stride, stride, 1), "VALID")


# --- LRN's window sum of squares over channels, three ways (the same function and gradient) --


def window_sum_reduce_window(sq: Array, n: int) -> Array:
  """Sum over the n channels centred on each channel (zeros past the edges): XLA's reduce_window."""
  half = n // 2
  return jax.lax.reduce_window(
      sq, 0.0, jax.lax.add, (1,) * (sq.ndim - 1) + (n,), (1,) * sq.ndim,
      [(0, 0)] * (sq.ndim - 1) + [(half, half)])


def _self_adjoint(window_sum: Callable) -> Callable:
  """`window_sum(sq, n)` with its gradient computed by itself: the sum is linear with a symmetric
  matrix, so the cotangent's window sum is the gradient. Autodiff would transpose the pads and
  slices into more of them, or round the cotangent to bfloat16 through the matmul's casts."""
  f = jax.custom_vjp(window_sum, nondiff_argnums=(1,))
  f.defvjp(lambda sq, n: (window_sum(sq, n), None), lambda n, _, g: (window_sum(g, n),))
  return f


@_self_adjoint
def window_sum_slices(sq: Array, n: int) -> Array:
  """The same sum as n shifted slices of the zero-padded squares added up: pads, slices and adds
  only, the kind of work XLA fuses into one loop with the rest of LRN."""
  half, c = n // 2, sq.shape[-1]
  padded = jnp.pad(sq, [(0, 0)] * (sq.ndim - 1) + [(half, half)])
  total = padded[..., :c]
  for shift in range(1, n):
    total = total + padded[..., shift:shift + c]
  return total


def _band(c: int, n: int) -> Array:
  """The C x C 0/1 matrix with ones where |i - j| <= n // 2 (symmetric)."""
  i = jnp.arange(c)
  return (jnp.abs(i[:, None] - i[None, :]) <= n // 2).astype(jnp.bfloat16)


@_self_adjoint
def window_sum_matmul(sq: Array, n: int) -> Array:
  """The same sum as a matrix product with the banded 0/1 matrix, which GPUs run as a GEMM.

  The band is exact in bfloat16, so the float32 squares are split into three bfloat16 parts
  (hi + mid + lo: 24 bits of mantissa, as float32 has) multiplied with float32 accumulation, as
  one product over 3C: tensor-core speed and float32 accuracy on any backend (a float32 product
  would round to TF32 by default on GPUs; two parts were not accurate enough).
  """
  parts, rest = [], sq
  for _ in range(3):
    parts.append(rest.astype(jnp.bfloat16))
    rest = rest - parts[-1].astype(jnp.float32)
  band = _band(sq.shape[-1], n)
  return jnp.matmul(jnp.concatenate(parts, axis=-1), jnp.concatenate([band] * 3, axis=0),
                    preferred_element_type=jnp.float32)


# --- conv1 as space-to-depth ------------------------------------------------------------------
# conv1 reads 3 channels with an 11x11 kernel at stride 4: a poor shape for convolution kernels
# (3 input channels) and worse for its weight gradient. Folding each 4x4 block of pixels into 48
# channels turns it into a 3x3 stride-1 convolution over 48 channels with the kernel zero-padded
# to 12x12: the same sums plus exact zeros. The parameter keeps its (11, 11, 3, out) shape; the
# fold happens inside the step (config.model.conv1_impl).


def space_to_depth(x: Array, block: int) -> Array:
  """(N, H, W, C) -> (N, H/block, W/block, block*block*C), channel order (row, col, c)."""
  n, h, w, c = x.shape
  x = x.reshape(n, h // block, block, w // block, block, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(n, h // block, w // block, block * block * c)


def conv2d_space_to_depth(x: Array, kernel: Array, stride: int, padding: int) -> Array:
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
