"""alexnet_jax.preprocess.normalize against numpy."""

import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import configlib
from alexnet_jax.preprocess import normalize

MEAN, STD = np.array(configlib.IMAGENET_MEAN), np.array(configlib.IMAGENET_STD)


@pytest.mark.parametrize("shape", [(4, 5, 6, 3), (2, 10, 5, 6, 3)])  # images, and views per image
def test_normalize_adds_one_shift_per_image_then_standardises(shape):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, shape, dtype=np.uint8)
  shift = rng.normal(0, 0.05, (shape[0], 3)).astype(np.float32)
  out = normalize(jnp.asarray(images), jnp.asarray(shift), configlib.IMAGENET_MEAN,
                  configlib.IMAGENET_STD)
  expected = np.empty(shape)
  for b in range(shape[0]):  # the per-image loop spells out the broadcasting being tested
    expected[b] = (images[b] / 255.0 + shift[b] - MEAN) / STD
  assert out.shape == shape and out.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5, atol=1e-5)


def test_normalize_without_shift_and_in_bfloat16():
  images = np.array([[[[0, 128, 255]]]], np.uint8)
  expected = (np.array([0, 128, 255]) / 255.0 - MEAN) / STD
  out = normalize(images, None, configlib.IMAGENET_MEAN, configlib.IMAGENET_STD)
  np.testing.assert_allclose(np.asarray(out)[0, 0, 0], expected, rtol=1e-6)
  low = normalize(images, None, configlib.IMAGENET_MEAN, configlib.IMAGENET_STD, dtype=jnp.bfloat16)
  assert low.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(low, np.float32)[0, 0, 0], expected, rtol=1e-2)


@pytest.mark.parametrize("shape", [(4, 5, 6, 3), (2, 10, 5, 6, 3)])
def test_normalize_mirrors_left_to_right_the_images_whose_flip_is_set(shape):
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, shape, dtype=np.uint8)
  flip = np.arange(shape[0]) % 2 == 1
  out = normalize(images, None, configlib.IMAGENET_MEAN, configlib.IMAGENET_STD, flip=flip)
  mirrored = np.where(flip.reshape((-1,) + (1,) * (len(shape) - 1)), images[..., ::-1, :], images)
  expected = normalize(mirrored, None, configlib.IMAGENET_MEAN, configlib.IMAGENET_STD)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(expected))
  assert not np.array_equal(np.asarray(out), np.asarray(
      normalize(images, None, configlib.IMAGENET_MEAN, configlib.IMAGENET_STD)))
