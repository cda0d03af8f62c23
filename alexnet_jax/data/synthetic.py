"""Synthetic data: random uint8 images and labels of the config's shape, made on the host.

Two uses:
- `synthetic_batch`: one batch, what `bench` and `compare` place on the devices once and time
  the train step on;
- `config.data.name=synthetic`: a dataset for `train` (PyTorch's ImageNet example calls it
  `--dummy`) to measure a machine end to end: batches are made on the host and go through the
  same feed as real batches (the rows each process's devices hold, host-to-device copies,
  prefetching), training checkpoints and resumes, and evaluation counts every example once.

Deterministic by (seed, step): example `i` of the train split at step `s` is example id
`s * batch + i`; its image is drawn from a pool of random images made once per process from the
seed (so a batch costs a gather, not a random draw of every pixel), its label a hash of the id.
The labels carry no information, so accuracy stays at chance: this measures speed, not learning.

Plain numpy: no TensorFlow, tensorflow-datasets or scikit-learn.
"""

from __future__ import annotations

import functools
import itertools
from typing import Iterator

import numpy as np

from alexnet_jax.data import order
from alexnet_jax.data.info import DataError, DatasetInfo

SPLITS = ("train", "validation", "test")
POOL = 64  # distinct random images per process, reused by example id


def synthetic_batch(cfg, rows: int, seed: int = 0) -> dict[str, np.ndarray]:
  """`rows` examples as the train pipeline yields them (image, label, mask, flip, rgb_shift),
  a function of `seed` only."""
  rng = np.random.default_rng(seed)
  size = cfg.data.crop_size
  return {
      "image": rng.integers(0, 256, (rows, size, size, 3), dtype=np.uint8),
      "label": rng.integers(0, cfg.model.num_classes, (rows,), dtype=np.int32),
      "mask": np.ones((rows,), bool),
      "rgb_shift": rng.normal(0, 0.01, (rows, 3)).astype(np.float32),
      "flip": rng.random(rows) < 0.5,
  }


def block(batch: dict[str, np.ndarray], index: int, count: int) -> dict[str, np.ndarray]:
  """Rows block `index` of `count` of a global batch (what one data group of devices holds)."""
  return {k: np.split(v, count)[index] for k, v in batch.items()}


# --- the dataset ------------------------------------------------------------------------------


def split_size(cfg, split: str) -> int:
  if split not in SPLITS:
    raise DataError(f"synthetic data has no split {split!r}; use one of {', '.join(SPLITS)}")
  return cfg.data.synthetic_train_size if split == "train" else cfg.data.synthetic_eval_size


def dataset_info(cfg, split_names) -> DatasetInfo:
  n = cfg.model.num_classes
  return DatasetInfo(num_classes=n, class_names=tuple(str(i) for i in range(n)),
                     num_examples={s: split_size(cfg, s) for s in (*SPLITS, *split_names)})


@functools.lru_cache(maxsize=4)
def _pool(seed: int, size: int) -> np.ndarray:
  rng = np.random.default_rng([seed & 0xFFFF_FFFF_FFFF_FFFF, 0x5EED])
  return rng.integers(0, 256, (POOL, size, size, 3), dtype=np.uint8)


def _mix(ids: np.ndarray, seed: int) -> np.ndarray:
  """splitmix64 of (seed, id): well-spread 64-bit numbers, a pure function of both."""
  u = np.uint64
  z = ids.astype(u) + u(seed & 0xFFFF_FFFF_FFFF_FFFF) * u(0x9E3779B97F4A7C15)
  z = (z ^ (z >> u(30))) * u(0xBF58476D1CE4E5B9)
  z = (z ^ (z >> u(27))) * u(0x94D049BB133111EB)
  return z ^ (z >> u(31))


def _examples(cfg, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Images and labels of example ids (a pure function of the seed and the ids)."""
  mixed = _mix(ids, cfg.seed)
  images = _pool(cfg.seed, cfg.data.crop_size)[(mixed % np.uint64(POOL)).astype(np.int64)]
  labels = ((mixed >> np.uint64(32)) % np.uint64(cfg.model.num_classes)).astype(np.int32)
  return images, labels


def _rows(global_batch: int, shard_index: int, shard_count: int) -> np.ndarray:
  local = global_batch // shard_count
  return np.arange(shard_index * local, (shard_index + 1) * local)


def train_iterator(cfg, *, start_step: int, shard_index: int,
                   shard_count: int) -> Iterator[dict[str, np.ndarray]]:
  """Endless train batches (block `shard_index` of `shard_count` of each global batch); the
  k-th is global step start_step + k."""
  rows = _rows(cfg.batch_size, shard_index, shard_count)
  for step in itertools.count(start_step):
    images, labels = _examples(cfg, step * cfg.batch_size + rows)
    yield {"image": images, "label": labels, "mask": np.ones(len(rows), bool),
           "flip": np.zeros(len(rows), bool), "rgb_shift": np.zeros((len(rows), 3), np.float32)}


def eval_iterator(cfg, split: str, *, views: str, global_batch: int, shard_index: int,
                  shard_count: int) -> Iterator[dict[str, np.ndarray]]:
  """One pass over `split`: ceil(N / batch) batches, the rows past the end masked out."""
  num_examples = split_size(cfg, split)
  for ids in order.eval_positions(num_examples=num_examples, global_batch=global_batch,
                                  shard_index=shard_index, shard_count=shard_count):
    # Evaluation examples are other ids than training's: the split starts after them.
    images, labels = _examples(cfg, ids + cfg.data.synthetic_train_size)
    if views == "10crop":
      images = np.repeat(images[:, None], 10, axis=1)
    yield {"image": images, "label": labels, "mask": ids < num_examples}
