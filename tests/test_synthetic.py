"""Synthetic data (config.data.name=synthetic): deterministic batches of the config's shape, the
same rows however a batch is split, every evaluation example counted once, and a whole
train -> checkpoint -> resume cycle with TensorFlow, tensorflow-datasets and scikit-learn made
impossible to import (the GPU machines have none of them)."""

import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from alexnet_jax import data
from alexnet_jax.data import DataError
from runs import BLOCKER, config_with

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def train(workdir, epochs, blocker_dir):
  env = dict(os.environ, PYTHONPATH=f"{blocker_dir}{os.pathsep}{REPO}", JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2 "
                       "--xla_backend_optimization_level=0")
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, "launch.py"), "train", "--config", "configs/test.py",
       "--workdir", str(workdir), "--config.data.name=synthetic",
       "--config.data.synthetic_train_size=320", "--config.data.synthetic_eval_size=100",
       f"--config.num_epochs={epochs}", "--config.log_every_steps=1",
       "--config.checkpoint_every_steps=3"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stderr


def test_train_checkpoints_and_resumes_without_tensorflow(tmp_path):
  blocker_dir = tmp_path / "site"
  blocker_dir.mkdir()
  (blocker_dir / "sitecustomize.py").write_text(BLOCKER)
  check = subprocess.run([sys.executable, "-c", "import tensorflow"], capture_output=True,
                         text=True, env=dict(os.environ, PYTHONPATH=str(blocker_dir)))
  assert "is blocked in this test" in check.stderr  # the blocker works

  whole, resumed = tmp_path / "whole", tmp_path / "resumed"
  train(whole, 0.6, blocker_dir)  # 10 steps per epoch: 6 steps
  first = train(resumed, 0.3, blocker_dir)  # 3 steps, checkpointed ...
  assert "starting fresh" in first
  second = train(resumed, 0.6, blocker_dir)  # ... then on to 6
  assert "resuming at step 3" in second

  def records(workdir):
    with open(workdir / "metrics.jsonl") as f:
      return {(r["step"], r["split"]): r for r in map(json.loads, f)}

  a, b = records(whole), records(resumed)
  for step in range(4, 7):
    for key in ("loss", "grad_norm", "param_norm"):
      assert b[step, "train"][key] == a[step, "train"][key], (step, key)
  assert b[6, "eval"]["count"] == a[6, "eval"]["count"] == 100
  assert b[6, "eval"]["top1_err"] == a[6, "eval"]["top1_err"]
