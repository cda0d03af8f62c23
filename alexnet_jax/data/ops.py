"""Preprocessing ops: small pure TensorFlow functions, used inside tf.data maps.

Images are uint8 (height, width, 3) tensors. Random ops are stateless: each takes a `key`, a
shape-[2] integer tensor made by `example_key(seed, epoch, example_id)`, so an example gets the
same crop, flip and lighting whenever its (seed, epoch) comes round again, on any process.

The paper's preprocessing is "rescale the shorter side to S, take the central S x S". Here the
central square is cut first (in the original pixels) and then resized to S x S: the same view up
to a sub-pixel, and it lets JPEG decoding skip the sides that would be thrown away.

Training from full-size JPEG files goes one step further, "crop before you resize"
(`decode_square_crop`): the crop's window of the square is decoded and resized straight to
crop x crop, with the same sample positions and weights as resizing the whole square and then
cropping (equal within 1 grey level on a few pixels in 10^5, from float rounding; tested).
"""

from __future__ import annotations

from typing import Sequence

from alexnet_jax.data._tf import tf

# --- keys --------------------------------------------------------------------------------------


def example_key(seed, epoch, example_id) -> tf.Tensor:
  """The random key of one example in one epoch: a function of (seed, epoch, example_id) only."""
  epoch_key = tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64)])
  return tf.random.experimental.stateless_fold_in(epoch_key, tf.cast(example_id, tf.int64))


def split_key(key, num: int) -> list[tf.Tensor]:
  """`num` independent keys from one (one per random decision of an example)."""
  return tf.unstack(tf.random.experimental.stateless_split(key, num))


# --- decoding and the central square -----------------------------------------------------------


def center_square_window(height, width):
  """(top, left, side) of the largest centred square."""
  side = tf.minimum(height, width)
  return (height - side) // 2, (width - side) // 2, side


def center_square(image: tf.Tensor) -> tf.Tensor:
  shape = tf.shape(image)
  top, left, side = center_square_window(shape[0], shape[1])
  return image[top:top + side, left:left + side]


def decode_center_square(image_bytes: tf.Tensor) -> tf.Tensor:
  """Decode an encoded image to RGB uint8 and keep its central square.

  The format is read from the bytes, not the file name (ILSVRC2012 has PNG data in a .JPEG).
  JPEGs decode only the square (decode_and_crop_jpeg skips whole blocks outside it; same pixels
  as decoding everything and cropping); PNG, GIF (first frame) and BMP decode whole. channels=3
  turns grey and CMYK into RGB.
  """

  def jpeg():
    shape = tf.io.extract_jpeg_shape(image_bytes)
    top, left, side = center_square_window(shape[0], shape[1])
    return tf.io.decode_and_crop_jpeg(image_bytes, tf.stack([top, left, side, side]), channels=3)

  def other():
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    return center_square(image)

  square = tf.cond(tf.io.is_jpeg(image_bytes), jpeg, other)
  square.set_shape([None, None, 3])
  return square


def resize_square(image: tf.Tensor, size: int) -> tf.Tensor:
  """Resize to size x size: bilinear, antialiased when shrinking (as PIL does), rounded to uint8.

  An image already size x size is returned as it is: the resize would give the same pixels
  (tested) and costs more than decoding a 256 px JPEG (pre-resized datasets, `launch.py prepare`).
  """
  def resize():
    # = tf.image.resize(image, [size, size], "bilinear", antialias=True), bit for bit (tested),
    # in two 1-D passes: about 40% less CPU.
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    resized = _scale_and_translate(image, size, size / shape, tf.zeros([2]))
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)

  shape = tf.shape(image)
  same = tf.logical_and(tf.equal(shape[0], size), tf.equal(shape[1], size))
  out = tf.cond(same, lambda: tf.cast(image, tf.uint8), resize)
  out.set_shape([size, size, image.shape[-1]])
  return out


# --- crop before resize (training from files) ----------------------------------------------------


def _scale_and_translate(image: tf.Tensor, size: int, scale, translation) -> tf.Tensor:
  """ScaleAndTranslate (antialiased triangle) of one (h, w, c) image to float (size, size, c),
  scale and translation (rows, columns), as two one-dimensional passes: rows, then columns
  (transposed).

  Bit-identical to the single 2-D op (the kernel is separable and computes it the same way;
  the other axis, of length 1 at scale 1, is an exact identity: tested), and about 40% less
  CPU: each pass sees an image one pixel wide whose w * c values are its channels, so the
  kernel's innermost loop runs over hundreds of contiguous values instead of 3.
  """

  def resample_rows(x, axis_scale, shift):
    shape = tf.shape(x)
    flat = tf.reshape(x, tf.stack([1, shape[0], 1, shape[1] * shape[2]]))
    out = tf.raw_ops.ScaleAndTranslate(
        images=flat, size=tf.constant([size, 1]), scale=tf.stack([axis_scale, 1.0]),
        translation=tf.stack([shift, 0.0]), kernel_type="triangle", antialias=True)
    return tf.reshape(out, tf.stack([size, shape[1], shape[2]]))

  rows = resample_rows(image, scale[0], translation[0])
  columns = resample_rows(tf.transpose(rows, [1, 0, 2]), scale[1], translation[1])
  return tf.transpose(columns, [1, 0, 2])


def _needed_span(offset, crop: int, inv_scale, side):
  """[first, end) of the source rows (or columns) that output rows offset..offset+crop-1 of a
  side -> side / inv_scale antialiased bilinear resize read (ScaleAndTranslate's spans), widened
  by one pixel each way against float rounding, clipped to the image."""
  radius = tf.maximum(inv_scale, 1.0)  # the triangle kernel's radius in source pixels
  first = tf.math.ceil((tf.cast(offset, tf.float32) + 0.5) * inv_scale - radius - 0.5) - 1
  last = tf.math.floor((tf.cast(offset + crop, tf.float32) - 0.5) * inv_scale + radius - 0.5) + 1
  first = tf.clip_by_value(tf.cast(first, tf.int32), 0, side - 1)
  last = tf.clip_by_value(tf.cast(last, tf.int32), 0, side - 1)
  return first, last + 1


def margin_window(top, left, crop: int, side, xp):
  """(row0, col0, row1, col1): the crop at (top, left) of a side x side square and one more pixel
  each way where the square has one. libjpeg's chroma upsampling replicates a decoded window's
  edge pixels, so a window cut at the crop's edge would differ there from decoding the square.
  `xp`: tf.math or numpy (the file pipeline works the windows out in numpy, a block at a time).
  """
  return (xp.maximum(top - 1, 0), xp.maximum(left - 1, 0),
          xp.minimum(top + crop + 1, side), xp.minimum(left + crop + 1, side))


def decode_square_crop(image_bytes: tf.Tensor, size: int, crop: int, top, left) -> tf.Tensor:
  """The crop x crop window at (top, left) of `resize_square(decode_center_square(bytes), size)`,
  computed from only the source pixels that window reads: "crop before you resize".

  Same view as the reference (decode the square, resize it to size x size, crop): each output
  pixel samples the same source position with the same antialiased triangle (bilinear) weights,
  clipped and renormalised at the same square edges, because the decoded window covers every
  tap of every output pixel (`_needed_span`) and the resize is told where the window lies
  (ScaleAndTranslate's translation). Only float rounding differs: at most 1 grey level, on a
  tiny fraction of pixels (tested). JPEGs decode just that window (decode_and_crop_jpeg), and
  a square already size x size (pre-resized data) is not resampled at all: the window is the
  crop itself, pixel for pixel. Other formats decode whole and take the reference path.

  Damaged JPEGs: libjpeg reads only up to the window's last row, so damage below it goes
  unnoticed (decode_and_crop_jpeg fills what it cannot read, as for the central square of
  `decode_center_square`); damage it reaches fails the decode, and the split puts a black
  image in its place.
  """
  top, left = tf.cast(top, tf.int32), tf.cast(left, tf.int32)

  def jpeg():
    shape = tf.io.extract_jpeg_shape(image_bytes)
    square_top, square_left, side = center_square_window(shape[0], shape[1])

    def decode_window(row0, row1, col0, col1):
      return tf.io.decode_and_crop_jpeg(
          image_bytes, tf.stack([square_top + row0, square_left + col0, row1 - row0, col1 - col0]),
          channels=3)

    def exact():
      # The square is size x size already (pre-resized data): no resampling.
      row0, col0, row1, col1 = margin_window(top, left, crop, side, tf.math)
      return _crop(decode_window(row0, row1, col0, col1), top - row0, left - col0, crop)

    def resampled():
      inv_scale = tf.cast(side, tf.float32) / size
      row0, row1 = _needed_span(top, crop, inv_scale, side)
      col0, col1 = _needed_span(left, crop, inv_scale, side)
      window = decode_window(row0, row1, col0, col1)
      scale = size / tf.cast(side, tf.float32)
      # Output pixel i of the window's resize samples window pixel (i + 0.5 - t) / scale - 0.5;
      # t = first * scale - offset makes that the square's (offset + i + 0.5) / scale - 0.5.
      translation = tf.stack([tf.cast(row0, tf.float32) * scale - tf.cast(top, tf.float32),
                              tf.cast(col0, tf.float32) * scale - tf.cast(left, tf.float32)])
      resized = _scale_and_translate(window, crop, tf.stack([scale, scale]), translation)
      # Triangle weights are >= 0 and sum to 1: values stay in [0, 255], no clipping needed.
      return tf.cast(tf.round(resized), tf.uint8)

    return tf.cond(tf.equal(side, size), exact, resampled)

  def other():
    square = resize_square(decode_center_square(image_bytes), size)
    return _crop(square, top, left, crop)

  view = tf.cond(tf.io.is_jpeg(image_bytes), jpeg, other)
  view.set_shape([crop, crop, 3])
  return view


# --- crops and flips -----------------------------------------------------------------------------


def _crop(image: tf.Tensor, top, left, size: int) -> tf.Tensor:
  return tf.slice(image, tf.stack([top, left, 0]), [size, size, -1])


def _assert_fits(image: tf.Tensor, size: int) -> list[tf.Operation]:
  # Config validation rejects crop_size > resize_size first; this guards direct callers.
  shape = tf.shape(image)
  return [tf.debugging.assert_greater_equal(tf.minimum(shape[0], shape[1]), size,
                                            message="crop larger than the image")]


def central_crop(image: tf.Tensor, size: int) -> tf.Tensor:
  """The size x size crop at the centre (offsets rounded down when the margin is odd)."""
  with tf.control_dependencies(_assert_fits(image, size)):
    shape = tf.shape(image)
    return _crop(image, (shape[0] - size) // 2, (shape[1] - size) // 2, size)


def random_crop_offsets(key, height, width, size: int):
  """(top, left) of a size x size crop in a height x width image, uniformly random.

  Both from one draw (fewer ops: the training pipeline runs this per image, and each op costs
  microseconds there): independent uniform integers, via a product range for non-squares.
  """
  rows, cols = height - size + 1, width - size + 1
  position = tf.random.stateless_uniform([], key, 0, rows * cols, dtype=tf.int32)
  return position // cols, position % cols


def random_crop(image: tf.Tensor, size: int, key) -> tf.Tensor:
  """A size x size crop at a uniformly random position (every position equally likely)."""
  with tf.control_dependencies(_assert_fits(image, size)):
    shape = tf.shape(image)
    top, left = random_crop_offsets(key, shape[0], shape[1], size)
    return _crop(image, top, left, size)


def random_flip_flag(key) -> tf.Tensor:
  """Whether to mirror left-right (probability 1/2): the train step mirrors on the device."""
  return tf.random.stateless_uniform([], key) < 0.5


def ten_crop(image: tf.Tensor, size: int) -> tf.Tensor:
  """The paper's 10 test views, shape (10, size, size, 3), in this order:

  0 centre, 1 top-left, 2 top-right, 3 bottom-left, 4 bottom-right, then 5..9 the left-right
  mirrors of views 0..4. View 0 is exactly `central_crop`, so centre-crop results are a slice.
  """
  with tf.control_dependencies(_assert_fits(image, size)):
    shape = tf.shape(image)
    bottom, right = shape[0] - size, shape[1] - size
    corners = [(bottom // 2, right // 2), (0, 0), (0, right), (bottom, 0), (bottom, right)]
    crops = [_crop(image, top, left, size) for top, left in corners]
    return tf.stack(crops + [tf.reverse(crop, axis=[1]) for crop in crops])


# --- PCA lighting ----------------------------------------------------------------------------


def pca_lighting_alphas(key, sigma: float) -> tf.Tensor:
  """The paper's alpha_i ~ N(0, sigma), one per eigenvector (shape (3,), float32)."""
  return sigma * tf.random.stateless_normal([3], key, dtype=tf.float32)


def pca_lighting_shift(alphas, eigval: Sequence[float], eigvec: Sequence[Sequence[float]]):
  """The RGB offset [p1 p2 p3] [a1*l1, a2*l2, a3*l3]^T; eigvec's columns are the p_i.

  In units of pixels scaled to [0, 1]; added to every pixel later, on the device
  (alexnet_jax.preprocess.normalize).
  """
  eigvec = tf.constant(eigvec, tf.float32)
  return tf.linalg.matvec(eigvec, alphas * tf.constant(eigval, tf.float32))
