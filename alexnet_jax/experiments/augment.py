"""The augmentation sheet: what the training pipeline makes of a few images, epoch by epoch.

Row i is one training example: its resized source square, then its network input in epochs
0, 1, 2, ... (random crop, mirror, PCA lighting), exactly as training sees it. The lighting
offset is applied as the train step applies it (`preprocess.normalize` with the image's
rgb_shift), here with mean 0 and std 1 so the result is a displayable [0, 1] picture.
`lighting_gain` multiplies the offset for display only, to make a small shift visible.
"""

from __future__ import annotations

import json
import os

import numpy as np

from alexnet_jax.experiments import plotting, runs


def displayed(images: np.ndarray, rgb_shift: np.ndarray, gain: float = 1.0) -> np.ndarray:
  """uint8 (..., H, W, 3) + per-image (..., 3) offsets -> float [0, 1], as the train step adds
  them (before its mean/std normalisation)."""
  from alexnet_jax import preprocess

  lead = images.shape[:-3]
  flat = images.reshape((-1,) + images.shape[-3:])
  shift = (gain * rgb_shift).reshape(-1, 3)
  x = preprocess.normalize(flat, shift, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
  return np.clip(np.asarray(x), 0.0, 1.0).reshape(lead + images.shape[-3:])


def run(cfg, out: str, *, images: int = 6, epochs: int = 6,
        lighting_gain: float = 1.0) -> tuple[str, dict]:
  """Draw the sheet into `out` (PNG) and the offsets into a JSON beside it."""
  from alexnet_jax.data import samples

  if lighting_gain < 0:
    raise runs.ExperimentError(f"--lighting-gain {lighting_gain} must be >= 0")
  views = samples.train_views(cfg, images, epochs)
  n = len(views["label"])
  shown = displayed(views["image"], views["rgb_shift"], lighting_gain)  # (epochs, n, c, c, 3)
  fig = plotting.new_figure(1.25 * (epochs + 1), 1.3 * n + 0.6)
  axes = fig.subplots(n, epochs + 1, squeeze=False)
  for i in range(n):
    source = f"source {views['square'].shape[1]}px\nlabel {views['label'][i]}"
    plotting.show_image(axes[i, 0], views["square"][i], source, fontsize=6)
    for e in range(epochs):
      r, g, b = views["rgb_shift"][e, i]
      plotting.show_image(axes[i, e + 1], shown[e, i],
                          f"epoch {e}\nRGB {r:+.3f} {g:+.3f} {b:+.3f}", fontsize=5)
  d = cfg.data
  settings = (f"{d.name}: random {d.crop_size}px crop of {d.resize_size}px: {d.random_crop}, "
              f"mirror: {d.flip}, PCA lighting sigma {d.pca_lighting}")
  if lighting_gain != 1.0:
    settings += f"; lighting offset shown x{lighting_gain:g}"
  fig.suptitle(f"the training pipeline, seed {cfg.seed}\n{settings}", fontsize=8)
  path = plotting.save(fig, out)
  numbers = {"example_id": views["example_id"].tolist(), "label": views["label"].tolist(),
             "rgb_shift": views["rgb_shift"].tolist(), "lighting_gain": lighting_gain,
             "seed": cfg.seed}
  with open(os.path.splitext(path)[0] + ".json", "w") as f:
    json.dump(numbers, f, indent=1)
  return path, views
