"""A work directory holds one run: the lock that keeps a second process out, the check that a
command's config belongs to the run already there, and atomic writes into it.

The lock is `fcntl.flock` on `DIR/.lock`, held by an open file for the whole command. The kernel
releases it when the process ends in any way (exit, crash, `kill -9`), so a lock left by a dead
process cannot exist: the next command simply takes it. The file itself stays (deleting a lock
file races with a process about to lock it); it records the holder's pid, host, command and
start time so that a refusal can name them. With several processes (hosts) only process 0 locks:
the others may be on hosts that share the directory over a network filesystem, and they follow
process 0 anyway.

What takes the lock: `train` (and the experiments' training runs, `relu-tanh` and `ablate`,
for each run and for their root), and `compare` (its output directory). Commands that only read
a run (`export`, `evaluate`, `kernels`, `features`, `neighbours`, `curves`) do not lock: they
work on a run in progress, read its checkpoints read-only, and write only their own output file
(atomically: written under a temporary name, then renamed).

Nothing is written into a work directory before the command's config has been checked in full
(`open_run`): a rejected command leaves the directory as it was, byte for byte.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shlex
import socket
import sys
import logging
import time
from typing import Iterator

from alexnet_jax import configlib

log = logging.getLogger("alexnet_jax.workdir")

LOCK_NAME = ".lock"
CONFIG_NAME = "config.json"
# The fields that make a run what it is: resuming with any other value would mix two experiments.
# (Everything else, such as num_epochs or the learning rate, may change on resume.)
IDENTITY_FIELDS = ("model", "data.name", "data.crop_size", "seed")


class WorkdirError(configlib.ConfigError):
  """A work directory that cannot be used as asked; the message says why and what to do."""


class DiskFull(configlib.ConfigError):
  """A write failed for lack of space; the message names the file and the space it needed."""


# --- the lock ---------------------------------------------------------------------------------


def command_line() -> str:
  """This process's command as a user would type it again."""
  argv = list(sys.argv) or ["launch.py"]
  argv = (["python"] + argv) if argv[0].endswith(".py") else [os.path.basename(argv[0])] + argv[1:]
  return shlex.join(argv)


class Lock:
  """An exclusive lock on a work directory, held until `release` (or the process ends)."""

  def __init__(self, workdir: str, command: str | None = None):
    self.workdir = workdir
    self.path = os.path.join(workdir, LOCK_NAME)
    self._file = None
    check_usable(workdir)
    try:
      os.makedirs(workdir, exist_ok=True)
      # No O_TRUNC: a refused process must not erase the holder's record.
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise _os_error(e, workdir) from None
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      os.close(fd)
      if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
        raise WorkdirError(busy_message(workdir, read_holder(self.path))) from None
      raise _os_error(e, workdir) from None
    self._file = os.fdopen(fd, "r+")
    record = {"pid": os.getpid(), "host": socket.gethostname(),
              "command": command or command_line(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
      self._file.truncate(0)
      self._file.write(json.dumps(record) + "\n")
      self._file.flush()
    except OSError:  # the record is for messages only: a full disk must not stop the run here
      pass

  def release(self) -> None:
    if self._file is not None:
      self._file.close()  # closing the descriptor releases the flock
      self._file = None

  def __enter__(self) -> "Lock":
    return self

  def __exit__(self, *exc) -> None:
    self.release()


def read_holder(path: str) -> dict:
  try:
    with open(path) as f:
      record = json.loads(f.read() or "{}")
    return record if isinstance(record, dict) else {}
  except (OSError, ValueError):
    return {}


def busy_message(workdir: str, holder: dict) -> str:
  who = f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}"
  what = f" ({holder['command']})" if holder.get("command") else ""
  since = f" since {holder['since']}" if holder.get("since") else ""
  return (f"work directory {workdir} is in use by {who}{what}{since}; wait for it to finish or "
          "pass another --workdir")


@contextlib.contextmanager
def locked(workdir: str, *, enabled: bool = True) -> Iterator[Lock | None]:
  """`with locked(DIR):` holds DIR's lock for the block; `enabled=False` (processes other than
  0) holds nothing."""
  if not enabled:
    yield None
    return
  lock = Lock(workdir)
  try:
    yield lock
  finally:
    lock.release()


# --- checking a directory and its run ---------------------------------------------------------


def check_usable(workdir: str) -> None:
  """A path that cannot be a work directory: a file, or a directory this process cannot write."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(f"work directory {workdir} is a file, not a directory; pass another "
                       "--workdir")
  if os.path.isdir(workdir) and not os.access(workdir, os.W_OK | os.X_OK):
    why = ("on a read-only filesystem" if os.statvfs(workdir).f_flag & os.ST_RDONLY
           else "not writable by this user")
    raise WorkdirError(f"work directory {workdir} is {why}; fix its permissions or pass "
                       "another --workdir")


def read_config(workdir: str):
  """The run's config.json as a ConfigDict, or None if the directory holds no run yet."""
  path = os.path.join(workdir, CONFIG_NAME)
  if not os.path.lexists(path):
    return None
  try:
    with open(path) as f:
      text = f.read()
    return configlib.from_json(text)
  except OSError as e:
    raise WorkdirError(f"{path} cannot be read ({e.strerror}); fix its permissions or pass "
                       "another --workdir") from None
  except (ValueError, TypeError, AttributeError) as e:
    raise WorkdirError(f"{path} is damaged ({_short(e)}): the run's record cannot be read; "
                       "restore it from a copy or pass another --workdir") from None


def differences(old, new, fields=IDENTITY_FIELDS) -> list[str]:
  """'config.FIELD (OLD there, NEW now)' for each leaf of `fields` that differs."""
  out = []
  for field in fields:
    a, b = _get(old, field), _get(new, field)
    a = a.to_dict() if hasattr(a, "to_dict") else a
    b = b.to_dict() if hasattr(b, "to_dict") else b
    out += _leaf_differences(f"config.{field}", a, b)
  return out


def _leaf_differences(name: str, a, b) -> list[str]:
  if isinstance(a, dict) and isinstance(b, dict):
    out = []
    for key in sorted(set(a) | set(b)):
      out += _leaf_differences(f"{name}.{key}", a.get(key, "(unset)"), b.get(key, "(unset)"))
    return out
  if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
    a, b = tuple(a), tuple(b)
  return [] if a == b else [f"{name} ({a!r} there, {b!r} now)"]


def _get(cfg, field: str):
  node = cfg
  for part in field.split("."):
    if part not in node:
      return "(unset)"
    node = node[part]
  return node


def check_run(workdir: str, cfg) -> None:
  """Refuse a config of another run than the one in `workdir` (naming each differing field)."""
  check_usable(workdir)
  old = read_config(workdir)
  if old is None:
    return
  diffs = differences(old, cfg)
  if diffs:
    shown = ", ".join(diffs[:3]) + (f" and {len(diffs) - 3} more" if len(diffs) > 3 else "")
    raise WorkdirError(f"work directory {workdir} holds a run with a different {shown}; pass "
                       "another --workdir to start a new run, or the run's own settings to "
                       "resume it")


# --- writing ----------------------------------------------------------------------------------


def write_atomic(path: str, data: bytes | str) -> None:
  """Write `path` whole or not at all: a temporary file, flushed to disk, then renamed over it."""
  raw = data.encode() if isinstance(data, str) else data
  tmp = f"{path}.tmp{os.getpid()}"
  try:
    with open(tmp, "wb") as f:
      f.write(raw)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except OSError as e:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise disk_error(e, path, len(raw)) from None


def disk_error(e: OSError, path: str, needed: int) -> Exception:
  """DiskFull naming `path` and the space needed for ENOSPC/EDQUOT; other errors as they are."""
  if getattr(e, "errno", None) not in (errno.ENOSPC, errno.EDQUOT):
    return e
  return DiskFull(full_message(path, needed))


def full_message(path: str, needed: int | None = None, what: str = "") -> str:
  """One line for a write that found the disk full: where, how much it needed, what is free."""
  parts = [f"needs about {format_bytes(needed)}"] if needed else []
  try:
    parts.append(f"{format_bytes(free_bytes(path))} free")
  except OSError:
    pass
  detail = f" ({', '.join(parts)})" if parts else ""
  return (f"no space left on the device writing {what or path}{detail}; free some space and run "
          "the same command again")


def free_bytes(path: str) -> int:
  """Free bytes on the filesystem holding `path` (or its nearest existing parent)."""
  path = os.path.abspath(path)
  while not os.path.exists(path):
    path = os.path.dirname(path)
  st = os.statvfs(path)
  return st.f_bavail * st.f_frsize


def format_bytes(n: float) -> str:
  for unit in ("bytes", "KiB", "MiB", "GiB"):
    if n < 1024 or unit == "GiB":
      return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
    n /= 1024
  return f"{n:.1f} GiB"


def _os_error(e: OSError, workdir: str) -> Exception:
  if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
    return WorkdirError(f"work directory {workdir} is not writable ({e.strerror}); fix its "
                        "permissions or pass another --workdir")
  if e.errno in (errno.ENOTDIR, errno.EEXIST):
    return WorkdirError(f"work directory {workdir}: a part of the path is a file ({e.strerror}); "
                        "pass another --workdir")
  return disk_error(e, os.path.join(workdir, LOCK_NAME), 4096)


def _short(e: BaseException) -> str:
  text = " ".join(str(e).split()) or type(e).__name__
  return text if len(text) <= 120 else text[:117] + "..."


# --- starting a run ---------------------------------------------------------------------------


@contextlib.contextmanager
def open_run(cfg, workdir: str) -> Iterator[None]:
  """Check `cfg` against the run in `workdir`, then lock the directory and write config.json;
  the lock is held until the block ends. The caller has validated `cfg` itself already
  (train.train_and_evaluate): a command refused before or here has written nothing. Only
  process 0 locks and writes; every process checks."""
  import jax

  check_run(workdir, cfg)
  is_main = jax.process_index() == 0
  if is_main:
    for line in configlib.describe_model_choices(cfg):
      log.info("%s", line)
  with locked(workdir, enabled=is_main):
    if is_main:
      check_run(workdir, cfg)  # again under the lock: another run may have started meanwhile
      # A resume may change fields outside IDENTITY_FIELDS (more epochs); the record follows.
      write_atomic(os.path.join(workdir, CONFIG_NAME), configlib.to_json(cfg))
    yield
