"""Each training example's random draws (crop position, flip, PCA lighting), in numpy.

The draws are TensorFlow's stateless random ops as `alexnet_jax.data.ops` makes them inside
tf.data, recomputed bit for bit without TensorFlow and for many examples at once
(tests/test_data_draws.py checks them against TensorFlow's):

  key(example)  = stateless_fold_in([seed, epoch], example_id)   = [c(seed, epoch), example_id]
  crop, flip, lighting keys = stateless_split(key(example), 3)
  crop position = stateless_uniform([], crop key, 0, rows * cols, int32) -> divmod(pos, cols)
  flip          = stateless_uniform([], flip key) < 0.5
  lighting      = eigvec @ (stateless_normal([3], lighting key) * (sigma * eigval))

TensorFlow runs these on the CPU with Philox-4x32-10: a seed (s0, s1) is scrambled into a key
and a counter by one Philox block under a fixed key, and each op reads the stream of 32-bit
words Philox gives from that counter. Normals are Box-Muller pairs computed with the C
library's single-precision logf, sinf and cosf (called here through ctypes: numpy's own float32
functions differ from them in the last bit now and then).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

import numpy as np

from alexnet_jax import configlib

_MULTIPLIERS = (np.uint64(0xD2511F53), np.uint64(0xCD9E8D57))
_KEY_STEPS = (np.uint32(0x9E3779B9), np.uint32(0xBB67AE85))
_LOW32 = np.uint64(0xFFFF_FFFF)
_SEED_SCRAMBLE_KEY = (np.uint32(0x3EC8F720), np.uint32(0x02461E29))


def philox(counter: np.ndarray, key: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
  """Philox-4x32-10 of (..., 4) uint32 counters under keys (k0, k1) (each (...) uint32)."""
  c = [counter[..., i].astype(np.uint64) for i in range(4)]
  k0, k1 = (np.asarray(k, np.uint32) for k in key)
  with np.errstate(over="ignore"):  # the key schedule wraps around 2^32 by design
    for _ in range(10):
      p0, p1 = _MULTIPLIERS[0] * c[0], _MULTIPLIERS[1] * c[2]
      c = [(p1 >> np.uint64(32)) ^ c[1] ^ k0, p1 & _LOW32,
           (p0 >> np.uint64(32)) ^ c[3] ^ k1, p0 & _LOW32]
      k0, k1 = k0 + _KEY_STEPS[0], k1 + _KEY_STEPS[1]
  return np.stack(c, axis=-1).astype(np.uint32)


def words(seeds: np.ndarray, count: int) -> np.ndarray:
  """(..., count) uint32: the first `count` words of the stream of each int64 seed pair (..., 2)."""
  halves = np.asarray(seeds, np.int64).view(np.uint64)
  start = np.stack([halves[..., 0] & _LOW32, halves[..., 0] >> np.uint64(32),
                    halves[..., 1] & _LOW32, halves[..., 1] >> np.uint64(32)], axis=-1)
  mix = philox(start.astype(np.uint32), _SEED_SCRAMBLE_KEY)
  key = (mix[..., 0], mix[..., 1])
  counter = np.zeros_like(mix)
  counter[..., 2:] = mix[..., 2:]
  blocks = []
  for _ in range(-(-count // 4)):
    blocks.append(philox(counter, key))
    counter[..., 0] += np.uint32(1)  # never wraps here: a few blocks per seed
  return np.concatenate(blocks, axis=-1)[..., :count]


def full_int64(seeds: np.ndarray, count: int) -> np.ndarray:
  """stateless_uniform([count], seed, minval=None, maxval=None, dtype=int64) for each seed."""
  w = words(seeds, 2 * count).astype(np.uint64)
  return (w[..., 0::2] | (w[..., 1::2] << np.uint64(32))).view(np.int64)


def unit_float(w: np.ndarray) -> np.ndarray:
  """uint32 words -> float32 in [0, 1): 23 random mantissa bits."""
  return ((w & np.uint32(0x7F_FFFF)) | np.uint32(0x3F80_0000)).view(np.float32) - np.float32(1)


def _libm():
  lib = ctypes.CDLL(ctypes.util.find_library("m"))
  out = {}
  for name in ("logf", "sinf", "cosf"):
    f = getattr(lib, name)
    f.restype, f.argtypes = ctypes.c_float, [ctypes.c_float]
    out[name] = np.frompyfunc(f, 1, 1)
  return out


_C_MATH = _libm()


def _c_math(name: str, x: np.ndarray) -> np.ndarray:
  return _C_MATH[name](x).astype(np.float32) if x.size else x


def normal3(seeds: np.ndarray) -> np.ndarray:
  """stateless_normal([3], seed, float32) for each seed (..., 2) -> (..., 3)."""
  u = unit_float(words(seeds, 4))
  u1 = np.maximum(u[..., 0::2], np.float32(1e-7))  # never log(0)
  v1 = (2 * np.pi * u[..., 1::2].astype(np.float64)).astype(np.float32)  # 2 * M_PI in double
  radius = np.sqrt(np.float32(-2) * _c_math("logf", u1))
  pairs = np.stack([_c_math("sinf", v1) * radius, _c_math("cosf", v1) * radius], axis=-1)
  return pairs.reshape(u.shape)[..., :3]


def example_keys(seed: int, epoch: int, example_ids: np.ndarray) -> np.ndarray:
  """(n, 3, 2) int64: each example's crop, flip and lighting keys in `epoch`."""
  ids = np.asarray(example_ids, np.int64)
  epoch_word = full_int64(np.array([seed, epoch], np.int64), 1)[0]
  keys = np.stack([np.full_like(ids, epoch_word), ids], axis=-1)
  return full_int64(keys, 6).reshape(len(ids), 3, 2)


class Draws:
  """The random choices of a batch of training examples in one epoch: what the tf.data train
  pipeline draws for each of them. Each part is computed when first read, so a reader of the
  crop positions alone (the file pipeline, ahead of decoding) never draws the lighting, and a
  reader of the lighting alone never draws the crops."""

  def __init__(self, example_ids: np.ndarray, *, seed: int, epoch: int, size: int, crop: int,
               random_crop: bool, flip: bool, pca_lighting: float, eigval, eigvec):
    """Crops of `crop` px from S x S squares (S = size)."""
    self._ids, self._seed, self._epoch = np.asarray(example_ids), seed, epoch
    self._size, self._crop, self._random_crop, self._flip = size, crop, random_crop, flip
    self._sigma, self._eigval, self._eigvec = pca_lighting, eigval, eigvec

  @functools.cached_property
  def _keys(self) -> np.ndarray:
    return example_keys(self._seed, self._epoch, self._ids)

  @functools.cached_property
  def _position(self) -> tuple[np.ndarray, np.ndarray]:
    if not self._random_crop:  # central_crop's position (rounded down)
      centre = np.full(len(self._ids), (self._size - self._crop) // 2, np.int32)
      return centre, centre
    span = self._size - self._crop + 1
    position = words(self._keys[:, 0], 1)[:, 0] % np.uint32(span * span)
    return (position // span).astype(np.int32), (position % span).astype(np.int32)

  @property
  def top(self) -> np.ndarray:
    """int32 (n,): the crop's row in the S x S square."""
    return self._position[0]

  @property
  def left(self) -> np.ndarray:
    """int32 (n,): the crop's column."""
    return self._position[1]

  @functools.cached_property
  def flip(self) -> np.ndarray:
    """bool (n,): mirror left-right."""
    if not self._flip:
      return np.zeros(len(self._ids), bool)
    return unit_float(words(self._keys[:, 1], 1)[:, 0]) < np.float32(0.5)

  @functools.cached_property
  def rgb_shift(self) -> np.ndarray:
    """float32 (n, 3): the PCA lighting offset (in [0, 1] pixel units)."""
    if self._sigma <= 0:
      return np.zeros((len(self._ids), 3), np.float32)
    # alpha_i * lambda_i = normal_i * (sigma * lambda_i): the product in this order, as the
    # tf.data pipeline computed it (its graph optimiser folds the two constants first).
    scale = np.float32(self._sigma) * np.asarray(self._eigval, np.float32)
    normals = normal3(self._keys[:, 2])
    return lighting_shift(normals * scale, np.asarray(self._eigvec, np.float32))


def config_draws(cfg, epoch: int, example_ids: np.ndarray, size: int) -> Draws:
  """`Draws` with the choices of `cfg.data` (crops from `size` px squares)."""
  data = cfg.data
  return Draws(example_ids, seed=cfg.seed, epoch=epoch, size=size, crop=data.crop_size,
               random_crop=data.random_crop, flip=data.flip, pca_lighting=data.pca_lighting,
               eigval=configlib.PCA_EIGVAL, eigvec=configlib.PCA_EIGVEC)


def lighting_shift(scaled: np.ndarray, eigvec: np.ndarray) -> np.ndarray:
  """(n, 3) float32 eigvec @ scaled[i] for each row, summed in tf.linalg.matvec's order."""
  terms = eigvec[None, :, :] * scaled[:, None, :]
  return (terms[..., 0] + terms[..., 1]) + terms[..., 2]
