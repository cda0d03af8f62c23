"""scikit-learn's handwritten digits: 1,797 real 8x8 images, 10 classes, bundled (no download).

Pixels are 17 grey levels (0..16), scaled to 0..255 and repeated to RGB. The split is fixed and
independent of the seed: every 5th example (index 0, 5, 10, ...) is held out, giving 1,437
train and 360 held-out examples; "validation" and "test" both name the held-out part.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from alexnet_jax.data.arrays import InMemorySource
from alexnet_jax.data.info import DataError, DatasetInfo

SPLITS = {"train": "train", "validation": "held_out", "test": "held_out"}


def _digits_csv() -> str | None:
  """scikit-learn's bundled digits file, found without importing scikit-learn (about 1 s)."""
  for folder in sys.path:
    path = os.path.join(folder or ".", "sklearn", "datasets", "data", "digits.csv.gz")
    if os.path.isfile(path):
      return path
  return None


def load_digits_rgb() -> tuple[np.ndarray, np.ndarray]:
  """All 1,797 digits as uint8 (N, 8, 8, 3) and their int32 labels, in scikit-learn's order."""
  path = _digits_csv()
  if path:  # what sklearn.datasets.load_digits reads: 64 pixels and the label per row
    table = np.loadtxt(path, delimiter=",")
    images, target = table[:, :-1].reshape(-1, 8, 8), table[:, -1]
  else:  # a scikit-learn that keeps its data elsewhere
    from sklearn.datasets import load_digits
    digits = load_digits()
    images, target = digits.images, digits.target
  grey = np.round(images * (255 / 16)).astype(np.uint8)
  return np.repeat(grey[..., None], 3, axis=-1), target.astype(np.int32)


def split_mask(split: str, num_examples: int) -> np.ndarray:
  if split not in SPLITS:
    raise DataError(f"digits has no split {split!r}; use one of {', '.join(SPLITS)}")
  held_out = np.arange(num_examples) % 5 == 0
  return held_out if SPLITS[split] == "held_out" else ~held_out


class DigitsSource(InMemorySource):
  def __init__(self):
    self.images, self.labels = load_digits_rgb()

  def dataset_info(self, split_names) -> DatasetInfo:
    counts = {s: int(split_mask(s, len(self.labels)).sum()) for s in (*SPLITS, *split_names)}
    return DatasetInfo(num_classes=10, class_names=tuple(str(d) for d in range(10)),
                       num_examples=counts)

  def _arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
    mask = split_mask(split, len(self.labels))
    return self.images[mask], self.labels[mask]
