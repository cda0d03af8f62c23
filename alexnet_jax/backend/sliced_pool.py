"""Max pooling over strided slices: the same function and gradient as backend/xla.py's max_pool,
faster on CPUs and GPUs (config.model.pool_impl; docs/performance.md has the measurements).

`jax.lax.reduce_window(max)` differentiates to `select_and_scatter`, which XLA:CPU lowers to a
variadic reduce-window that tracks argmax indices in int32 tensors the size of the activations, plus
iotas and broadcasts to build them, and which XLA:GPU runs as a kernel of its own. Here the 2-D pool
is two 1-D pools (columns, then rows) over strided slices, with a hand-written backward that routes
each output's gradient to the first maximum of its window in row-major order, exactly what
select_and_scatter does (the first row holding the window's maximum, then the first column within
that row; tests check equality with ties). Everything is slices, compares, selects and pads, which
XLA fuses.
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
