"""The first layer's kernels of a trained run (the paper's Figure 3), one row block per tower.

Colour specificity. A kernel w (kh x kw x 3) splits into its grey part g, the mean of its three
colour channels at each pixel (what it sees of luminance), and its colour part w - g:

    colour share(w) = sum (w - g)^2 / sum w^2,   in [0, 1]

0: the same weight in R, G and B at every pixel (colour-agnostic); 1: no response to grey at all
(an R - G opponent kernel); a kernel reading one channel only scores 2/3, and so, on average,
does a kernel of independent random weights, such as a fresh initialisation. A tower's figure is
the mean over its kernels. The paper saw one tower learn mostly colour-agnostic kernels (low
share) and the other colour-specific ones.

On a grey-scale dataset (digits) the three input channels carry the same picture (up to the
per-channel normalisation), so nothing rewards colour-specific kernels: the colour share stays
near its value at initialisation. The paper's effect needs colour images (cifar10, ImageNet).
"""

from __future__ import annotations

import json
import os

import numpy as np

from alexnet_jax.experiments import plotting, runs

RANDOM_SHARE = 2.0 / 3.0  # expected colour share of a kernel of i.i.d. random weights


def colour_share(kernels: np.ndarray) -> np.ndarray:
  """(n, kh, kw, 3) kernels -> (n,) colour shares (see the module docstring)."""
  kernels = np.asarray(kernels, np.float64)
  if kernels.ndim != 4 or kernels.shape[-1] != 3:
    raise ValueError(f"expected (n, kh, kw, 3) kernels, got shape {kernels.shape}")
  grey = kernels.mean(axis=-1, keepdims=True)
  total = np.square(kernels).sum(axis=(1, 2, 3))
  return np.square(kernels - grey).sum(axis=(1, 2, 3)) / np.maximum(total, 1e-30)


def conv1_by_tower(params) -> np.ndarray:
  """params["conv1"]["kernel"] as (towers, n, kh, kw, 3): one entry per tower (1 for one-tower
  models), kernels in output-channel order."""
  kernel = np.asarray(params["conv1"]["kernel"], np.float32)
  if kernel.ndim == 4:  # (kh, kw, 3, n): a single tower
    kernel = kernel[None]
  if kernel.ndim != 5 or kernel.shape[-2] != 3:
    raise runs.ExperimentError(f"conv1's kernel has shape {kernel.shape}; expected "
                               "(towers, kh, kw, 3, n) or (kh, kw, 3, n)")
  return np.transpose(kernel, (0, 4, 1, 2, 3))


def for_display(kernels: np.ndarray) -> np.ndarray:
  """Each kernel scaled on its own, symmetrically: 0 -> mid-grey, its largest |weight| -> 0 or 1,
  so a colour-agnostic kernel shows grey-scale and colour stays colour."""
  peak = np.abs(kernels).max(axis=(1, 2, 3), keepdims=True)
  return 0.5 + 0.5 * kernels / np.maximum(peak, 1e-30)


def summarize(params) -> list[dict]:
  towers = conv1_by_tower(params)
  out = []
  for t, kernels in enumerate(towers):
    share = colour_share(kernels)
    out.append({"tower": t, "kernels": int(len(kernels)), "colour_share_mean": float(share.mean()),
                "colour_share_std": float(share.std()), "colour_share": share.tolist()})
  return out


def draw(params, path: str, *, columns: int = 16, title: str = "") -> tuple[str, list[dict]]:
  """Draw conv1's kernels, a block per tower with its colour share; returns (path, summary)."""
  towers = conv1_by_tower(params)
  summary = summarize(params)
  n, kh = towers.shape[1], towers.shape[2]
  columns = max(1, min(columns, n))
  rows = -(-n // columns)
  pad = max(1, kh // 5)
  fig = plotting.new_figure(0.45 * columns * max(1.0, kh / 8) + 2.6,
                            (0.45 * rows * max(1.0, kh / 8) + 0.4) * len(towers) + 0.5)
  axes = fig.subplots(len(towers), 1, squeeze=False)[:, 0]
  for ax, kernels, info in zip(axes, towers, summary):
    ax.imshow(plotting.tile(for_display(kernels), columns, pad=pad), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    name = f"tower {info['tower'] + 1}" if len(towers) > 1 else "all kernels"
    ax.set_ylabel(name, fontsize=9)
    ax.text(1.02, 0.5, f"colour share\n{info['colour_share_mean']:.3f}\n"
            f"(± {info['colour_share_std']:.3f},\n{info['kernels']} kernels)",
            transform=ax.transAxes, fontsize=8, va="center")
  fig.suptitle(title or f"conv1 kernels ({towers.shape[2]}x{towers.shape[3]}x3); colour share: "
               f"0 = grey-scale, {RANDOM_SHARE:.2f} = random", fontsize=9)
  return plotting.save(fig, path), summary


def run(workdir: str, out: str | None = None, *, step: int | None = None,
        columns: int = 16) -> tuple[str, list[dict], int]:
  """Figure 3 for a trained work directory: PNG + JSON (the numbers) beside it."""
  trained = runs.load_trained(workdir, step)
  out = out or os.path.join(workdir, "kernels.png")
  title = (f"{trained.cfg.model.name} conv1 kernels at step {trained.step}; colour share: "
           f"0 = grey-scale, {RANDOM_SHARE:.2f} = random")
  path, summary = draw(trained.params, out, columns=columns, title=title)
  with open(os.path.splitext(path)[0] + ".json", "w") as f:
    json.dump({"workdir": workdir, "step": trained.step, "model": trained.cfg.model.name,
               "towers": summary}, f, indent=1)
  return path, summary, trained.step
