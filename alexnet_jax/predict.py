"""Top-k classes of image files under an exported model.

Images are decoded with PIL, not TensorFlow, so prediction runs where TensorFlow is not
installed. The view is the evaluation's centre crop: the central square, resized to the model's
`resize_size` (bilinear, antialiased when shrinking), and its central `input_size` crop.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import numpy as np

from alexnet_jax import classnames
from alexnet_jax import export as export_lib


@dataclasses.dataclass
class Prediction:
  path: str
  top: list[tuple[str, float]]  # (class name, probability), most probable first
  error: str = ""


def load_image(path: str, resize_size: int, crop_size: int) -> np.ndarray:
  """uint8 (crop_size, crop_size, 3); raises ValueError naming the file if it cannot be read."""
  from PIL import Image

  try:
    with Image.open(path) as image:
      image = image.convert("RGB")  # decodes fully: a truncated file fails here
  except FileNotFoundError:
    raise ValueError(f"{path}: no such file") from None
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise ValueError(f"{path}: cannot read image ({' '.join(str(e).split()) or type(e).__name__})"
                     ) from None
  width, height = image.size
  side = min(width, height)
  left, top = (width - side) // 2, (height - side) // 2
  square = image.crop((left, top, left + side, top + side))
  square = square.resize((resize_size, resize_size), Image.Resampling.BILINEAR)
  offset = (resize_size - crop_size) // 2
  return np.asarray(square)[offset:offset + crop_size, offset:offset + crop_size]


def predict(model: export_lib.LoadedModel, paths: Sequence[str], *, top_k: int = 5
            ) -> list[Prediction]:
  """One Prediction per path, in order; unreadable files get `error` and no classes."""
  from alexnet_jax import program

  model = model.float32()
  names = classnames.readable(model.class_names, model.num_classes)
  size, resize = model.cfg.data.crop_size, model.cfg.data.resize_size
  results, images = [], []
  for path in paths:
    try:
      images.append(load_image(path, resize, size))
      results.append(Prediction(path, []))
    except ValueError as e:
      results.append(Prediction(path, [], error=str(e)))
  if images:
    fns = program.model_fns(model.cfg)
    probs_fn = jax.jit(lambda p, s, x: fns.probabilities(model.cfg, p, s, x))
    probs = np.asarray(probs_fn(model.params, model.model_state, np.stack(images)))
    readable = iter(r for r in results if not r.error)
    for p in probs:
      best = np.argsort(-p, kind="stable")[:top_k]
      next(readable).top = [(names[i], float(p[i])) for i in best]
  return results


def format_predictions(predictions: Sequence[Prediction]) -> str:
  lines = []
  for prediction in predictions:
    if prediction.error:
      continue
    lines.append(prediction.path)
    lines += [f"  {rank}. {prob:7.2%}  {name}" for rank, (name, prob) in
              enumerate(prediction.top, 1)]
  return "\n".join(lines)
