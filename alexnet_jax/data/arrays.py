"""Datasets held in memory as arrays (digits, Fashion-MNIST, MNIST): squares and evaluation in numpy.

These images are small, so each split's squares (the central square resized to resize_size) are
made once, in numpy, when the split is first asked for. Training and evaluation are plain numpy
passes over them, so that training on these datasets, `evaluate` of a parameter file and the
evaluations during training never import TensorFlow. The training batches are the tf.data
pipeline's, bit for bit: the same order (`order`), and each example's crop, flip and lighting
drawn by `draws` exactly as TensorFlow's stateless ops draw them (tests/test_data_draws.py).
As from every source, the crops come unmirrored with each one's flip; the train step mirrors.

The resize is the one the tf.data pipeline applies to files (alexnet_jax.data.ops.resize_square:
bilinear, antialiased when shrinking, as PIL does, rounded to uint8), written as two small
matrices; it equals TensorFlow's up to float rounding (tests/test_data_arrays.py).
"""

from __future__ import annotations

import itertools
from typing import Iterator

import numpy as np

from alexnet_jax.data import draws, order
from alexnet_jax.data.info import VIEWS, DataError


def resize_weights(length: int, size: int) -> np.ndarray:
  """(size, length) float32 matrix of a bilinear (triangle) resize of `length` pixels to `size`.

  Pixel centres map as in TensorFlow's and PIL's resize (half-pixel centres); when shrinking the
  triangle is widened by length/size (antialiasing); weights falling outside the image are
  dropped and each row renormalised.
  """
  scale = length / size
  support = max(scale, 1.0)  # the triangle's half-width in input pixels
  centres = (np.arange(size) + 0.5) * scale  # in input coordinates, pixel i covers [i, i+1)
  inputs = np.arange(length) + 0.5
  weights = np.maximum(0.0, 1.0 - np.abs(inputs[None, :] - centres[:, None]) / support)
  return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def center_squares(images: np.ndarray) -> np.ndarray:
  """The largest centred square of each (N, H, W, C) image (offsets rounded down)."""
  _, height, width, _ = images.shape
  side = min(height, width)
  top, left = (height - side) // 2, (width - side) // 2
  return images[:, top:top + side, left:left + side]


def resize_squares(images: np.ndarray, size: int, chunk: int = 4096) -> np.ndarray:
  """uint8 (N, H, W, C) -> each image's central square resized to (size, size), uint8."""
  squares = center_squares(images)
  side = squares.shape[1]
  if side == size:
    return np.ascontiguousarray(squares)
  weights = resize_weights(side, size)
  out = np.empty((len(squares), size, size, squares.shape[-1]), np.uint8)
  for start in range(0, len(squares), chunk):
    part = squares[start:start + chunk].astype(np.float32)
    n, _, _, c = part.shape
    rows = weights @ part.reshape(n, side, side * c)  # (n, size, side * c)
    rows = rows.reshape(n, size, side, c).transpose(0, 2, 1, 3).reshape(n, side, size * c)
    resized = (weights @ rows).reshape(n, size, size, c).transpose(0, 2, 1, 3)
    out[start:start + chunk] = np.clip(np.round(resized), 0, 255).astype(np.uint8)
  return out


def central_crop(images: np.ndarray, size: int) -> np.ndarray:
  """The size x size crop at the centre of each (N, S, S, C) image (as ops.central_crop)."""
  _, height, width, _ = images.shape
  top, left = (height - size) // 2, (width - size) // 2
  return images[:, top:top + size, left:left + size]


def ten_crop(images: np.ndarray, size: int) -> np.ndarray:
  """(N, 10, size, size, C): the paper's 10 views in ops.ten_crop's order (centre, top-left,
  top-right, bottom-left, bottom-right, then their mirrors)."""
  _, height, width, _ = images.shape
  bottom, right = height - size, width - size
  corners = [(bottom // 2, right // 2), (0, 0), (0, right), (bottom, 0), (bottom, right)]
  crops = [images[:, t:t + size, l:l + size] for t, l in corners]
  return np.stack(crops + [c[:, :, ::-1] for c in crops], axis=1)


def crops(squares: np.ndarray, indices: np.ndarray, top: np.ndarray, left: np.ndarray,
          size: int) -> np.ndarray:
  """(n, size, size, C): the size x size window at (top[i], left[i]) of square indices[i]."""
  steps = np.arange(size)
  rows = (top[:, None] + steps)[:, :, None]
  cols = (left[:, None] + steps)[:, None, :]
  return squares[indices[:, None, None], rows, cols]


def mirrored(images: np.ndarray, flip: np.ndarray) -> np.ndarray:
  """(n, h, w, C) images mirrored left to right where flip[i]: what the train step does on the
  device with a batch's "flip" (alexnet_jax.preprocess.normalize), in numpy, for pictures and
  tests of the training views."""
  out = np.array(images)
  out[flip] = out[flip, :, ::-1]
  return out


def views(squares: np.ndarray, indices: np.ndarray, d: draws.Draws, size: int) -> np.ndarray:
  """The training views of squares[indices] as the network sees them: each one's crop at its
  drawn position, mirrored where drawn."""
  return mirrored(crops(squares, indices, d.top, d.left, size), d.flip)


def train_iterator(cfg, squares: np.ndarray, labels: np.ndarray, *, start_step: int,
                   steps_per_epoch: int, shard_index: int,
                   shard_count: int) -> Iterator[dict[str, np.ndarray]]:
  """Endless training batches, the ones pipeline.train_iterator makes from the same squares:
  the k-th is global step start_step + k, block `shard_index` of `shard_count`."""
  local = order.local_batch_size(cfg.batch_size, shard_count)
  if min(squares.shape[1:3]) < cfg.data.crop_size:
    raise DataError(f"crop_size {cfg.data.crop_size} is larger than the {squares.shape[1]} px "
                    "squares; set data.crop_size <= data.resize_size")
  first_epoch, first_batch = divmod(start_step, steps_per_epoch)
  for epoch in itertools.count(first_epoch):
    indices = order.train_indices(
        seed=cfg.seed, epoch=epoch, num_examples=len(labels), global_batch=cfg.batch_size,
        shard_index=shard_index, shard_count=shard_count,
        first_batch=first_batch if epoch == first_epoch else 0)
    for batch in indices.reshape(-1, local):
      d = draws.config_draws(cfg, epoch, batch, squares.shape[1])
      yield {"image": crops(squares, batch, d.top, d.left, cfg.data.crop_size),
             "label": labels[batch], "mask": np.ones(local, bool), "flip": d.flip,
             "rgb_shift": d.rgb_shift}


def eval_iterator(squares: np.ndarray, labels: np.ndarray, *, crop_size: int, views: str,
                  global_batch: int, shard_index: int,
                  shard_count: int) -> Iterator[dict[str, np.ndarray]]:
  """One evaluation pass, the batches pipeline.eval_batches makes from the same squares:
  global batch g holds examples [g*B, (g+1)*B), a reader takes block shard_index of it, and the
  rows past the end are zero images with mask False."""
  if views not in VIEWS:
    raise DataError(f"views={views!r}: use one of {', '.join(VIEWS)}")
  if min(squares.shape[1:3]) < crop_size:
    raise DataError(f"crop_size {crop_size} is larger than the {squares.shape[1]} px squares; "
                    "set data.crop_size <= data.resize_size")
  num_examples = len(labels)
  crop = central_crop if views == "center" else ten_crop
  for positions in order.eval_positions(num_examples=num_examples, global_batch=global_batch,
                                        shard_index=shard_index, shard_count=shard_count):
    mask = positions < num_examples
    known = np.minimum(positions, num_examples - 1)
    images = np.array(crop(squares[known], crop_size))  # a copy: padding rows are zeroed
    images[~mask] = 0
    yield {"image": images, "label": np.where(mask, labels[known], 0).astype(np.int32),
           "mask": mask}


class InMemorySource:
  """A source whose splits are arrays: subclasses give `_arrays(split) -> (images, labels)`."""

  def _arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
    raise NotImplementedError

  def squares(self, split: str, resize_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(squares uint8 (N, R, R, 3), labels int32 (N,)), made once per (split, size)."""
    cache = self.__dict__.setdefault("_squares", {})
    if (split, resize_size) not in cache:
      images, labels = self._arrays(split)
      cache[split, resize_size] = resize_squares(images, resize_size), labels
    return cache[split, resize_size]

  def split(self, name: str, options):
    """The split as a tf.data pipeline reads it (its squares already made): for the tests that
    hold the numpy passes above to the tf.data pipeline's."""
    from alexnet_jax.data import splits  # TensorFlow from here on

    cache = self.__dict__.setdefault("_splits", {})
    if (name, options) not in cache:
      cache[name, options] = splits.ArraySplit(*self.squares(name, options.resize_size), options)
    return cache[name, options]
