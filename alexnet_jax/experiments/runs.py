"""Runs for the experiments: train a config in its own work directory; read a trained run back.

A trained run is read from its work directory alone: `config.json` says what model it is, the
latest Orbax checkpoint holds the parameters. The whole train state is restored onto one device
(the optimizer state comes along because the checkpoint stores the state as one item).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Sequence

from alexnet_jax import configlib, metric_writer

log = logging.getLogger("alexnet_jax.experiments")


class ExperimentError(configlib.ConfigError):
  """A work directory or argument an experiment cannot use; printed as one line by the CLI."""


def train_run(cfg, workdir: str) -> dict[str, float]:
  """Train `cfg` in `workdir` as `launch.py train` does (resuming a finished run only evaluates);
  returns the final evaluation's metrics and "diverged": False. A run whose loss became NaN or
  Inf (train.NonFiniteLoss) returns NaN metrics and "diverged": True instead of raising: in an
  experiment over many runs, one unstable setting is a result to report, not a reason to stop."""
  from alexnet_jax import train
  from alexnet_jax.experiments import curves

  try:
    # As `launch.py train`: the config checked in full before anything is written, the run's
    # directory locked while it trains.
    metrics = train.train_and_evaluate(cfg, workdir, after_eval=[curves.write_after_eval])
  except train.NonFiniteLoss as e:
    log.warning("the run in %s diverged: %s", workdir, e)
    return {"top1_err": math.nan, "top5_err": math.nan, "count": math.nan, "diverged": True}
  return {**metrics, "diverged": False}


# The records of one split, latest record of a step winning: with metrics.jsonl's reader.
split_records, read_split = metric_writer.split_records, metric_writer.read_split


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (n - 1); the deviation of a single value is NaN."""
  n = len(values)
  if n == 0:
    return math.nan, math.nan
  mean = sum(values) / n
  if n == 1:
    return mean, math.nan
  return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def format_mean_std(mean: float, std: float, digits: int = 2) -> str:
  if math.isnan(mean):
    return "n/a"
  return f"{mean:.{digits}f}" + ("" if math.isnan(std) else f" ± {std:.{digits}f}")


# --- reading a trained run back -------------------------------------------------------------


@dataclasses.dataclass
class TrainedRun:
  workdir: str
  cfg: Any
  fns: Any  # program.ModelFns
  params: Any  # nested dict, params["conv1"]["kernel"]
  model_state: Any
  step: int
  compiled: dict = dataclasses.field(default_factory=dict)  # jitted functions, reused by callers


def load_trained(workdir: str, step: int | None = None) -> TrainedRun:
  """The run's config and its latest (or given) checkpoint's parameters, on the host."""
  from alexnet_jax import export, program

  try:
    loaded = export.from_workdir(workdir, "latest" if step is None else str(step))
  except export.ExportError as e:
    raise ExperimentError(str(e)) from None
  return TrainedRun(workdir, loaded.cfg, program.model_fns(loaded.cfg), loaded.params,
                    loaded.model_state, int(loaded.step))


def jsonable(value):
  """Plain JSON types: NaN and infinities -> null, numpy scalars and arrays -> numbers and
  lists, keys -> str."""
  import numpy as np

  if isinstance(value, dict):
    return {str(k): jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [jsonable(v) for v in value]
  if isinstance(value, np.ndarray):
    return jsonable(value.tolist())
  if isinstance(value, np.generic):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value
