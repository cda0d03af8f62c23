"""The input pipeline: datasets by name, per-process numpy batches for training and evaluation.

Sources (cfg.data.name):
  digits        scikit-learn's 8x8 handwritten digits, bundled, in memory (the offline default)
  imagenet2012  tensorflow-datasets, prepared on first use from the ILSVRC2012 tars (manual_dir)
  folder        DIR/train/<class>/*, DIR/val/<class>/* or Tiny ImageNet (cfg.data.folder)
  fashion_mnist, mnist  the four IDX files in cfg.data.folder (default: Debian's), in memory
  other names   a prepared tensorflow-datasets image-classification dataset (cfg.data.data_dir)

Batches (b = global batch // process count):
  train  image uint8 (b, crop, crop, 3), label int32 (b,), mask bool (b,) all True,
         rgb_shift float32 (b, 3): the PCA lighting offset, added on the device by
         alexnet_jax.preprocess.normalize.
  eval   image uint8 (b, crop, crop, 3), or (b, 10, crop, crop, 3) for views="10crop" (view order
         in ops.ten_crop), label, mask (False on padding).

Importing this package does not import TensorFlow: the model, train step and benchmarks run
where TensorFlow is not installed. TensorFlow loads when a pipeline is first built.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from alexnet_jax.data import order
from alexnet_jax.data.info import DataError, DatasetInfo

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


def _processes(process_index, process_count) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise DataError(f"process_index {process_index} is not in [0, {process_count})")
  return process_index, process_count


def dataset_info(cfg) -> DatasetInfo:
  """Classes and split sizes; num_examples has the config's train and eval splits (and more)."""
  return _open_source(cfg).dataset_info((cfg.data.train_split, cfg.data.eval_split))


def steps_per_epoch(cfg, info: DatasetInfo) -> int:
  """Full global batches per epoch; the remainder is dropped (a different one every epoch)."""
  steps = info.num_examples[cfg.data.train_split] // cfg.batch_size
  if steps == 0:
    raise DataError(f"split {cfg.data.train_split!r} has {info.num_examples[cfg.data.train_split]} "
                    f"examples, fewer than one batch of {cfg.batch_size}")
  return steps


def train_iterator(cfg, *, start_step: int = 0, process_index: int | None = None,
                   process_count: int | None = None) -> Iterator[dict[str, np.ndarray]]:
  """Endless per-process train batches; the k-th is global step start_step + k.

  Order and augmentation are functions of (cfg.seed, epoch, example), so a run resumed at
  `start_step` sees exactly the batches an uninterrupted run sees from that step.
  """
  from alexnet_jax.data import pipeline

  process_index, process_count = _processes(process_index, process_count)
  order.local_batch_size(cfg.batch_size, process_count)  # fail now, not at the first batch
  steps = steps_per_epoch(cfg, dataset_info(cfg))
  split = _open_source(cfg).split(cfg.data.train_split, pipeline.split_options(cfg))
  return pipeline.train_iterator(cfg, split, start_step=start_step, steps_per_epoch=steps,
                                 process_index=process_index, process_count=process_count)


def eval_iterator(cfg, split: str | None = None, *, views: str = "center",
                  batch_size: int | None = None, process_index: int | None = None,
                  process_count: int | None = None) -> Iterator[dict[str, np.ndarray]]:
  """One pass over `split` (default cfg.data.eval_split), num_eval_batches batches per process.

  Over all processes every example appears once with mask True; the last batches are padded
  with mask False so that every process yields the same number of batches.
  """
  from alexnet_jax.data import pipeline

  process_index, process_count = _processes(process_index, process_count)
  global_batch = batch_size or cfg.eval_batch_size
  order.local_batch_size(global_batch, process_count)
  pipeline.make_eval_example(cfg.data.crop_size, views)  # rejects unknown views early
  data_split = _open_source(cfg).split(split or cfg.data.eval_split, pipeline.split_options(cfg))
  batches = pipeline.eval_batches(cfg, data_split, views=views, global_batch=global_batch,
                                  process_index=process_index, process_count=process_count)
  return batches.as_numpy_iterator()


def num_eval_batches(cfg, info: DatasetInfo, split: str | None = None, *,
                     batch_size: int | None = None, process_count: int | None = None) -> int:
  """Batches each process's eval_iterator yields (the same on every process)."""
  split = split or cfg.data.eval_split
  if split not in info.num_examples:
    raise DataError(f"split {split!r} is not in the dataset info ({', '.join(info.num_examples)})")
  if process_count is None:
    import jax
    process_count = jax.process_count()
  global_batch = batch_size or cfg.eval_batch_size
  order.local_batch_size(global_batch, process_count)
  return order.num_eval_batches(info.num_examples[split], global_batch)
