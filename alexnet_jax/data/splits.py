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


PLACEMENT_BLOCK = 1024  # training examples whose crop positions are drawn together (numpy)


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

  def __init__(self, paths: list[str], labels: np.ndarray, options: SplitOptions,
               shapes: np.ndarray | None = None):
    self.paths = np.asarray(paths, dtype=object)
    self.labels = np.asarray(labels, np.int32)
    self.options = options
    self.num_examples = len(self.paths)
    # int (N, 2): each file's (height, width) if it is a JPEG whose header gives them, else
    # (0, 0); None if not known.
    self.shapes = None if shapes is None else np.asarray(shapes, np.int64).reshape(-1, 2)

  def squares(self, indices):
    size = self.options.resize_size
    return self._decoded(indices, size, lambda image_bytes, example_id: ops.resize_square(
        ops.decode_center_square(image_bytes), size))

  def train_crops(self, indices: np.ndarray, *, size: int, crop: int, placement,
                  rows: int) -> Iterator[np.ndarray]:
    """Batches of exactly `rows` training crops (uint8 (rows, crop, crop, 3), unmirrored), of
    indices[0:rows], indices[rows:2 * rows], ...: the crop of each example's S x S square
    (S = size) at the position placement(positions) -> (top, left) gives for indices[positions]
    (ascending positions).

    The positions are drawn in numpy ahead of the decoding, a block of examples at a time, so
    each image costs only its read and decode ("crop before you resize",
    ops.decode_square_crop: just the crop's window is decoded and resampled). When every file
    is a JPEG whose shorter side is S already (pre-resized data, `launch.py prepare`; sizes from
    the folder's header check), the window of each file is worked out here too and the decoder
    is the whole per-image work: no branch per image.

    A file that passes the header check yet fails to decode fails its batch; the batch's files
    are then decoded one at a time, and each that fails becomes a black image in its place
    (logged by name), so later examples keep their positions: batches depend neither on where a
    run was resumed nor on the process count.
    """
    paths = tf.constant(self.paths[indices].astype(str))
    prepared = self.shapes is not None and bool(np.all(self.shapes.min(axis=1) == size))

    def placements(positions):
      top, left = (np.asarray(v, np.int32) for v in placement(positions))
      if not prepared:
        return positions, top, left
      height, width = self.shapes[indices[positions]].T
      return (positions, *prepared_windows(height, width, top, left, size, crop))

    def view(position, *where):
      image_bytes = tf.io.read_file(paths[position])
      if prepared:
        window, offset = where
        image = tf.slice(tf.io.decode_and_crop_jpeg(image_bytes, window, channels=3),
                         tf.concat([offset, [0]], 0), [crop, crop, 3])
      else:
        image = ops.decode_square_crop(image_bytes, size, crop, *where)
      return position, image

    def placed(block):
      def draw(block):
        first = int(block) * PLACEMENT_BLOCK
        return placements(np.arange(first, min(first + PLACEMENT_BLOCK, len(indices))))

      out = tf.numpy_function(draw, [block], (tf.int64, tf.int32, tf.int32), stateful=False)
      shapes = ([None], [None, 4], [None, 2]) if prepared else ([None], [None], [None])
      for tensor, shape in zip(out, shapes):
        tensor.set_shape(shape)
      return tuple(out)

    def one_at_a_time(positions):
      """(positions, crops) of those of `positions` that decode, each decoded alone."""
      where = placements(positions)[1:]
      ds = tf.data.Dataset.from_tensor_slices((positions, *where)).map(view).ignore_errors()
      found = list(ds.as_numpy_iterator())
      return (np.array([p for p, _ in found], np.int64),
              np.array([v for _, v in found], np.uint8).reshape(-1, crop, crop, 3))

    blocks = -(-len(indices) // PLACEMENT_BLOCK)
    ds = tf.data.Dataset.range(blocks).map(placed).unbatch()
    ds = ds.map(view, num_parallel_calls=self.options.parallel, deterministic=True)
    # Errors are caught per batch, not per image: ignore_errors() on every image adds a dataset
    # step per image, for files that pass the header check and still fail, which are rare.
    batches = ds.batch(rows).ignore_errors().prefetch(AUTOTUNE).as_numpy_iterator()
    yield from self._fill_gaps(batches, indices, rows, crop, one_at_a_time)

  def _fill_gaps(self, batches, indices: np.ndarray, rows: int, crop: int,
                 one_at_a_time) -> Iterator[np.ndarray]:
    """Batches of exactly `rows` crops, positions [k * rows, (k + 1) * rows) of `indices`, from
    `batches` of (positions, crops) with some positions missing (a failed batch)."""
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
        else:  # only after a failed batch: batches no longer line up with `rows`
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
        recovered, views = one_at_a_time(missing)
        out[recovered - start] = views
        failed = np.setdiff1d(missing, recovered)
        if len(failed):
          logger.warning("could not decode %s although the header check passed; using black "
                         "images", ", ".join(self.paths[indices[failed]]))
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


def prepared_windows(height, width, top, left, size: int, crop: int):
  """For JPEGs whose central square is size x size already: (window (n, 4) int32, offset (n, 2)
  int32) such that decode_and_crop_jpeg(bytes, window)[offset:offset + crop] is the crop at
  (top, left) of the square, pixel for pixel (ops.decode_square_crop's `exact` branch, in numpy).
  """
  row0, col0, row1, col1 = ops.margin_window(top, left, crop, size, np)
  square_top, square_left = (height - size) // 2, (width - size) // 2
  window = np.stack([square_top + row0, square_left + col0, row1 - row0, col1 - col0], axis=1)
  offset = np.stack([top - row0, left - col0], axis=1)
  return window.astype(np.int32), offset.astype(np.int32)


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
