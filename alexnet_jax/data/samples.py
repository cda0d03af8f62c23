"""The training pipeline's outputs for a few chosen examples, epoch by epoch (for looking at).

`train_views(cfg, count, epochs)` takes the first `count` examples of the train split (in its
stored order) and applies the draws training applies (alexnet_jax.data.draws, keyed by the same
(seed, epoch, example id)) to their squares, so view e of an example is what the training run
feeds the network for that example in epoch e (for full-size image files, within a grey level:
training resizes just the crop's window, here the square is cropped).
"""

from __future__ import annotations

import numpy as np

from alexnet_jax.data import _open_source, arrays, draws
from alexnet_jax.data.info import DataError


def first_squares(cfg, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(example_id, square, label) of the train split's first `count` examples."""
  source = _open_source(cfg)
  if isinstance(source, arrays.InMemorySource):  # numpy only: no TensorFlow
    squares, labels = source.squares(cfg.data.train_split, cfg.data.resize_size)
    ids = np.arange(min(count, len(labels)))
    return ids, squares[ids], labels[ids]
  from alexnet_jax.data import pipeline

  split = source.split(cfg.data.train_split, pipeline.split_options(cfg))
  count = min(count, split.num_examples)
  # eval_examples: the split's examples in stored order, as (example_id, square, label).
  firsts = split.eval_examples(global_batch=count, shard_index=0, shard_count=1).take(count)
  return next(firsts.batch(count).as_numpy_iterator())


def train_views(cfg, count: int, epochs: int) -> dict[str, np.ndarray]:
  """{"example_id" (count,), "label" (count,), "square" uint8 (count, R, R, 3): the resized
  source squares, "image" uint8 (epochs, count, crop, crop, 3), "rgb_shift" (epochs, count, 3)}."""
  if count < 1 or epochs < 1:
    raise DataError(f"count={count} and epochs={epochs} must be >= 1")
  ids, squares, labels = first_squares(cfg, count)
  rows = np.arange(len(ids))
  images, shifts = [], []
  for epoch in range(epochs):
    d = draws.config_draws(cfg, epoch, ids, squares.shape[1])
    images.append(arrays.views(squares, rows, d, cfg.data.crop_size))
    shifts.append(d.rgb_shift)
  return {"example_id": ids, "label": labels, "square": squares, "image": np.stack(images),
          "rgb_shift": np.stack(shifts)}
