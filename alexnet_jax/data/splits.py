"""Splits with random access: arrays in memory and lists of image files.

A split turns a list of example indices into a tf.data stream of `(example_id, square, label)`:
`square` is the example's central square resized to `resize_size` (uint8), `example_id` the
index that keys its augmentation. The pipeline asks for the indices from `order`, so every
process reads its slice of the same global permutation.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Iterator

import numpy as np

from alexnet_jax.data import ops, order
from alexnet_jax.data._tf import AUTOTUNE, tf
from alexnet_jax.data.info import logger


PLACEMENT_BLOCK = 1024  # training examples whose crops and flips are drawn together (numpy)


@dataclasses.dataclass(frozen=True)
class SplitOptions:
  """The config fields that shape how a split reads its examples."""
  resize_size: int
  num_parallel_calls: int  # -1 = AUTOTUNE
  cache: bool = False
  shuffle_buffer: int = 16_384

  @property
  def parallel(self) -> int:
    return AUTOTUNE if self.num_parallel_calls < 0 else self.num_parallel_calls


class RandomAccessSplit:
  """A split whose examples can be read in any order: one global permutation per epoch."""

  num_examples: int
  labels: np.ndarray  # int32 (num_examples,)
  options: SplitOptions

  def squares(self, indices: np.ndarray) -> tf.data.Dataset:
    """(example_id int64, square uint8 (R, R, 3), label int32) for `indices`, in that order."""
    raise NotImplementedError

  def train_examples(self, *, seed, epoch, first_batch, global_batch, shard_index,
                     shard_count) -> tf.data.Dataset:
    return self.squares(order.train_indices(
        seed=seed, epoch=epoch, num_examples=self.num_examples, global_batch=global_batch,
        shard_index=shard_index, shard_count=shard_count, first_batch=first_batch))

  def eval_examples(self, *, global_batch, shard_index, shard_count) -> tf.data.Dataset:
    return self.squares(order.eval_indices(
        num_examples=self.num_examples, global_batch=global_batch,
        shard_index=shard_index, shard_count=shard_count))


class ArraySplit(RandomAccessSplit):
  """Images held in memory as one uint8 (N, H, W, 3) array (digits, or a cached split)."""

  def __init__(self, images: np.ndarray, labels: np.ndarray, options: SplitOptions):
    self.labels = np.asarray(labels, np.int32)
    self.options = options
    self.num_examples = len(self.labels)
    self.array = images  # training reads it in numpy (alexnet_jax.data.arrays)
    # A variable, not a constant captured by the map function: tf.data serialises captured
    # constants each time a pipeline is built (slow for a large cache, and capped at 2 GB).
    self.images = tf.Variable(images, trainable=False)

  def squares(self, indices):
    size = self.options.resize_size
    _, height, width, _ = self.images.shape
    needs_resize = (height, width) != (size, size)

    def load(example_id, label):
      image = tf.gather(self.images, example_id)
      if needs_resize:
        image = ops.resize_square(ops.center_square(image), size)
      return example_id, image, label

    ds = tf.data.Dataset.from_tensor_slices((indices.astype(np.int64), self.labels[indices]))
    return ds.map(load, num_parallel_calls=self.options.parallel, deterministic=True)


class FileSplit(RandomAccessSplit):
  """Image files on disk (JPEG, PNG, GIF, BMP), decoded in parallel on the fly."""

  def __init__(self, paths: list[str], labels: np.ndarray, options: SplitOptions):
    self.paths = np.asarray(paths, dtype=object)
    self.labels = np.asarray(labels, np.int32)
    self.options = options
    self.num_examples = len(self.paths)

  def squares(self, indices):
    size = self.options.resize_size
    return self._decoded(indices, size, lambda image_bytes, example_id: ops.resize_square(
        ops.decode_center_square(image_bytes), size))

  def train_views(self, indices: np.ndarray, *, size: int, crop: int,
                  placement) -> tf.data.Dataset:
    """Training views of `indices`, in order: (position int64, view uint8 (crop, crop, 3)),
    position p being indices[p]; a file that passes the header check yet fails to decode is
    left out (`fill_gaps` puts a black image in its place).

    placement(example_ids) -> (top, left, flip) numpy arrays, each example's crop position in
    its S x S square (S = size) and mirroring: drawn in numpy ahead of the decoding, a block of
    examples at a time, so each image costs only its own read, decode ("crop before you
    resize", ops.decode_square_crop: just the crop's window is decoded and resampled) and flip.
    """
    count = len(indices)
    paths = tf.constant(self.paths[indices].astype(str))

    def placements(block):
      first = int(block) * PLACEMENT_BLOCK
      ids = indices[first:first + PLACEMENT_BLOCK]
      top, left, flip = placement(ids)
      return (np.arange(first, first + len(ids), dtype=np.int64), np.asarray(top, np.int32),
              np.asarray(left, np.int32), np.asarray(flip, bool))

    def placed(block):
      out = tf.numpy_function(placements, [block], (tf.int64, tf.int32, tf.int32, tf.bool),
                              stateful=False)
      for tensor in out:
        tensor.set_shape([None])
      return tuple(out)

    def view(position, top, left, flip):
      image = ops.decode_square_crop(tf.io.read_file(paths[position]), size, crop, top, left)
      return position, tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)

    blocks = -(-count // PLACEMENT_BLOCK)
    ds = tf.data.Dataset.range(blocks).map(placed).unbatch()
    return ds.map(view, num_parallel_calls=self.options.parallel, deterministic=True
                  ).ignore_errors()

  def fill_gaps(self, batches, indices: np.ndarray, rows: int,
                crop: int) -> Iterator[np.ndarray]:
    """Batches of exactly `rows` views, positions [k * rows, (k + 1) * rows) of `indices`, from
    `batches` of (positions, views) that `train_views` made: a view missing because its file
    failed to decode becomes a black image in its place (logged by name), so that later
    examples keep their positions (batches depend neither on where a run was resumed nor on
    the process count)."""
    held_positions = np.empty(0, np.int64)
    held_views = np.empty((0, crop, crop, 3), np.uint8)
    exhausted = False
    for start in range(0, len(indices) - rows + 1, rows):
      end = start + rows
      while not exhausted and (not len(held_positions) or held_positions[-1] < end - 1):
        try:
          positions, views = next(batches)
        except StopIteration:
          exhausted = True
          break
        if not len(held_positions):
          held_positions, held_views = positions, views
        else:  # only after a failed decode: batches no longer line up with `rows`
          held_positions = np.concatenate([held_positions, positions])
          held_views = np.concatenate([held_views, views])
      mine = held_positions < end
      found = held_positions[mine]
      if len(found) == rows:  # every view of the batch (all that is held, usually: no copy)
        out = held_views if len(found) == len(held_positions) else held_views[mine]
      else:
        out = np.zeros((rows, crop, crop, 3), np.uint8)
        out[found - start] = held_views[mine]
        missing = np.setdiff1d(np.arange(start, end), found)
        logger.warning("could not decode %s although the header check passed; using black "
                       "images", ", ".join(self.paths[indices[missing]]))
      held_positions, held_views = held_positions[~mine], held_views[~mine]
      yield out

  def _decoded(self, indices, size: int, view):
    """(example_id, view(image_bytes, example_id) uint8 (size, size, 3), label) for `indices`."""
    count = len(indices)
    example_ids = tf.constant(indices.astype(np.int64))
    paths = tf.constant(self.paths[indices].astype(str))
    labels = tf.constant(self.labels[indices])
    # Positions are dealt round-robin to `shards` streams (stream k: k, k + S, k + 2S, ...)
    # that read, decode and fill gaps each on its own thread; interleaving them one element at
    # a time restores the order exactly, whatever S is. With one stream, every image would go
    # through the sequential gap-filling step (scan) on a single thread.
    shards = max(1, min(count, self.options.num_parallel_calls
                        if self.options.num_parallel_calls > 0 else _default_shards()))

    def shard(k):
      length = (count - k + shards - 1) // shards  # positions k + shards * j, j < length

      def load(j):
        position = k + shards * j
        return j, view(tf.io.read_file(paths[position]), example_ids[position])

      # Files failing the header check never get here. One that passes it and still fails to
      # decode is dropped by ignore_errors(); fill_gaps puts a black square (logged by name) in
      # its place, so later examples keep their positions: batches must depend neither on where
      # a run was resumed nor on the process count.
      def fill_gaps(expected, element):
        j, square = element
        positions = k + shards * tf.range(expected, j + 1)

        def with_blacks():
          logged = tf.py_function(_log_undecodable, [tf.gather(paths, positions[:-1])],
                                  tf.bool)
          with tf.control_dependencies([logged]):
            blacks = tf.zeros(tf.stack([j - expected, size, size, 3]), tf.uint8)
            return tf.concat([blacks, square[None]], axis=0)

        squares = tf.cond(j > expected, with_blacks, lambda: square[None])
        known = tf.minimum(positions, count - 1)  # the sentinel's position is past the end
        return j + 1, (tf.gather(example_ids, known), squares, tf.gather(labels, known))

      ds = tf.data.Dataset.range(length).map(load).ignore_errors()
      # A sentinel one past the end lets fill_gaps fill a gap at the end too; take() drops it.
      sentinel = (length, tf.zeros([size, size, 3], tf.uint8))
      ds = ds.concatenate(tf.data.Dataset.from_tensors(sentinel))
      ds = ds.scan(tf.constant(0, tf.int64), fill_gaps).unbatch().take(length)
      return ds.prefetch(8)  # each stream runs ahead of the round-robin

    if shards == 1:
      return shard(tf.constant(0, tf.int64))
    return tf.data.Dataset.range(shards).interleave(
        shard, cycle_length=shards, block_length=1, num_parallel_calls=shards,
        deterministic=True)


def _default_shards() -> int:
  """Decoding streams for AUTOTUNE: one per core this process may use, at most 32."""
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:
    cores = os.cpu_count() or 1
  return max(1, min(32, cores))


def _log_undecodable(paths) -> bool:
  names = ", ".join(p.decode() for p in paths.numpy())
  logger.warning("could not decode %s although the header check passed; using black images", names)
  return True


def materialize(split: RandomAccessSplit, description: str) -> ArraySplit:
  """Decode and resize a whole split once into memory (cfg.data.cache, for small datasets)."""
  size = split.options.resize_size
  images = np.zeros((split.num_examples, size, size, 3), np.uint8)
  batches = split.squares(np.arange(split.num_examples)).batch(256).prefetch(2)
  for example_ids, squares, _ in batches.as_numpy_iterator():
    images[example_ids] = squares
  logger.info("%s: cached %d examples at %dx%d in memory (%.1f MB)", description,
              split.num_examples, size, size, images.nbytes / 2**20)
  return ArraySplit(images, split.labels, split.options)
