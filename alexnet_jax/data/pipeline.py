"""The train and eval pipelines: tf.data streams of per-process numpy batches.

A split yields `(example_id, square, label)`; here the squares become network inputs:
  train: crop (random or central), flip flag, PCA lighting offset, keyed by (seed, epoch, id);
  eval:  the central crop, or the paper's 10 views; padded at the end with mask False.
Images stay uint8 so host-to-device traffic stays small; mirroring, normalisation and the lighting
offset are applied on the device (alexnet_jax.preprocess.normalize).
"""

from __future__ import annotations

import itertools
from typing import Iterator

import numpy as np

from alexnet_jax import configlib
from alexnet_jax.data import arrays, draws, ops, order
from alexnet_jax.data._tf import AUTOTUNE, tf
from alexnet_jax.data.info import VIEWS, DataError
from alexnet_jax.data.splits import PLACEMENT_BLOCK, ArraySplit, FileSplit, SplitOptions



def split_options(cfg) -> SplitOptions:
  data = cfg.data
  return SplitOptions(resize_size=data.resize_size, num_parallel_calls=data.num_parallel_calls,
                      cache=data.cache, shuffle_buffer=data.shuffle_buffer)


# --- train ------------------------------------------------------------------------------------


def _example_keys(seed, epoch, example_id):
  """The (crop, flip, lighting) keys of one example in one epoch."""
  return ops.split_key(ops.example_key(seed, epoch, example_id), 3)


def _crop_position(cfg, crop_key):
  """(top, left) of a training crop in the S x S square: random from its key, or central."""
  size, crop = cfg.data.resize_size, cfg.data.crop_size
  if not cfg.data.random_crop:
    return tf.constant((size - crop) // 2), tf.constant((size - crop) // 2)  # central_crop's
  return ops.random_crop_offsets(crop_key, size, size, crop)


def make_train_example(cfg, epoch: int):
  """The per-example train transform for `epoch` (a tf.data map function), for streams whose
  example ids are known only as they come (tensorflow-datasets): the draws that
  alexnet_jax.data.draws makes in numpy for the other sources, with TensorFlow's ops."""
  seed, crop, sigma = cfg.seed, cfg.data.crop_size, cfg.data.pca_lighting
  flip = cfg.data.flip

  def train_example(example_id, square, label):
    crop_key, flip_key, lighting_key = _example_keys(seed, epoch, example_id)  # once per example
    with tf.control_dependencies(ops._assert_fits(square, crop)):
      top, left = _crop_position(cfg, crop_key)
      image = ops._crop(square, top, left, crop)
    mirror = ops.random_flip_flag(flip_key) if flip else tf.constant(False)
    if sigma > 0:
      alphas = ops.pca_lighting_alphas(lighting_key, sigma)
      rgb_shift = ops.pca_lighting_shift(alphas, configlib.PCA_EIGVAL, configlib.PCA_EIGVEC)
    else:
      rgb_shift = tf.zeros([3], tf.float32)
    return {"image": image, "label": label, "mask": tf.constant(True), "flip": mirror,
            "rgb_shift": rgb_shift}

  return train_example


def train_batches(cfg, split, *, epoch: int, first_batch: int, shard_index: int,
                  shard_count: int) -> Iterator[dict[str, np.ndarray]]:
  """This process's batches of `epoch`, from in-epoch batch `first_batch` to the epoch's end."""
  local = order.local_batch_size(cfg.batch_size, shard_count)
  order_args = dict(seed=cfg.seed, epoch=epoch, first_batch=first_batch,
                    global_batch=cfg.batch_size, shard_index=shard_index, shard_count=shard_count)
  if isinstance(split, FileSplit):
    yield from _file_batches(cfg, split, epoch, local, order.train_indices(
        num_examples=split.num_examples, **order_args))
    return
  ds = split.train_examples(**order_args)
  ds = ds.map(make_train_example(cfg, epoch), num_parallel_calls=split.options.parallel,
              deterministic=True)
  yield from ds.batch(local, drop_remainder=True).prefetch(AUTOTUNE).as_numpy_iterator()


def _file_batches(cfg, split: FileSplit, epoch: int, local: int,
                  indices: np.ndarray) -> Iterator[dict[str, np.ndarray]]:
  """Training batches of image files: each example's draws in numpy (crop position ahead of
  decoding, flip and lighting offset with the batch), the crops decoded by tf.data."""
  size, crop = cfg.data.resize_size, cfg.data.crop_size
  block_draws = BlockDraws(cfg, epoch, indices, size)

  def placement(positions):
    return block_draws.field("top", positions), block_draws.field("left", positions)

  labels = split.labels[indices]
  for start, images in zip(range(0, len(indices), local), split.train_crops(
      indices, size=size, crop=crop, placement=placement, rows=local)):
    positions = np.arange(start, start + local)
    yield {"image": images, "label": labels[start:start + local], "mask": np.ones(local, bool),
           "flip": block_draws.field("flip", positions),
           "rgb_shift": block_draws.field("rgb_shift", positions)}
    block_draws.forget_before(start + local)


class BlockDraws:
  """The draws (alexnet_jax.data.draws) of indices[positions], made for a block of
  PLACEMENT_BLOCK positions at a time, once: the crop positions, read by tf.data ahead of the
  decoding, and the flips and lighting offsets, read with each batch, come from the same numbers
  (numpy's per-call overhead is shared by a thousand examples instead of a batch)."""

  def __init__(self, cfg, epoch: int, indices: np.ndarray, size: int):
    self._args, self._indices = (cfg, epoch), indices
    self._size = size
    self._blocks: dict[int, draws.Draws] = {}

  def _block(self, k: int) -> draws.Draws:
    d = self._blocks.get(k)  # tf.data's thread and the consumer ask: a race computes it twice
    if d is None:
      ids = self._indices[k * PLACEMENT_BLOCK:(k + 1) * PLACEMENT_BLOCK]
      d = self._blocks[k] = draws.config_draws(*self._args, ids, self._size)
    return d

  def field(self, name: str, positions: np.ndarray) -> np.ndarray:
    """Draws.<name> of the examples at ascending `positions` of the indices."""
    blocks = positions // PLACEMENT_BLOCK
    return np.concatenate([
        getattr(self._block(k), name)[positions[blocks == k] - k * PLACEMENT_BLOCK]
        for k in np.unique(blocks)])

  def forget_before(self, position: int) -> None:
    # list(): one call, while tf.data's thread may be adding a block.
    for k in [k for k in list(self._blocks) if (k + 1) * PLACEMENT_BLOCK <= position]:
      self._blocks.pop(k, None)


def train_iterator(cfg, split, *, start_step: int, steps_per_epoch: int, shard_index: int,
                   shard_count: int) -> Iterator[dict[str, np.ndarray]]:
  """Endless batches; the k-th is global step start_step + k, of epoch step // steps_per_epoch."""
  if isinstance(split, ArraySplit):  # a cached split: numpy, as the in-memory datasets
    yield from arrays.train_iterator(cfg, split.array, split.labels, start_step=start_step,
                                     steps_per_epoch=steps_per_epoch, shard_index=shard_index,
                                     shard_count=shard_count)
    return
  first_epoch, first_batch = divmod(start_step, steps_per_epoch)
  for epoch in itertools.count(first_epoch):
    # A fresh pipeline per epoch: its order and augmentation are functions of (seed, epoch).
    yield from train_batches(cfg, split, epoch=epoch,
                             first_batch=first_batch if epoch == first_epoch else 0,
                             shard_index=shard_index, shard_count=shard_count)


# --- eval -------------------------------------------------------------------------------------


def make_eval_example(crop_size: int, views: str):
  if views not in VIEWS:
    raise DataError(f"views={views!r}: use one of {', '.join(VIEWS)}")

  def eval_example(example_id, square, label):
    del example_id  # evaluation is deterministic
    if views == "center":
      image = ops.central_crop(square, crop_size)
    else:
      image = ops.ten_crop(square, crop_size)
    return {"image": image, "label": label, "mask": tf.constant(True)}

  return eval_example


def eval_batches(cfg, split, *, views: str, global_batch: int, shard_index: int,
                 shard_count: int) -> tf.data.Dataset:
  """One pass over this process's examples, padded to `num_eval_batches` full batches."""
  local = order.local_batch_size(global_batch, shard_count)
  num_batches = order.num_eval_batches(split.num_examples, global_batch)
  ds = split.eval_examples(global_batch=global_batch, shard_index=shard_index,
                           shard_count=shard_count)
  ds = ds.map(make_eval_example(cfg.data.crop_size, views),
              num_parallel_calls=split.options.parallel, deterministic=True)
  # Padding examples (mask False) after the real ones, cut at the same count on every process:
  # multi-process evaluation needs every process to run the same number of steps.
  padding = tf.data.Dataset.from_tensors(
      {k: tf.zeros(spec.shape, spec.dtype) for k, spec in ds.element_spec.items()}).repeat()
  ds = ds.concatenate(padding).take(num_batches * local)
  return ds.batch(local, drop_remainder=True).prefetch(AUTOTUNE)
