"""Small matplotlib helpers: figures on the Agg canvas (no pyplot, no display, no global
backend), image grids, saving."""

from __future__ import annotations

import os

import numpy as np


def new_figure(width_in: float, height_in: float):
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=(width_in, height_in), layout="constrained")
  FigureCanvasAgg(fig)  # attaches itself to fig: savefig renders without pyplot
  return fig


def save(fig, path: str, dpi: int = 100) -> str:
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  # Write then rename: a reader (or a crash) never sees half a PNG.
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
  os.replace(tmp, path)
  return path


def show_image(ax, image: np.ndarray, title: str | None = None, *, fontsize: float = 7,
               color: str = "black") -> None:
  """An HxWx3 image (uint8, or float in [0, 1]) with nearest-neighbour upscaling, no ticks."""
  ax.imshow(image, interpolation="nearest", vmin=0, vmax=1 if image.dtype.kind == "f" else 255)
  ax.set_xticks([])
  ax.set_yticks([])
  if title:
    ax.set_title(title, fontsize=fontsize, color=color, pad=2)


def tile(images: np.ndarray, columns: int, pad: int = 1, fill: float = 1.0) -> np.ndarray:
  """(n, h, w, c) floats -> one (rows*(h+pad)-pad, columns*(w+pad)-pad, c) mosaic, gaps `fill`."""
  n, h, w, c = images.shape
  rows = -(-n // columns)
  out = np.full((rows * (h + pad) - pad, columns * (w + pad) - pad, c), fill, images.dtype)
  for i, image in enumerate(images):
    r, col = divmod(i, columns)
    out[r * (h + pad):r * (h + pad) + h, col * (w + pad):col * (w + pad) + w] = image
  return out
