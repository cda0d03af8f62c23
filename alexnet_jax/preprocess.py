"""On-device preprocessing: uint8 images to normalised floats, mirrored where drawn, with the PCA
lighting offset.

The input pipeline ships uint8 crops, a per-image mirror flag and a per-image RGB offset (PCA
lighting, in [0, 1] pixel units); this runs inside the jitted train/eval step, so host-to-device
traffic stays uint8 and the host does no per-pixel work but decoding and cropping (mirroring an
image on a CPU costs a fifth of decoding a 256 px JPEG; here it fuses into the normalisation).
"""

from __future__ import annotations

import jax.numpy as jnp


def normalize(images_uint8, rgb_shift, mean, std, dtype=jnp.float32, flip=None) -> jnp.ndarray:
  """(mirrored(images) / 255 + rgb_shift - mean) / std, cast to `dtype`.

  images_uint8: (B, H, W, 3) images or (B, V, H, W, 3) views of each image.
  rgb_shift: (B, 3) per-image offsets added to every pixel (and every view), or None.
  mean, std: per-channel, for pixels scaled to [0, 1]. Computed in float32 before the cast.
  flip: (B,) bool, images mirrored left to right where True (training batches), or None.
  """
  x = jnp.asarray(images_uint8)
  if flip is not None:
    flip = jnp.asarray(flip, bool).reshape((-1,) + (1,) * (x.ndim - 1))
    x = jnp.where(flip, jnp.flip(x, axis=-2), x)  # axis -2: width, for images and views alike
  x = x.astype(jnp.float32) / 255.0
  if rgb_shift is not None:
    shift = jnp.asarray(rgb_shift, jnp.float32)
    # (B, 3) -> (B, 1, ..., 1, 3): one offset per image, broadcast over pixels and views.
    x = x + shift.reshape(shift.shape[:1] + (1,) * (x.ndim - 2) + shift.shape[-1:])
  x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
  return x.astype(dtype)
