"""One work directory, one run: the lock, the run check, atomic writes, and metrics that follow
the checkpoint (records after the restored step dropped, cut-off lines repaired)."""

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import types

import pytest

from alexnet_jax import configlib
from alexnet_jax import metric_writer
from alexnet_jax import workdir as W
from alexnet_jax.metric_writer import MetricWriter, read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- the lock ---------------------------------------------------------------------------------

HOLD = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {repo!r})
    from alexnet_jax import workdir
    lock = workdir.Lock({path!r}, command="python launch.py train --workdir X")
    print("locked", flush=True)
    time.sleep(60)
""")


def _holder(path):
  """A separate process holding the lock on `path` until killed."""
  p = subprocess.Popen([sys.executable, "-c", HOLD.format(repo=REPO, path=path)],
                       stdout=subprocess.PIPE, text=True)
  assert p.stdout.readline().strip() == "locked"
  return p


def test_a_second_process_is_refused_naming_the_holder_and_a_killed_one_leaves_no_lock(tmp_path):
  path = str(tmp_path / "run")
  p = _holder(path)
  try:
    with pytest.raises(W.WorkdirError) as e:
      W.Lock(path)
    message = str(e.value)
    assert f"in use by pid {p.pid} on host " in message
    assert "(python launch.py train --workdir X) since " in message
    assert "pass another --workdir" in message
  finally:
    p.send_signal(signal.SIGKILL)  # no clean-up of any kind: the kernel drops the flock
    p.wait()
  with W.Lock(path) as lock:  # taken over at once
    record = json.loads(open(lock.path).read())
    assert record["pid"] == os.getpid()
  W.Lock(path).release()  # released on exit from the block


def test_the_lock_is_per_directory_and_not_reentrant_across_opens(tmp_path):
  a = W.Lock(str(tmp_path / "a"))
  b = W.Lock(str(tmp_path / "b"))  # another directory: independent
  with pytest.raises(W.WorkdirError, match="in use by pid"):
    W.Lock(str(tmp_path / "a"))  # flock is per open file: the same process is refused too
  a.release()
  b.release()


def test_locked_is_a_no_op_on_other_processes(tmp_path):
  with W.locked(str(tmp_path / "x"), enabled=False) as lock:
    assert lock is None
  assert not (tmp_path / "x").exists()


def test_unusable_directories(tmp_path):
  file = tmp_path / "file"
  file.write_text("x")
  with pytest.raises(W.WorkdirError, match="is a file, not a directory"):
    W.Lock(str(file))
  with pytest.raises(W.WorkdirError, match="a part of the path is a file"):
    W.Lock(str(file / "sub"))


# --- the run check ----------------------------------------------------------------------------


def test_a_mismatch_names_each_differing_field_not_whole_dicts(tmp_path):
  old = configlib.base_config()
  (tmp_path / "config.json").write_text(configlib.to_json(old))
  new = configlib.base_config()
  new.model.width, new.seed = 0.5, 3
  with pytest.raises(W.WorkdirError) as e:
    W.check_run(str(tmp_path), new)
  message = str(e.value)
  assert "config.model.width (1.0 there, 0.5 now)" in message
  assert "config.seed (0 there, 3 now)" in message
  assert "lrn_alpha" not in message  # the unchanged fields of the section are not printed
  assert "\n" not in message
  new.model.width, new.seed = 1.0, 0
  new.num_epochs = 7.0  # not part of a run's identity: resuming with more epochs is fine
  W.check_run(str(tmp_path), new)


def test_a_damaged_config_json_is_one_line(tmp_path):
  (tmp_path / "config.json").write_text('{"model": {"name": "sm')
  with pytest.raises(W.WorkdirError, match="config.json is damaged"):
    W.check_run(str(tmp_path), configlib.base_config())


# --- atomic writes and a full disk ------------------------------------------------------------


def test_write_atomic_leaves_the_old_file_on_a_full_disk(tmp_path, monkeypatch):
  path = tmp_path / "f.json"
  path.write_text("old")
  real_fsync = os.fsync

  def full(fd):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(os, "fsync", full)
  with pytest.raises(W.DiskFull) as e:
    W.write_atomic(str(path), "x" * 5000)
  assert f"writing {path} (needs about 4.9 KiB, " in str(e.value) and " free)" in str(e.value)
  monkeypatch.setattr(os, "fsync", real_fsync)
  assert path.read_text() == "old" and os.listdir(tmp_path) == ["f.json"]  # no temporary left


# --- metrics that follow the checkpoint -------------------------------------------------------


def _lines(n, split="train"):
  return "".join(json.dumps({"step": s, "split": split, "loss": 1.0 / s}) + "\n"
                 for s in range(1, n + 1))


def test_resume_drops_the_records_after_the_restored_step(tmp_path):
  (tmp_path / "metrics.jsonl").write_text(_lines(12))
  writer = MetricWriter(str(tmp_path), resume_step=10)
  writer.write(11, "train", {"loss": 0.5})
  writer.close()
  steps = [r["step"] for r in read_metrics(str(tmp_path))]
  assert steps == list(range(1, 12))  # 11 once: the killed run's 11 and 12 are gone
  assert read_metrics(str(tmp_path))[-1]["loss"] == 0.5


def test_a_fresh_start_drops_everything_and_none_keeps_everything(tmp_path):
  (tmp_path / "metrics.jsonl").write_text(_lines(3))
  MetricWriter(str(tmp_path), resume_step=None).close()
  assert len(read_metrics(str(tmp_path))) == 3
  MetricWriter(str(tmp_path), resume_step=0).close()  # killed before its first checkpoint
  assert read_metrics(str(tmp_path)) == []


TENSORBOARD_WITHOUT_TORCH = """
import os, sys
from alexnet_jax.metric_writer import MetricWriter
writer = MetricWriter(sys.argv[1])
writer.write(3, "train", {"loss": 0.25})
writer.close()
print("torch loaded:", "torch" in sys.modules)
import torch  # still importable afterwards
print("torch importable:", torch.tensor([1.0]).item() == 1.0)
"""


def test_tensorboard_files_are_written_without_loading_pytorch(tmp_path):
  """tensorboardX probes `import torch` when it loads (over a second of every run's start where
  PyTorch is installed): the writer loads it without the probe and torch stays importable."""
  out = subprocess.run([sys.executable, "-c", TENSORBOARD_WITHOUT_TORCH, str(tmp_path)],
                       env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "torch loaded: False" in out.stdout and "torch importable: True" in out.stdout
  (events,) = [f for f in os.listdir(tmp_path / "tb") if "tfevents" in f]
  assert b"train/loss" in (tmp_path / "tb" / events).read_bytes()


class _ClosesWith:
  """Stands in for TensorBoard's writer: its close flushes buffered events and can fail."""

  def __init__(self, code):
    self.code = code

  def close(self):
    raise OSError(self.code, os.strerror(self.code))


def test_a_full_disk_at_close_does_not_hide_the_error_that_stopped_the_run(tmp_path):
  """close() runs on the way out of a run stopped by a full disk (a checkpoint that could not be
  written); TensorBoard's events, flushed by its own thread when it likes, then fail to write too
  and must not replace that one-line error. Other errors still surface."""
  writer = MetricWriter(str(tmp_path))
  writer.write(1, "train", {"loss": 0.5})
  writer._tb.close()
  writer._tb = _ClosesWith(errno.ENOSPC)
  writer.close()
  assert read_metrics(str(tmp_path))[-1]["loss"] == 0.5
  writer = MetricWriter(str(tmp_path))
  writer._tb.close()
  writer._tb = _ClosesWith(errno.EIO)
  with pytest.raises(OSError, match="Input/output error"):
    writer.close()


def test_a_cut_off_last_line_is_removed_not_appended_to(tmp_path, caplog):
  path = tmp_path / "metrics.jsonl"
  path.write_text(_lines(4) + '{"step": 5, "split": "tra')
  with caplog.at_level(logging.WARNING):
    writer = MetricWriter(str(tmp_path), resume_step=4)
  writer.write(5, "train", {"loss": 0.1})
  writer.close()
  assert "dropped 1 line that could not be parsed" in caplog.text
  lines = path.read_text().splitlines()
  assert len(lines) == 5 and all(json.loads(line) for line in lines)


def test_readers_skip_what_they_cannot_parse_and_say_so(tmp_path, caplog):
  (tmp_path / "metrics.jsonl").write_text(_lines(2) + "garbage\n{\"no_step\": 1}\n" + _lines(1))
  with caplog.at_level(logging.WARNING):
    records = read_metrics(str(tmp_path))
  assert [r["step"] for r in records] == [1, 2, 1]
  assert f"{tmp_path / 'metrics.jsonl'}: skipped 2 lines that could not be parsed" in caplog.text


def test_curves_read_a_damaged_file(tmp_path):
  from alexnet_jax.experiments import curves
  (tmp_path / "metrics.jsonl").write_text(_lines(3) + _lines(2, "eval") + '{"step": 4, "spl')
  path, data = curves.write_training_curves(str(tmp_path))
  assert os.path.getsize(path) > 1000 and data["train"]["loss"][0] == [1, 2, 3]


def test_tensorboard_gets_the_purge_step(tmp_path, monkeypatch):
  import tensorboardX
  seen = {}
  real = tensorboardX.SummaryWriter

  def spy(logdir, **kw):
    seen.update(kw)
    return real(logdir, **kw)

  monkeypatch.setattr(tensorboardX, "SummaryWriter", spy)
  MetricWriter(str(tmp_path), resume_step=0).close()  # no events yet: nothing to purge
  assert seen["purge_step"] is None
  MetricWriter(str(tmp_path), resume_step=7).close()
  assert seen["purge_step"] == 8  # events at steps >= 8 (after the checkpoint) are hidden


def test_a_full_disk_while_logging_is_one_line_naming_the_file(tmp_path):
  writer = MetricWriter(str(tmp_path))

  class Full:
    def write(self, text):
      raise OSError(errno.ENOSPC, "No space left on device")

  writer._jsonl = Full()
  with pytest.raises(W.DiskFull, match=r"metrics.jsonl \(needs about \d+ bytes"):
    writer.write(1, "train", {"loss": 1.0})
  assert metric_writer.FILENAME == "metrics.jsonl"


# --- Orbax's leftovers are not printed as crashes ---------------------------------------------


def test_orbax_leftovers_are_dropped_and_other_unraisables_kept(monkeypatch):
  """What a damaged checkpoint's abandoned reads leave (sometimes dozens, depending on timing)
  is dropped; any other 'exception ignored' still reaches the previous hook."""
  from alexnet_jax import cli

  seen = []
  monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(u.exc_value))
  cli._quiet_unraisable()
  cli._quiet_unraisable()  # idempotent: not wrapped twice

  # Only its code object's file matters: a coroutine of Orbax's serialization module.
  orbax_coroutine = types.SimpleNamespace(cr_code=compile(
      "pass", os.path.join("site-packages", "orbax", "serialization.py"), "exec"))

  def unraisable(exc, obj=None):
    sys.unraisablehook(types.SimpleNamespace(exc_type=type(exc), exc_value=exc,
                                             exc_traceback=None, err_msg=None, object=obj))

  unraisable(RuntimeError("Event loop is closed"))
  unraisable(ImportError("sys.meta_path is None, Python is likely shutting down"))
  unraisable(Exception("Encountered error while reading array index"), orbax_coroutine)
  # A second Ctrl-C inside Orbax's save: the event loop it interrupted mid-construction fails in
  # its own __del__ (a real traceback from a real run under load).
  import asyncio
  half_made = asyncio.base_events.BaseEventLoop.__del__
  unraisable(AttributeError("'_UnixSelectorEventLoop' object has no attribute '_debug'"), half_made)
  assert seen == []
  other = ValueError("a real problem")
  unraisable(other)
  unraisable(RuntimeError("Event loop is running"))
  unraisable(AttributeError("another attribute"), other)
  assert seen[0] is other and len(seen) == 3


def test_orbax_log_noise_is_filtered_and_other_records_kept():
  from alexnet_jax import cli

  def record(message, exc=None, name="absl"):
    return logging.LogRecord(name, logging.ERROR, __file__, 1, message, (),
                             (type(exc), exc, None) if exc else None)

  noise = cli._CheckpointNoise()
  assert not noise.filter(record("thread failed", ValueError(
      "RESOURCE_EXHAUSTED: ... No space left on device [os_error_code='28']")))
  assert not noise.filter(record("Save Finalize thread failed", KeyboardInterrupt()))
  # Orbax's thread still starting a save a second Ctrl-C cut short, as Python shuts down.
  assert not noise.filter(record("_SignalingThread.run() raised an exception: cannot schedule "
                                 "new futures after shutdown",
                                 RuntimeError("cannot schedule new futures after shutdown")))
  assert noise.filter(record("thread failed", RuntimeError("another runtime error")))
  assert not noise.filter(record("Future exception was never retrieved\nfuture: <Future "
                                 "exception=ValueError('FAILED_PRECONDITION: Error reading in "
                                 "OCDBT database')>", name="asyncio"))
  assert noise.filter(record("Future exception was never retrieved: something else",
                             name="asyncio"))
  assert noise.filter(record("thread failed", ValueError("a real problem")))
