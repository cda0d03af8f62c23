"""Each preprocessing op alone, against numpy/PIL, and inside tf.data."""

import io

import numpy as np
import pytest
from PIL import Image

import datagen
from alexnet_jax import configlib
from alexnet_jax.data import ops
from alexnet_jax.data._tf import tf


def coordinate_image(height, width):
  """uint8 image whose pixel (y, x) holds (y, x, 7): a crop tells where it was taken."""
  yy, xx = np.mgrid[0:height, 0:width]
  return np.stack([yy, xx, np.full_like(yy, 7)], -1).astype(np.uint8)


def keys(n, seed=0):
  return [ops.example_key(seed, 0, i) for i in range(n)]


@pytest.fixture(scope="module")
def photo():
  return datagen.natural_image(np.random.default_rng(1), 500, 375)


# --- central square, decoding, resizing -----------------------------------------------------------


@pytest.mark.parametrize("height,width,top,left", [(375, 500, 0, 62), (500, 375, 62, 0),
                                                   (9, 14, 0, 2), (7, 7, 0, 0)])
def test_center_square(height, width, top, left):
  image = coordinate_image(height, width)
  side = min(height, width)
  out = ops.center_square(tf.constant(image)).numpy()
  np.testing.assert_array_equal(out, image[top:top + side, left:left + side])


def test_decode_center_square_jpeg_equals_full_decode_then_crop(photo):
  data = datagen.encode(photo)
  full = tf.io.decode_jpeg(data, channels=3).numpy()
  np.testing.assert_array_equal(ops.decode_center_square(data).numpy(), full[:, 62:437])


def test_decode_center_square_png_named_anything_is_exact(photo):
  data = datagen.encode(photo, "PNG")
  np.testing.assert_array_equal(ops.decode_center_square(data).numpy(), photo[:, 62:437])


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_decode_center_square_grey_and_cmyk_become_rgb(photo, mode):
  data = datagen.encode(photo, mode=mode, quality=95)
  pil_rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
  out = ops.decode_center_square(data).numpy()
  assert out.shape == (375, 375, 3) and out.dtype == np.uint8
  # Two JPEG decoders round differently; a wrong colour conversion would be off by ~100.
  diff = np.abs(out.astype(int) - pil_rgb[:, 62:437])
  assert diff.mean() < 1 and np.percentile(diff, 99) <= 6 and diff.max() <= 20
  if mode == "L":
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_resize_square_matches_pil_bilinear(photo):
  square = photo[:, 62:437]
  out = ops.resize_square(tf.constant(square), 256).numpy()
  pil = np.asarray(Image.fromarray(square).resize((256, 256), Image.BILINEAR))
  assert out.shape == (256, 256, 3) and out.dtype == np.uint8
  assert np.abs(out.astype(int) - pil).max() <= 1  # both antialias when shrinking
  digit = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
  up = ops.resize_square(tf.constant(digit), 36).numpy()
  pil_up = np.asarray(Image.fromarray(digit).resize((36, 36), Image.BILINEAR))
  assert np.abs(up.astype(int) - pil_up).max() <= 1


def test_resize_square_keeps_a_flat_image_exact():
  flat = np.full((30, 30, 3), 173, np.uint8)
  np.testing.assert_array_equal(ops.resize_square(tf.constant(flat), 17).numpy(),
                                np.full((17, 17, 3), 173, np.uint8))


def test_center_square_then_resize_is_the_papers_view(photo):
  """Shorter side to 256 then the central 256x256 (PIL), up to sub-pixel edge differences."""
  paper = np.asarray(Image.fromarray(photo).resize((341, 256), Image.BILINEAR))[:, 42:298]
  ours = ops.resize_square(ops.center_square(tf.constant(photo)), 256).numpy()
  diff = np.abs(ours.astype(int) - paper)
  assert diff.mean() < 1.0 and np.percentile(diff, 99) <= 4


# --- crops and flips ----------------------------------------------------------------------------


# --- crop before resize ---------------------------------------------------------------------------


def _reference_view(image_bytes, size, crop, top, left):
  square = ops.resize_square(ops.decode_center_square(tf.constant(image_bytes)), size).numpy()
  return square[top:top + crop, left:left + crop]


@pytest.mark.parametrize("width,height,size,crop", [
    (500, 375, 256, 224),  # full-size photo: shrink (antialiased), window decoded
    (375, 500, 256, 227),
    (341, 256, 256, 224),  # pre-resized to 256: no resampling, exact
    (180, 150, 256, 224),  # smaller than S: enlarge
])
def test_decode_square_crop_is_the_crop_of_the_resized_square(width, height, size, crop):
  picture = datagen.natural_image(np.random.default_rng(width), width, height)
  image_bytes = datagen.encode(picture, quality=90)
  rng = np.random.default_rng(0)
  # (16, 6), (16, 22): crop edges on 16-pixel block boundaries of the 341 px wide JPEG, where
  # libjpeg's chroma upsampling differs at a decoded window's edge.
  offsets = [(0, 0), (size - crop, size - crop), (0, size - crop), (16, 6), (16, 22)]
  offsets += [tuple(int(v) for v in rng.integers(0, size - crop + 1, 2)) for _ in range(5)]
  for top, left in offsets:
    view = ops.decode_square_crop(tf.constant(image_bytes), size, crop, top, left).numpy()
    reference = _reference_view(image_bytes, size, crop, top, left)
    assert view.shape == (crop, crop, 3)
    difference = np.abs(view.astype(int) - reference)
    if min(width, height) == size:
      np.testing.assert_array_equal(view, reference)
    else:  # float rounding only: the same samples and weights
      assert difference.max() <= 1 and (difference > 0).mean() < 1e-3, (top, left)


@pytest.mark.parametrize("height,width,size,scale,translation", [
    (328, 331, 224, 256 / 375, (0.3, -0.7)),  # a full-size photo's crop window: shrink
    (200, 150, 224, 256 / 150, (-3.5, 1.25)),  # enlarge, non-square window
])
def test_two_pass_resize_is_the_2d_op_bit_for_bit(height, width, size, scale, translation):
  rng = np.random.default_rng(height)
  image = tf.constant(rng.integers(0, 256, (height, width, 3), np.uint8))
  two_pass = ops._scale_and_translate(image, size, tf.constant([scale, scale], tf.float32),
                                      tf.constant(translation, tf.float32)).numpy()
  reference = tf.raw_ops.ScaleAndTranslate(
      images=image[None], size=[size, size], scale=[scale, scale], translation=translation,
      kernel_type="triangle", antialias=True)[0].numpy()
  assert two_pass.shape == (size, size, 3)
  np.testing.assert_array_equal(two_pass, reference)


@pytest.mark.parametrize("height,width", [(375, 375), (375, 500), (150, 120)])
def test_resize_square_is_tf_image_resize_bit_for_bit(height, width):
  image = tf.constant(np.random.default_rng(width).integers(0, 256, (height, width, 3), np.uint8))
  reference = tf.image.resize(image, [256, 256], method="bilinear", antialias=True)
  reference = np.clip(np.round(reference.numpy()), 0, 255).astype(np.uint8)
  np.testing.assert_array_equal(ops.resize_square(image, 256).numpy(), reference)


def test_decode_square_crop_of_a_png_is_the_reference_exactly(photo):
  image_bytes = datagen.encode(photo, "PNG")
  view = ops.decode_square_crop(tf.constant(image_bytes), 256, 224, 17, 5).numpy()
  np.testing.assert_array_equal(view, _reference_view(image_bytes, 256, 224, 17, 5))


@pytest.mark.parametrize("size,top,left", [(5, 3, 4), (6, 3, 4), (12, 0, 1)])
def test_central_crop(size, top, left):
  image = coordinate_image(12, 14)
  np.testing.assert_array_equal(ops.central_crop(tf.constant(image), size).numpy(),
                                image[top:top + size, left:left + size])


@pytest.mark.parametrize("crop", [ops.central_crop, ops.ten_crop,
                                  lambda image, size: ops.random_crop(image, size, keys(1)[0])])
def test_crop_larger_than_the_image_is_rejected(crop):
  with pytest.raises(tf.errors.InvalidArgumentError, match="crop larger than the image"):
    crop(tf.constant(coordinate_image(12, 14)), 13)


def test_random_crop_is_a_window_at_every_position_with_equal_odds():
  image = coordinate_image(12, 11)
  size = 5
  crops = [ops.random_crop(tf.constant(image), size, k).numpy() for k in keys(640)]
  positions = []
  for crop in crops:
    top, left = int(crop[0, 0, 0]), int(crop[0, 0, 1])
    np.testing.assert_array_equal(crop, image[top:top + size, left:left + size])
    positions.append((top, left))
  counts = np.zeros((8, 7), int)
  for top, left in positions:
    counts[top, left] += 1
  assert (counts > 0).all()  # all 8 x 7 positions, corners included
  assert counts.max() < 40  # ~11 expected each; a biased draw would pile up
  again = ops.random_crop(tf.constant(image), size, keys(1)[0]).numpy()
  np.testing.assert_array_equal(again, crops[0])  # same key, same crop


def test_random_flip_flag_is_drawn_half_the_time_from_its_key():
  flips = [bool(ops.random_flip_flag(k).numpy()) for k in keys(400)]
  assert 0.42 < np.mean(flips) < 0.58
  assert [bool(ops.random_flip_flag(k).numpy()) for k in keys(20)] == flips[:20]


def test_ten_crop_views_in_documented_order():
  image = coordinate_image(11, 13)
  s = 6
  views = ops.ten_crop(tf.constant(image), s).numpy()
  centre = image[2:8, 3:9]  # margins 5 and 7, rounded down
  crops = [centre, image[:s, :s], image[:s, -s:], image[-s:, :s], image[-s:, -s:]]
  expected = np.stack(crops + [c[:, ::-1] for c in crops])
  np.testing.assert_array_equal(views, expected)
  np.testing.assert_array_equal(views[0], ops.central_crop(tf.constant(image), s).numpy())


# --- PCA lighting and keys ----------------------------------------------------------------------


def test_pca_lighting_shift_is_eigvec_times_scaled_alphas():
  alphas = np.array([0.3, -1.2, 0.05], np.float32)
  expected = np.array(configlib.PCA_EIGVEC) @ (alphas * np.array(configlib.PCA_EIGVAL))
  out = ops.pca_lighting_shift(tf.constant(alphas), configlib.PCA_EIGVAL, configlib.PCA_EIGVEC)
  np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6, atol=1e-7)


def test_pca_lighting_alphas_are_normal_with_sigma():
  alphas = np.stack([ops.pca_lighting_alphas(k, 0.1).numpy() for k in keys(3000)])
  assert alphas.shape == (3000, 3) and alphas.dtype == np.float32
  assert np.abs(alphas.mean(0)).max() < 0.01  # 5 standard errors
  np.testing.assert_allclose(alphas.std(0), 0.1, rtol=0.06)
  corr = np.corrcoef(alphas.T)
  assert np.abs(corr - np.eye(3)).max() < 0.1
  assert not ops.pca_lighting_alphas(keys(1)[0], 0.0).numpy().any()


def test_example_keys_differ_by_seed_epoch_and_id_only():
  base = ops.example_key(3, 5, 7).numpy()
  np.testing.assert_array_equal(ops.example_key(3, 5, 7).numpy(), base)
  for other in [(4, 5, 7), (3, 6, 7), (3, 5, 8)]:
    assert not np.array_equal(ops.example_key(*other).numpy(), base)


# --- inside tf.data ---------------------------------------------------------------------------


OPS_IN_PIPELINE = {
    "center_square": lambda image, key: ops.center_square(image),
    "resize_square": lambda image, key: ops.resize_square(ops.center_square(image), 9),
    "central_crop": lambda image, key: ops.central_crop(image, 5),
    "random_crop": lambda image, key: ops.random_crop(image, 5, key),
    "random_flip_flag": lambda image, key: ops.random_flip_flag(key),
    "ten_crop": lambda image, key: ops.ten_crop(image, 5),
    "pca_lighting": lambda image, key: ops.pca_lighting_shift(
        ops.pca_lighting_alphas(key, 0.1), configlib.PCA_EIGVAL, configlib.PCA_EIGVEC),
}


@pytest.mark.parametrize("name", sorted(OPS_IN_PIPELINE))
def test_op_inside_tf_data_equals_eager(name):
  op = OPS_IN_PIPELINE[name]
  rng = np.random.default_rng(2)
  images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            for h, w in [(12, 15), (14, 9), (10, 10)]]
  eager = [op(tf.constant(im), ops.example_key(0, 1, i)).numpy() for i, im in enumerate(images)]

  def gen():
    yield from enumerate(images)

  ds = tf.data.Dataset.from_generator(gen, output_signature=(
      tf.TensorSpec([], tf.int64), tf.TensorSpec([None, None, 3], tf.uint8)))
  ds = ds.map(lambda i, im: op(im, ops.example_key(0, 1, i)), num_parallel_calls=2)
  for got, want in zip(ds.as_numpy_iterator(), eager, strict=True):
    np.testing.assert_array_equal(got, want)


def test_decode_inside_tf_data_handles_mixed_formats(photo):
  small = photo[:60, :80]
  files = [datagen.encode(small), datagen.encode(small, "PNG"), datagen.encode(small, mode="L"),
           datagen.encode(small, "GIF"), datagen.encode(small, "BMP")]
  ds = tf.data.Dataset.from_tensor_slices(files).map(
      lambda b: ops.resize_square(ops.decode_center_square(b), 16))
  out = list(ds.as_numpy_iterator())
  assert [o.shape for o in out] == [(16, 16, 3)] * 5
  np.testing.assert_array_equal(out[1], ops.resize_square(tf.constant(small[:, 10:70]), 16).numpy())
