"""Synthetic batches: random uint8 images and labels shaped like the input pipeline's batches.

What `bench` and `compare` feed the train step, and what tests use to drive it. Plain numpy:
no TensorFlow, no dataset.
"""

from __future__ import annotations

import numpy as np


def synthetic_batch(cfg, rows: int, seed: int = 0) -> dict[str, np.ndarray]:
  """`rows` examples as the train pipeline yields them (image, label, mask, rgb_shift),
  a function of `seed` only."""
  rng = np.random.default_rng(seed)
  size = cfg.data.crop_size
  return {
      "image": rng.integers(0, 256, (rows, size, size, 3), dtype=np.uint8),
      "label": rng.integers(0, cfg.model.num_classes, (rows,), dtype=np.int32),
      "mask": np.ones((rows,), bool),
      "rgb_shift": rng.normal(0, 0.01, (rows, 3)).astype(np.float32),
  }


def block(batch: dict[str, np.ndarray], index: int, count: int) -> dict[str, np.ndarray]:
  """Rows block `index` of `count` of a global batch (what one data group of devices holds)."""
  return {k: np.split(v, count)[index] for k, v in batch.items()}
