"""In-memory datasets (digits, Fashion-MNIST, MNIST): the numpy squares and evaluation pass
equal the tf.data pipeline's, and `evaluate` of a parameter file on them needs no TensorFlow."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from alexnet_jax import export, program
from alexnet_jax.data import arrays, digits, ops, pipeline, splits
from alexnet_jax.data._tf import tf
from configs import test as test_config
from runs import config_with, import_blocker

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tf_squares(images, size):
  """The tf.data pipeline's square of each image (what files and tfds datasets go through)."""
  return np.stack([ops.resize_square(ops.center_square(tf.constant(image)), size).numpy()
                   for image in images])


@pytest.mark.parametrize("shape,size", [((300, 8, 8), 36), ((300, 8, 8), 5), ((40, 40, 30), 17),
                                        ((40, 33, 47), 29), ((6, 120, 160), 64)])
def test_squares_equal_tensorflows_resize_up_to_float_rounding(shape, size):
  rng = np.random.default_rng(size)
  if shape[1:] == (8, 8):  # the digits themselves
    images = digits.load_digits_rgb()[0][:shape[0]]
  else:
    images = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
  ours, theirs = arrays.resize_squares(images, size), tf_squares(images, size)
  assert ours.shape == theirs.shape == (shape[0], size, size, 3) and ours.dtype == np.uint8
  difference = np.abs(ours.astype(int) - theirs.astype(int))
  # Where the exact value is a rounding tie the two float sums may land either side of it.
  assert difference.max() <= 1 and (difference > 0).mean() < 0.01


def test_squares_of_the_right_size_are_the_images_centre_squares():
  images = np.random.default_rng(0).integers(0, 256, (4, 20, 30, 3), dtype=np.uint8)
  np.testing.assert_array_equal(arrays.resize_squares(images, 20), images[:, :, 5:25])


def test_digits_are_read_as_scikit_learn_gives_them():
  from sklearn.datasets import load_digits

  reference = load_digits()
  images, labels = digits.load_digits_rgb()
  grey = np.round(reference.images * 255 / 16).astype(np.uint8)
  np.testing.assert_array_equal(images, np.repeat(grey[..., None], 3, axis=-1))
  np.testing.assert_array_equal(labels, reference.target)
  assert images.dtype == np.uint8 and labels.dtype == np.int32


@pytest.mark.parametrize("views", ["center", "10crop"])
@pytest.mark.parametrize("global_batch,shard_index,shard_count", [(64, 0, 1), (48, 1, 2),
                                                                  (28, 3, 7)])
def test_evaluation_batches_equal_the_tf_data_pipelines(views, global_batch, shard_index,
                                                        shard_count):
  cfg = config_with(**{"data.resize_size": 12, "data.crop_size": 10})
  squares, labels = digits.DigitsSource().squares("validation", 12)
  options = pipeline.split_options(cfg)
  reference = pipeline.eval_batches(cfg, splits.ArraySplit(squares, labels, options), views=views,
                                    global_batch=global_batch, shard_index=shard_index,
                                    shard_count=shard_count)
  ours = list(arrays.eval_iterator(squares, labels, crop_size=10, views=views,
                                   global_batch=global_batch, shard_index=shard_index,
                                   shard_count=shard_count))
  theirs = list(reference.as_numpy_iterator())
  assert len(ours) == len(theirs) == -(-360 // global_batch)
  for a, b in zip(ours, theirs):
    assert a.keys() == b.keys()
    for key in a:
      assert a[key].dtype == b[key].dtype, key
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_evaluate_of_a_parameter_file_imports_neither_tensorflow_nor_scikit_learn(tmp_path):
  cfg = test_config.get_config()
  params, state = jax.eval_shape(program.model_fns(cfg).init, jax.random.key(0))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: (0.05 * rng.normal(size=s.shape)).astype(np.float32), params)
  model = export.LoadedModel(cfg, params, state, tuple("0123456789"), 0, "random")
  path = str(tmp_path / "random.safetensors")
  export.save(model, path)

  site = tmp_path / "site"
  site.mkdir()
  (site / "sitecustomize.py").write_text(import_blocker("tensorflow", "tensorflow_datasets",
                                                        "sklearn"))
  env = dict(os.environ, PYTHONPATH=str(site))
  result = subprocess.run([sys.executable, "launch.py", "evaluate", "--params", path,
                           "--views", "10crop"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "random.safetensors" in result.stdout and "360 examples" in result.stdout
  assert "is blocked in this test" not in result.stderr
