"""scikit-learn's handwritten digits: 1,797 real 8x8 images, 10 classes, bundled (no download).

Pixels are 17 grey levels (0..16), scaled to 0..255 and repeated to RGB. The split is fixed and
independent of the seed: every 5th example (index 0, 5, 10, ...) is held out, giving 1,437
train and 360 held-out examples; "validation" and "test" both name the held-out part.
"""

from __future__ import annotations

import numpy as np

from alexnet_jax.data.info import DataError, DatasetInfo

SPLITS = {"train": "train", "validation": "held_out", "test": "held_out"}


def load_digits_rgb() -> tuple[np.ndarray, np.ndarray]:
  """All 1,797 digits as uint8 (N, 8, 8, 3) and their int32 labels, in scikit-learn's order."""
  from sklearn.datasets import load_digits  # sklearn is slow to import; only digits needs it

  digits = load_digits()
  grey = np.round(digits.images * (255 / 16)).astype(np.uint8)
  return np.repeat(grey[..., None], 3, axis=-1), digits.target.astype(np.int32)


def split_mask(split: str, num_examples: int) -> np.ndarray:
  if split not in SPLITS:
    raise DataError(f"digits has no split {split!r}; use one of {', '.join(SPLITS)}")
  held_out = np.arange(num_examples) % 5 == 0
  return held_out if SPLITS[split] == "held_out" else ~held_out


class DigitsSource:
  def __init__(self):
    self.images, self.labels = load_digits_rgb()
    self._splits = {}  # (split, options) -> split, so a cache is built once per process

  def dataset_info(self, split_names) -> DatasetInfo:
    counts = {s: int(split_mask(s, len(self.labels)).sum()) for s in (*SPLITS, *split_names)}
    return DatasetInfo(num_classes=10, class_names=tuple(str(d) for d in range(10)),
                       num_examples=counts)

  def split(self, name: str, options):
    from alexnet_jax.data import splits  # TensorFlow from here on

    if (name, options) not in self._splits:
      mask = split_mask(name, len(self.labels))
      split = splits.ArraySplit(self.images[mask], self.labels[mask], options)
      self._splits[name, options] = (splits.materialize(split, f"digits {name}")
                                     if options.cache else split)
    return self._splits[name, options]
