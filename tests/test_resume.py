"""Killing a real training process and starting it again loses nothing.

One run is killed with SIGKILL between two checkpoints, killed with SIGKILL while a checkpoint
is being written, stopped with SIGTERM, and finally run to the end, each time with the same
command. Every loss, gradient norm, learning rate and evaluation it logged, and its final
parameters, must be bitwise identical to an uninterrupted run's (same device count, CPU).
"""

import os
import re
import signal

import numpy as np
import pytest

import runs
from alexnet_jax import export

TRAIN_KEYS = ("loss", "top1_err", "top5_err", "lr", "grad_norm", "param_norm")
EVAL_KEYS = ("loss", "top1_err", "top5_err", "count")


def by_step(records, split):
  out = {}
  for r in records:
    if r["split"] == split:
      out.setdefault(r["step"], []).append(r)
  return out


def resumed_from(log: str) -> int:
  match = re.search(r"resuming at step (\d+)", log)
  assert match, log[-2000:]
  return int(match.group(1))


@pytest.mark.long(seconds=30)
def test_killed_and_restarted_run_matches_an_uninterrupted_run(tmp_path):
  reference = runs.reference_run()
  work = str(tmp_path / "run")
  logs = [str(tmp_path / f"attempt{i}.log") for i in range(4)]

  # 1. SIGKILL between checkpoints: two steps after one has been completely written.
  p = runs.start(work, logs[0])

  def past_a_checkpoint():
    done = runs.finished_steps(work)
    return bool(done) and runs.last_train_step(work) >= done[-1] + 2

  runs.wait_for(past_a_checkpoint, p)
  p.kill()
  p.wait()
  complete = runs.finished_steps(work)
  assert complete and complete[-1] < runs.TOTAL_STEPS

  # 2. SIGKILL while a checkpoint is being written (or, should the test never catch a write in
  #    flight, a few steps on).
  seen = len(runs.records(work))
  p = runs.start(work, logs[1])
  start = complete[-1]
  runs.wait_for(lambda: runs.last_train_step(work, seen) > start, p)
  runs.wait_for(lambda: (runs.writing_checkpoint(work)
                         or runs.last_train_step(work, seen) >= start + 8), p, poll=0.0005)
  p.kill()
  p.wait()
  with open(logs[1]) as f:
    assert resumed_from(f.read()) == complete[-1]
  complete = runs.finished_steps(work)
  assert complete[-1] < runs.TOTAL_STEPS

  # 3. SIGTERM: the process finishes its step, saves, and exits with a message saying how to
  #    resume.
  seen = len(runs.records(work))
  p = runs.start(work, logs[2])
  start = complete[-1]
  runs.wait_for(lambda: runs.last_train_step(work, seen) >= start + 2, p)
  p.send_signal(signal.SIGTERM)
  p.wait(timeout=120)
  with open(logs[2]) as f:
    log = f.read()
  assert resumed_from(log) == complete[-1]  # the half-written checkpoint was never loaded
  assert p.returncode == 128 + signal.SIGTERM, log[-3000:]
  assert "Traceback" not in log
  stopped = int(re.search(r"stopped by SIGTERM after step (\d+)", log).group(1))
  assert stopped in runs.finished_steps(work)
  assert "To resume, run the same command again: python " in log and "--workdir " + work in log

  # 4. The same command again runs to the end.
  log = runs.run(work, logs[3])
  assert resumed_from(log) == stopped
  assert not runs.writing_checkpoint(work)  # a half-written leftover is cleaned up

  ref_train, got_train = by_step(runs.records(reference), "train"), by_step(runs.records(work), "train")
  assert sorted(got_train) == list(range(1, runs.TOTAL_STEPS + 1))
  for step, records in got_train.items():
    for record in records:  # steps logged twice (before a kill and after the restart) agree too
      assert {k: record[k] for k in TRAIN_KEYS} == {k: ref_train[step][0][k] for k in TRAIN_KEYS}, step
  ref_eval, got_eval = by_step(runs.records(reference), "eval"), by_step(runs.records(work), "eval")
  assert sorted(got_eval) == sorted(ref_eval) == [8, 16, 24]
  for step, records in got_eval.items():
    for record in records:
      assert {k: record[k] for k in EVAL_KEYS} == {k: ref_eval[step][0][k] for k in EVAL_KEYS}

  # The final parameters, bit for bit.
  a, b = export.from_workdir(reference), export.from_workdir(work)
  assert a.step == b.step == runs.TOTAL_STEPS
  for x, y in zip(export.flatten(a.params, "params").values(),
                  export.flatten(b.params, "params").values()):
    np.testing.assert_array_equal(x, y)


def test_run_directories_hold_no_pickle():
  """Checkpoints are tensorstore arrays plus JSON; nothing in a work directory is a pickle."""
  reference = runs.reference_run()
  files = [os.path.join(d, f) for d, _, names in os.walk(reference) for f in names]
  assert any("checkpoints" in f for f in files)
  for path in files:
    with open(path, "rb") as f:
      head = f.read(2)
    assert not (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")), path


def test_train_traces_the_requested_steps():
  """The reference run asked for steps 3-4 (config.profile_steps): one trace, in its work
  directory, that TensorBoard/XProf open (xplane.pb) and Perfetto opens (trace json)."""
  import glob

  reference = runs.reference_run()
  profile = os.path.join(reference, "profile")
  assert len(glob.glob(os.path.join(profile, "**", "*.xplane.pb"), recursive=True)) == 1
  assert glob.glob(os.path.join(profile, "**", "perfetto_trace.json.gz"), recursive=True)
