"""Each training example's draws in numpy (alexnet_jax.data.draws) are TensorFlow's stateless
random ops bit for bit, so the numpy training batches of in-memory datasets and the file
pipeline's numpy-placed crops are the batches the tf.data map (tensorflow-datasets' path) makes;
training on an in-memory dataset imports no TensorFlow."""

import itertools
import os
import subprocess
import sys

import numpy as np
import pytest

from alexnet_jax import configlib
from alexnet_jax.data import arrays, digits, draws, ops, pipeline
from alexnet_jax.data._tf import tf
from runs import config_with, import_blocker

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("seed,epoch,size,crop", [(0, 0, 36, 32), (12345, 7, 256, 224),
                                                  (-3, 2, 40, 40), (2**40 + 1, 90, 9, 4)])
def test_draws_are_tensorflows_stateless_ops_bit_for_bit(seed, epoch, size, crop):
  ids = np.concatenate([np.arange(150), [2**31 + 5, 10**12]])
  ours = draws.Draws(ids, seed=seed, epoch=epoch, size=size, crop=crop, random_crop=True,
                     flip=True, pca_lighting=0.1, eigval=configlib.PCA_EIGVAL,
                     eigvec=configlib.PCA_EIGVEC)
  keys = draws.example_keys(seed, epoch, ids)
  normals = draws.normal3(keys[:, 2])
  for i, example_id in enumerate(ids):
    crop_key, flip_key, lighting_key = ops.split_key(ops.example_key(seed, epoch, example_id), 3)
    np.testing.assert_array_equal(keys[i], np.stack([crop_key, flip_key, lighting_key]))
    top, left = ops.random_crop_offsets(crop_key, size, size, crop)
    assert (ours.top[i], ours.left[i]) == (int(top), int(left))
    assert ours.flip[i] == bool(tf.random.stateless_uniform([], flip_key) < 0.5)
    np.testing.assert_array_equal(normals[i], tf.random.stateless_normal([3], lighting_key))
  assert ours.top.dtype == ours.left.dtype == np.int32 and ours.rgb_shift.dtype == np.float32
  assert 0.3 < ours.flip.mean() < 0.7
  assert len(set(zip(ours.top, ours.left))) == 1 if size == crop else 2 < len(set(ours.top))


def test_central_crops_and_no_flips_or_lighting_when_switched_off():
  d = draws.Draws(np.arange(20), seed=1, epoch=0, size=36, crop=31, random_crop=False,
                  flip=False, pca_lighting=0.0, eigval=configlib.PCA_EIGVAL,
                  eigvec=configlib.PCA_EIGVEC)
  assert (d.top == 2).all() and (d.left == 2).all() and not d.flip.any()
  assert not d.rgb_shift.any()


CONFIGS = [
    {},  # configs/test.py: random crops, PCA lighting, no flips (digits)
    {"data.flip": True, "seed": 77},
    {"data.random_crop": False, "data.pca_lighting": 0.0},
    {"data.pca_lighting": 0.37, "data.resize_size": 40, "data.crop_size": 30, "data.flip": True},
]


@pytest.mark.parametrize("overrides", CONFIGS)
@pytest.mark.parametrize("shard_index,shard_count,start_step", [(0, 1, 0), (1, 2, 25),
                                                                (2, 3, 58)])
def test_in_memory_training_batches_equal_the_tf_data_maps(overrides, shard_index, shard_count,
                                                           start_step):
  """The numpy batches against tf.data's map over the same squares, TensorFlow's ops drawing
  (what tensorflow-datasets sources go through), across an epoch boundary (29 steps/epoch)."""
  cfg = config_with(batch_size=48, **overrides)
  source = digits.DigitsSource()
  squares, labels = source.squares("train", cfg.data.resize_size)
  steps = len(labels) // cfg.batch_size
  ours = itertools.islice(arrays.train_iterator(
      cfg, squares, labels, start_step=start_step, steps_per_epoch=steps,
      shard_index=shard_index, shard_count=shard_count), 8)
  split = source.split("train", pipeline.split_options(cfg))

  def reference():
    first_epoch, first_batch = divmod(start_step, steps)
    for epoch in itertools.count(first_epoch):
      yield from pipeline.train_batches(  # an ArraySplit takes the tf.data map
          cfg, split, epoch=epoch, first_batch=first_batch if epoch == first_epoch else 0,
          shard_index=shard_index, shard_count=shard_count)

  for a, b in zip(ours, itertools.islice(reference(), 8), strict=True):
    assert a.keys() == b.keys()
    for key in a:
      assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_training_on_an_in_memory_dataset_imports_no_tensorflow(tmp_path):
  site = tmp_path / "site"
  site.mkdir()
  (site / "sitecustomize.py").write_text(import_blocker("tensorflow", "tensorflow_datasets"))
  script = (
      "import itertools, sys\n"
      "from runs import config_with\n"
      "from alexnet_jax import data\n"
      "cfg = config_with(**{'data.flip': True})\n"
      "batches = list(itertools.islice(data.train_iterator(cfg, shard_index=0, shard_count=1), 3))\n"
      "evals = list(data.eval_iterator(cfg, shard_index=0, shard_count=1))\n"
      "assert batches[2]['image'].shape == (cfg.batch_size, 32, 32, 3), batches[2]['image'].shape\n"
      "assert 'tensorflow' not in sys.modules\n"
      "print('ok', len(batches), len(evals))\n")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), REPO,
                                                     os.path.join(REPO, "tests")]))
  result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.startswith("ok 3 ")
