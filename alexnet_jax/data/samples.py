"""The training pipeline's outputs for a few chosen examples, epoch by epoch (for looking at).

`train_views(cfg, count, epochs)` takes the first `count` examples of the train split (in its
stored order) and applies the very map function training applies (`pipeline.make_train_example`,
keyed by the same (seed, epoch, example id)), so view e of an example is exactly what the
training run feeds the network for that example in epoch e.
"""

from __future__ import annotations

import numpy as np

from alexnet_jax.data import _open_source, pipeline
from alexnet_jax.data.info import DataError


def train_views(cfg, count: int, epochs: int) -> dict[str, np.ndarray]:
  """{"example_id" (count,), "label" (count,), "square" uint8 (count, R, R, 3): the resized
  source squares, "image" uint8 (epochs, count, crop, crop, 3), "rgb_shift" (epochs, count, 3)}."""
  if count < 1 or epochs < 1:
    raise DataError(f"count={count} and epochs={epochs} must be >= 1")
  split = _open_source(cfg).split(cfg.data.train_split, pipeline.split_options(cfg))
  count = min(count, split.num_examples)
  # eval_examples: the split's examples in stored order, as (example_id, square, label).
  firsts = split.eval_examples(global_batch=count, shard_index=0, shard_count=1).take(count)
  ids, squares, labels = next(firsts.batch(count).as_numpy_iterator())
  images, shifts = [], []
  for epoch in range(epochs):
    views = firsts.map(pipeline.make_train_example(cfg, epoch)).batch(count)
    batch = next(views.as_numpy_iterator())
    images.append(batch["image"])
    shifts.append(batch["rgb_shift"])
  return {"example_id": ids, "label": labels, "square": squares, "image": np.stack(images),
          "rgb_shift": np.stack(shifts)}
