"""Metrics to disk: JSON lines (metrics.jsonl) and TensorBoard event files (tb/).

TensorBoard files are written with tensorboardX, which needs no TensorFlow. Only process 0
writes; other processes get a writer that does nothing.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Mapping


class MetricWriter:

  def __init__(self, workdir: str, *, enabled: bool = True):
    self.enabled = enabled
    self._tb = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", buffering=1)
    try:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, "tb"))
    except ImportError:  # TensorBoard files are a convenience; JSON lines are the record
      self._tb = None

  def write(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    clean = {k: (float(v) if math.isfinite(float(v)) else str(float(v))) for k, v in metrics.items()}
    self._jsonl.write(json.dumps({"step": int(step), "split": split, "time": time.time(), **clean})
                      + "\n")
    if self._tb is not None:
      for k, v in metrics.items():
        self._tb.add_scalar(f"{split}/{k}", float(v), int(step))

  def close(self) -> None:
    if not self.enabled:
      return
    self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir: str) -> list[dict]:
  """All records of metrics.jsonl (later records of a resumed run come after earlier ones)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
