"""Training curves: loss and top-1/top-5 error, train and validation, vs step, as one PNG.

Read from the work directory's metrics.jsonl. train.py calls `write_after_eval` after every
evaluation (process 0), so `DIR/curves.png` always shows the run so far; `launch.py curves
--workdir DIR` draws it again on demand.
"""

from __future__ import annotations

import logging
import os

from alexnet_jax import configlib, metric_writer
from alexnet_jax.experiments import plotting

log = logging.getLogger("alexnet_jax.curves")

FILENAME = "curves.png"
METRICS = ("loss", "top1_err", "top5_err")


def curve_data(workdir: str) -> dict[str, dict[str, tuple[list[int], list[float]]]]:
  """{split: {metric: (steps, values)}} for split train and eval; one point per logged step."""
  out = {}
  for split in ("train", "eval"):
    records = metric_writer.read_split(workdir, split)
    out[split] = {m: ([r["step"] for r in records if m in r],
                      [float(r[m]) for r in records if m in r]) for m in METRICS}
  return out


def write_training_curves(workdir: str, path: str | None = None) -> tuple[str, dict]:
  """Draw the curves into `path` (default DIR/curves.png); returns (path, the data drawn)."""
  data = curve_data(workdir)
  if not data["train"]["loss"][0] and not data["eval"]["loss"][0]:
    raise configlib.ConfigError(f"{workdir}/metrics.jsonl has no metrics yet; train first")
  fig = plotting.new_figure(9.0, 3.2)
  loss_ax, err_ax = fig.subplots(1, 2)
  styles = {"train": dict(color="tab:blue"), "eval": dict(color="tab:orange", marker="o", ms=3)}
  names = {"train": "train", "eval": "validation"}
  for split, series in data.items():
    steps, values = series["loss"]
    if steps:
      loss_ax.plot(steps, values, label=names[split], **styles[split])
    for metric, dash in (("top1_err", "-"), ("top5_err", "--")):
      steps, values = series[metric]
      if steps:
        err_ax.plot(steps, [100 * v for v in values], linestyle=dash,
                    label=f"{names[split]} top-{metric[3]}", **styles[split])
  loss_ax.set(xlabel="step", ylabel="cross-entropy loss", title="loss")
  err_ax.set(xlabel="step", ylabel="error (%)", title="top-1 (solid) and top-5 (dashed) error",
             ylim=(0, None))
  for ax in (loss_ax, err_ax):
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle(os.path.basename(os.path.abspath(workdir)), fontsize=9)
  path = path or os.path.join(workdir, FILENAME)
  return plotting.save(fig, path), data


def write_after_eval(workdir: str) -> None:
  """The training loop's hook: a plotting failure is logged, never allowed to stop training."""
  try:
    write_training_curves(workdir)
  except Exception as e:  # noqa: BLE001 (a picture must not cost a run)
    log.warning("could not draw %s: %s", os.path.join(workdir, FILENAME), e)
