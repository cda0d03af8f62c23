"""Synthetic data (config.data.name=synthetic): deterministic batches of the config's shape, the
same rows however a batch is split, every evaluation example counted once.

The whole `launch.py train --config.data.name=synthetic` cycle (train, checkpoint, stopped by
SIGTERM, resumed, equal to an uninterrupted run) with TensorFlow, tensorflow-datasets and
scikit-learn impossible to import is the GPU check's "train resume" part, run at tiny sizes by
tests/test_gpu_check.py."""

import itertools

import numpy as np
import pytest

from alexnet_jax import data
from alexnet_jax.data import DataError, synthetic
from runs import config_with


def synthetic_cfg(**overrides):
  return config_with(**{"data.name": "synthetic", "data.synthetic_train_size": 320,
                        "data.synthetic_eval_size": 100, **overrides})


def take(iterator, n):
  return list(itertools.islice(iterator, n))


def test_batches_depend_on_seed_and_step_only_and_blocks_make_the_global_batch():
  cfg = synthetic_cfg()
  whole = take(data.train_iterator(cfg), 4)
  assert whole[0]["image"].shape == (32, 32, 32, 3) and whole[0]["image"].dtype == np.uint8
  assert whole[0]["label"].dtype == np.int32 and whole[0]["mask"].all()
  again = take(data.train_iterator(cfg, start_step=2), 2)
  halves = [take(data.train_iterator(cfg, shard_index=i, shard_count=2), 4) for i in range(2)]
  for step in range(4):
    for key in ("image", "label"):
      np.testing.assert_array_equal(
          np.concatenate([halves[0][step][key], halves[1][step][key]]), whole[step][key])
  for a, b in zip(again, whole[2:]):
    np.testing.assert_array_equal(a["image"], b["image"])
  # Steps differ from each other, labels cover the classes, another seed gives other batches.
  assert not np.array_equal(whole[0]["image"], whole[1]["image"])
  assert len(np.unique(np.concatenate([b["label"] for b in whole]))) == 10
  other = take(data.train_iterator(synthetic_cfg(seed=1)), 1)[0]
  assert not np.array_equal(other["label"], whole[0]["label"])


def test_synthetic_batches_have_the_real_pipelines_fields():
  """bench and compare feed synthetic_batch to the train step: with another field set (a flip
  or lighting offset missing) they would compile another program than a real run's."""
  real = next(data.train_iterator(config_with(), shard_index=0, shard_count=1))  # digits
  cfg = synthetic_cfg()
  for batch in (synthetic.synthetic_batch(cfg, 8), next(data.train_iterator(cfg))):
    assert batch.keys() == real.keys()
    for key, value in real.items():
      assert batch[key].dtype == value.dtype and batch[key].shape[1:] == value.shape[1:], key


def test_evaluation_counts_every_example_once_and_has_ten_views():
  cfg = synthetic_cfg()
  info = data.dataset_info(cfg)
  assert info.num_examples["train"] == 320 and info.num_examples["validation"] == 100
  assert info.num_classes == 10
  blocks = [list(data.eval_iterator(cfg, batch_size=64, shard_index=i, shard_count=2))
            for i in range(2)]
  assert [len(b) for b in blocks] == [2, 2]  # ceil(100 / 64), the same on every block
  assert sum(int(batch["mask"].sum()) for b in blocks for batch in b) == 100
  views = next(data.eval_iterator(cfg, views="10crop"))
  assert views["image"].shape == (64, 10, 32, 32, 3)
  with pytest.raises(DataError, match="synthetic data has no split 'holdout'"):
    data.dataset_info(synthetic_cfg(**{"data.eval_split": "holdout"}))
