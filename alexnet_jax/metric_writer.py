"""Metrics to disk: JSON lines (metrics.jsonl) and TensorBoard event files (tb/).

TensorBoard files are written with tensorboardX, which needs no TensorFlow. Only process 0
writes; other processes get a writer that does nothing.

The metrics follow the checkpoint. A run resumed from the checkpoint at step S trains steps
S+1, S+2, ... again, so `MetricWriter(..., resume_step=S)` first drops the records after S that
the killed run had logged (TensorBoard gets the same as its `purge_step`): metrics.jsonl holds
one history, not two interleaved ones. A last line cut short by a kill is removed, never
appended to. Readers skip lines they cannot parse and say so.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import sys
import time
from typing import Mapping, Sequence

log = logging.getLogger("alexnet_jax.metrics")

FILENAME = "metrics.jsonl"


class MetricWriter:

  def __init__(self, workdir: str, *, enabled: bool = True, resume_step: int | None = None):
    """resume_step: the step the run restarts from (0 for a fresh start); records logged after
    it are dropped first. None keeps every record."""
    self.enabled = enabled
    self._tb = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, FILENAME)
    repair(self.path, resume_step)
    self._jsonl = open(self.path, "a", buffering=1)
    try:
      SummaryWriter = _summary_writer_class()
      tb_dir = os.path.join(workdir, "tb")
      # purge_step: TensorBoard hides the older files' events at steps >= it.
      resumed = resume_step is not None and os.path.isdir(tb_dir) and os.listdir(tb_dir)
      self._tb = SummaryWriter(tb_dir, purge_step=resume_step + 1 if resumed else None)
    except ImportError:  # TensorBoard files are a convenience; JSON lines are the record
      self._tb = None

  def write(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    clean = {k: (float(v) if math.isfinite(float(v)) else str(float(v))) for k, v in metrics.items()}
    line = json.dumps({"step": int(step), "split": split, "time": time.time(), **clean}) + "\n"
    try:
      self._jsonl.write(line)
    except OSError as e:
      from alexnet_jax import workdir
      raise workdir.disk_error(e, self.path, len(line)) from None
    if self._tb is not None:
      for k, v in metrics.items():
        self._tb.add_scalar(f"{split}/{k}", float(v), int(step))

  def close(self) -> None:
    """Close both files. Called on the way out of a failed run too: a full disk here (the last
    JSON line, or TensorBoard's buffered events, which its writer thread flushes when it likes)
    must not replace the error that named what could not be written."""
    if not self.enabled:
      return
    for file in (self._jsonl, self._tb):
      try:
        if file is not None:
          file.close()
      except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
          raise


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported without its probe for PyTorch.

  tensorboardX's writer module tries `import torch` when it loads, only so that its add_*
  methods accept torch tensors; this writer passes floats. Where PyTorch is installed that probe
  costs more than a second of every run's start-up, so it is made to fail (a None entry in
  sys.modules makes `import torch` raise ImportError) while tensorboardX loads, and the entry is
  removed afterwards: torch stays importable for everything else.
  """
  if "torch" in sys.modules or "tensorboardX" in sys.modules:
    from tensorboardX import SummaryWriter
    return SummaryWriter
  sys.modules["torch"] = None
  try:
    from tensorboardX import SummaryWriter
  finally:
    if sys.modules.get("torch", 0) is None:
      del sys.modules["torch"]
  return SummaryWriter


def parse_lines(text: str) -> tuple[list[dict], int]:
  """(the records of a metrics.jsonl text, how many non-empty lines could not be parsed)."""
  records, bad = [], 0
  for line in text.splitlines():
    if not line.strip():
      continue
    try:
      record = json.loads(line)
      int(record["step"])
      str(record["split"])
    except (ValueError, TypeError, KeyError):
      bad += 1
      continue
    records.append(record)
  return records, bad


def repair(path: str, resume_step: int | None) -> None:
  """Drop a cut-off last line, unparseable lines and, with `resume_step`, the records after it;
  the file is rewritten atomically, and only if something is dropped."""
  try:
    with open(path, "rb") as f:
      raw = f.read()
  except FileNotFoundError:
    return
  text = raw.decode("utf-8", errors="replace")
  records, bad = parse_lines(text)
  kept = [r for r in records if resume_step is None or int(r["step"]) <= resume_step]
  cut_off = bool(text) and not text.endswith("\n")
  if not bad and len(kept) == len(records) and not cut_off:
    return
  from alexnet_jax import workdir
  workdir.write_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))
  if bad:
    log.warning("%s: dropped %d line%s that could not be parsed (cut off by a kill?)", path, bad,
                "" if bad == 1 else "s")
  if len(kept) < len(records):
    log.info("%s: dropped %d records after step %d, the step this run resumes from", path,
             len(records) - len(kept), resume_step)


def read_metrics(workdir: str) -> list[dict]:
  """All records of metrics.jsonl (later records of a resumed run come after earlier ones);
  lines that cannot be parsed are skipped with a warning naming the file and their count."""
  path = os.path.join(workdir, FILENAME)
  if not os.path.exists(path):
    return []
  with open(path, "rb") as f:
    records, bad = parse_lines(f.read().decode("utf-8", errors="replace"))
  if bad:
    log.warning("%s: skipped %d line%s that could not be parsed", path, bad, "" if bad == 1 else "s")
  return records


def split_records(records: Sequence[dict], split: str) -> list[dict]:
  """The records of `split`, one per step, sorted by step. Where a step was logged twice (a
  file written before resumes dropped later records), the later record wins: it belongs to the
  run that went on."""
  by_step = {}
  for record in records:
    if record.get("split") == split:
      by_step[int(record["step"])] = record
  return [by_step[s] for s in sorted(by_step)]


def read_split(workdir: str, split: str) -> list[dict]:
  return split_records(read_metrics(workdir), split)
