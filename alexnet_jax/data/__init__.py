"""The input pipeline: datasets by name, per-process numpy batches for training and evaluation.

Sources (cfg.data.name):
  digits        scikit-learn's 8x8 handwritten digits, bundled, in memory (the offline default)
  synthetic     random images and labels of the config's shape, numpy only (measuring machines)
  imagenet2012  tensorflow-datasets, prepared on first use from the ILSVRC2012 tars (manual_dir)
  folder        DIR/train/<class>/*, DIR/val/<class>/* or Tiny ImageNet (cfg.data.folder)
  fashion_mnist, mnist  the four IDX files in cfg.data.folder (default: Debian's), in memory
  other names   a prepared tensorflow-datasets image-classification dataset (cfg.data.data_dir)

Batches: every global batch is cut into `shard_count` equal blocks of consecutive rows, and a
reader takes block `shard_index` (b = global batch // shard_count rows); a process loads the block
its devices hold under the batch sharding (alexnet_jax.sharding.process_rows):
  train  image uint8 (b, crop, crop, 3): the crops, unmirrored; label int32 (b,), mask bool
         (b,) all True, flip bool (b,): mirror left to right, rgb_shift float32 (b, 3): the PCA
         lighting offset; both applied on the device by alexnet_jax.preprocess.normalize.
  eval   image uint8 (b, crop, crop, 3), or (b, 10, crop, crop, 3) for views="10crop" (view order
         in ops.ten_crop), label, mask (False on padding).

Importing this package does not import TensorFlow: the model, train step and benchmarks run
where TensorFlow is not installed. TensorFlow loads when a tf.data pipeline is first built: the
train batches of every source but synthetic, the evaluation batches of files and tfds datasets.
Evaluating synthetic data and the in-memory datasets (digits, Fashion-MNIST, MNIST:
alexnet_jax.data.arrays) never loads it.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from alexnet_jax.data import arrays, order, synthetic
from alexnet_jax.data.info import VIEWS, DataError, DatasetInfo

__all__ = ["DataError", "DatasetInfo", "dataset_info", "steps_per_epoch", "train_iterator",
           "eval_iterator", "num_eval_batches"]

_sources: dict[tuple, object] = {}  # opened once per process: folders are scanned, tfds prepared


def _open_source(cfg):
  data = cfg.data
  key = (data.name, data.data_dir, data.manual_dir, data.folder, data.train_split)
  if key not in _sources:
    if data.name == "digits":
      from alexnet_jax.data.digits import DigitsSource
      _sources[key] = DigitsSource()
    elif data.name in ("fashion_mnist", "mnist"):
      from alexnet_jax.data.idx import open_source
      _sources[key] = open_source(data.name, data.folder, data.data_dir)
    elif data.name == "folder":
      from alexnet_jax.data.folder import FolderSource
      _sources[key] = FolderSource(data.folder, data.train_split)
    else:
      from alexnet_jax.data.tfds_source import TfdsSource  # imports TensorFlow
      _sources[key] = TfdsSource(data.name, data.data_dir, data.manual_dir)
  return _sources[key]


def _shards(shard_index, shard_count) -> tuple[int, int]:
  """Default: the whole global batch (block 0 of 1). A program of several processes passes the
  block its devices hold (sharding.process_rows), which depends on the strategy's batch
  sharding, not only on the process index."""
  shard_index = 0 if shard_index is None else shard_index
  shard_count = 1 if shard_count is None else shard_count
  if not 0 <= shard_index < shard_count:
    raise DataError(f"shard_index {shard_index} is not in [0, {shard_count})")
  return shard_index, shard_count


def dataset_info(cfg) -> DatasetInfo:
  """Classes and split sizes; num_examples has the config's train and eval splits (and more)."""
  splits = (cfg.data.train_split, cfg.data.eval_split)
  if cfg.data.name == "synthetic":
    return synthetic.dataset_info(cfg, splits)
  return _open_source(cfg).dataset_info(splits)


def steps_per_epoch(cfg, info: DatasetInfo) -> int:
  """Full global batches per epoch; the remainder is dropped (a different one every epoch)."""
  steps = info.num_examples[cfg.data.train_split] // cfg.batch_size
  if steps == 0:
    raise DataError(f"split {cfg.data.train_split!r} has {info.num_examples[cfg.data.train_split]} "
                    f"examples, fewer than one batch of {cfg.batch_size}")
  return steps


def train_iterator(cfg, *, start_step: int = 0, shard_index: int | None = None,
                   shard_count: int | None = None) -> Iterator[dict[str, np.ndarray]]:
  """Endless train batches (block `shard_index` of `shard_count` of each global batch; default
  the whole batch); the k-th is global step start_step + k.

  Order and augmentation are functions of (cfg.seed, epoch, example), so a run resumed at
  `start_step` sees exactly the batches an uninterrupted run sees from that step.
  """
  shard_index, shard_count = _shards(shard_index, shard_count)
  order.local_batch_size(cfg.batch_size, shard_count)  # fail now, not at the first batch
  steps = steps_per_epoch(cfg, dataset_info(cfg))
  if cfg.data.name == "synthetic":  # numpy only: no TensorFlow
    return synthetic.train_iterator(cfg, start_step=start_step, shard_index=shard_index,
                                    shard_count=shard_count)
  source = _open_source(cfg)
  if isinstance(source, arrays.InMemorySource):  # numpy only: no TensorFlow
    squares, labels = source.squares(cfg.data.train_split, cfg.data.resize_size)
    return arrays.train_iterator(cfg, squares, labels, start_step=start_step,
                                 steps_per_epoch=steps, shard_index=shard_index,
                                 shard_count=shard_count)
  from alexnet_jax.data import pipeline

  split = source.split(cfg.data.train_split, pipeline.split_options(cfg))
  return pipeline.train_iterator(cfg, split, start_step=start_step, steps_per_epoch=steps,
                                 shard_index=shard_index, shard_count=shard_count)


def eval_iterator(cfg, split: str | None = None, *, views: str = "center",
                  batch_size: int | None = None, shard_index: int | None = None,
                  shard_count: int | None = None) -> Iterator[dict[str, np.ndarray]]:
  """One pass over `split` (default cfg.data.eval_split), num_eval_batches batches per reader.

  Over the blocks of a batch every example appears once with mask True; the last batches are padded
  with mask False so that every process yields the same number of batches.
  """
  shard_index, shard_count = _shards(shard_index, shard_count)
  global_batch = batch_size or cfg.eval_batch_size
  order.local_batch_size(global_batch, shard_count)
  if views not in VIEWS:
    raise DataError(f"views={views!r}: use one of {', '.join(VIEWS)}")
  if cfg.data.name == "synthetic":  # numpy only: no TensorFlow
    return synthetic.eval_iterator(cfg, split or cfg.data.eval_split, views=views,
                                   global_batch=global_batch, shard_index=shard_index,
                                   shard_count=shard_count)
  source = _open_source(cfg)
  if isinstance(source, arrays.InMemorySource):  # numpy only: no TensorFlow
    squares, labels = source.squares(split or cfg.data.eval_split, cfg.data.resize_size)
    return arrays.eval_iterator(squares, labels, crop_size=cfg.data.crop_size, views=views,
                                global_batch=global_batch, shard_index=shard_index,
                                shard_count=shard_count)
  from alexnet_jax.data import pipeline

  data_split = source.split(split or cfg.data.eval_split, pipeline.split_options(cfg))
  batches = pipeline.eval_batches(cfg, data_split, views=views, global_batch=global_batch,
                                  shard_index=shard_index, shard_count=shard_count)
  return batches.as_numpy_iterator()


def num_eval_batches(cfg, info: DatasetInfo, split: str | None = None, *,
                     batch_size: int | None = None, shard_count: int | None = None) -> int:
  """Batches each reader's eval_iterator yields (the same for every block)."""
  split = split or cfg.data.eval_split
  if split not in info.num_examples:
    raise DataError(f"split {split!r} is not in the dataset info ({', '.join(info.num_examples)})")
  shard_count = 1 if shard_count is None else shard_count
  global_batch = batch_size or cfg.eval_batch_size
  order.local_batch_size(global_batch, shard_count)
  return order.num_eval_batches(info.num_examples[split], global_batch)
