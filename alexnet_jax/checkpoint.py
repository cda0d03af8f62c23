"""Orbax checkpoints of the train state: when to save, what to keep, how to restore safely.

A checkpoint `checkpoints/<step>/` holds two items:
  state  the TrainState pytree: parameters, BatchNorm statistics, optimizer state, step, and
         the plateau schedule's learning-rate factor (lr_scale);
  meta   JSON: the plateau schedule's bookkeeping, the input position, the RNG description and
         the class names;
plus, for checkpoints written right after an evaluation, Orbax's `metrics` (validation top-1/5).

Everything random is a pure function of (seed, step): dropout keys are
`fold_in(key(seed), step)`, and the input pipeline's order and augmentation are functions of
(seed, epoch, example), with epoch and in-epoch batch = divmod(step, steps_per_epoch). So the
step *is* the RNG state and the input iterator's position; `meta` records both for checking.

Saves are asynchronous (Orbax writes in a background thread after copying the arrays to the
host) and atomic: a step's directory is written under a temporary name and renamed when
complete, so a process killed mid-write leaves no half checkpoint that could be loaded. A
checkpoint damaged afterwards (a truncated or missing file) is moved aside, with a warning, and
the one before it restored.

Restore lays the arrays onto an abstract state (shapes plus the *target* shardings), so a run
saved under one strategy or mesh resumes under another.
"""

from __future__ import annotations

import dataclasses
import errno
import gc
import json
import logging
import os
import re
import shutil
import signal
import time
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers as policies

log = logging.getLogger("alexnet_jax.checkpoint")

BEST_METRIC = "top1_err"  # validation top-1 error: lower is better
DAMAGED_DIR = "damaged"  # where damaged checkpoints are moved, inside the checkpoint directory


class CheckpointError(RuntimeError):
  """No usable checkpoint where one was expected; the message says which and why."""


@dataclasses.dataclass
class Restored:
  step: int
  state: Any
  meta: dict


class Checkpointer:
  """Saves every `every_steps` steps and/or `every_minutes` minutes (0 turns either off), keeps
  the last `keep` checkpoints and, with `keep_best`, the one with the lowest validation top-1
  error among those saved with metrics."""

  def __init__(self, directory: str, *, every_steps: int = 0, every_minutes: float = 0.0,
               keep: int = 3, keep_best: bool = True, async_save: bool = True,
               read_only: bool = False, clock: Callable[[], float] = time.monotonic):
    self.directory = os.path.abspath(directory)
    self.every_steps, self.every_minutes = every_steps, every_minutes
    self._clock = clock
    self.read_only = read_only
    self._last_save_time = clock()
    self._writing: tuple[int, int] | None = None  # (step, bytes) of the last save started
    self._failed = False  # a save failed and was reported: close() does not report it again
    keepers = [policies.LatestN(n=keep)]
    if keep_best:  # descending error: BestN keeps the end of the order, the lowest error
      keepers.append(policies.BestN(get_metric_fn=_error, reverse=True, n=1,
                                    keep_checkpoints_without_metrics=False))
    if read_only and not os.path.isdir(self.directory):
      raise CheckpointError(f"no checkpoints in {self.directory}: is this a training work "
                            "directory? (train writes its checkpoints there)")
    # Orbax reads every step's small JSON files when it opens the directory and fails on a
    # damaged one; such steps are set aside first (and named when a step is restored).
    self._damaged = self._unreadable_steps()
    if jax.process_count() > 1:  # every process sets aside the same steps
      seen = agreed_steps([step for step, _ in self._damaged])
      reasons = dict(self._damaged)
      self._damaged = [(step, reasons.get(step, "damaged as another process sees it"))
                       for step in seen]
    if self._damaged:
      if read_only:
        raise CheckpointError(
            f"checkpoint {self._step_dir(self._damaged[0][0])} is damaged ({self._damaged[0][1]}); "
            "resume training once (it moves damaged checkpoints aside) or remove it")
      self._move_aside([step for step, _ in self._damaged], reload=False)
    state_handler = ocp.PyTreeCheckpointHandler(type_handler_registry=_type_handlers())
    self._state_handler = state_handler
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            # read_only is ours: Orbax's own flag only adds warnings; this object then just
            # never saves, creates or cleans up anything.
            create=not read_only, enable_async_checkpointing=async_save,
            preservation_policy=policies.AnyPreservationPolicy(keepers),
            # Orbax writes a checkpoint's metrics only when it tracks a best_fn.
            best_fn=_error, best_mode="min",
            # Leftovers of a save that was killed mid-write: never loaded, so just removed.
            cleanup_tmp_directories=not read_only),
        item_handlers={"state": state_handler, "meta": ocp.JsonCheckpointHandler()},
    )

  # --- what exists ---

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def best_step(self) -> int | None:
    """The step with the lowest validation top-1 error (the latest of equals), or None."""
    scored = [(m[BEST_METRIC], -step, step) for step in self.all_steps()
              if (m := self.metrics(step)) and BEST_METRIC in m]
    return min(scored)[2] if scored else None

  def metrics(self, step: int) -> dict | None:
    try:
      return self.manager.metrics(step)
    except Exception:  # unreadable metrics: the checkpoint itself may still restore
      return None

  # --- saving ---

  def due(self, step: int, *, sync_point: bool = True) -> bool:
    """Whether the step/time policy asks for a save at `step` (evaluations, the last step and
    stop signals save regardless). With several processes, whose clocks differ, the time rule
    is agreed at sync points only (any process late: all save)."""
    if self.every_steps > 0 and step % self.every_steps == 0:
      return True
    if self.every_minutes <= 0:
      return False
    late = self._clock() - self._last_save_time >= 60.0 * self.every_minutes
    if jax.process_count() == 1:
      return late
    return sync_point and any_process(late)

  def save(self, step: int, state: Any, meta: dict, *, metrics: dict | None = None) -> bool:
    """Start an asynchronous save of `state` at `step`; False if that step is already saved.

    A full disk is workdir.DiskFull naming the checkpoint and the space it needs, raised before
    the write starts when the free space is already short, else from the write (here, from
    `wait` or `close`); either way the previous checkpoint is untouched (a step is written under
    a temporary name and renamed only when complete).
    """
    if self.read_only:
      raise CheckpointError(f"{self.directory} was opened read-only")
    if step in self.manager.all_steps():
      return False
    needed = _state_bytes(state)
    free = _free_bytes(self.directory)
    if free is not None and free < needed:
      self.wait()  # a save still in flight is finished (or reported) first
      self._writing = (step, needed)
      raise self._disk_full()
    self._last_save_time = self._clock()
    try:
      started = self.manager.save(
          step, args=ocp.args.Composite(state=ocp.args.PyTreeSave(state),
                                        meta=ocp.args.JsonSave(meta)),
          metrics=metrics or {}, force=True)  # {}: not evaluated, ranked last by _error
    except KeyboardInterrupt:
      self._discard_unstarted(step)
      raise
    except Exception as e:  # noqa: BLE001 (the previous save's failure surfaces here)
      if not _is_disk_full(e):
        raise
      raise self._disk_full() from None
    self._writing = (step, needed)
    return started

  def _discard_unstarted(self, step: int) -> None:
    """A second Ctrl-C inside Orbax's start of a save (the run stops at once): what Orbax had
    already handed to its writer is finished, and the temporary directory of the save it had
    only begun is removed now, rather than at the next start, so the run stops with its
    checkpoints as they were."""
    self.manager.wait_until_finished()
    if jax.process_index() != 0:
      return
    for name in os.listdir(self.directory):
      if name.startswith(f"{step}.orbax-checkpoint-tmp"):
        shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)

  def _disk_full(self) -> Exception:
    """The one-line error for a save that found the disk full."""
    from alexnet_jax import workdir

    self._failed = True
    gc.collect()  # the failed write's coroutines, finalised now rather than noisily at exit
    step, needed = self._writing or (None, 0)
    done = [s for s in self._finished_steps() if s != step]
    resume = (f"training resumes from {self._step_dir(done[-1])}, which is intact" if done
              else "no checkpoint was completed yet")
    what = f"checkpoint {self._step_dir(step)}" if step is not None else self.directory
    return workdir.DiskFull(workdir.full_message(self.directory, needed, what) + f"; {resume}")

  def _finished_steps(self) -> list[int]:
    try:
      return sorted(int(n) for n in os.listdir(self.directory) if n.isdigit())
    except OSError:
      return []

  # --- restoring ---

  def restore(self, abstract_state: Any, step: int | None = None) -> Restored | None:
    """Restore onto `abstract_state` (ShapeDtypeStructs carrying the target shardings).

    With `step=None`, the latest checkpoint; if it is damaged, it is moved to
    `<directory>/damaged/` with a warning naming both steps, and the one before is tried.
    None if there are no checkpoints; CheckpointError if none of them restores.

    With several processes each candidate counts as restored only if it restored in every
    process (a shard can be unreadable for one process alone), so all of them continue from
    the same step, or all stop with the same error.
    """
    if step is not None:
      try:
        return self._restore(abstract_state, step)
      except Exception as e:
        raise CheckpointError(f"checkpoint {self._step_dir(step)} cannot be restored: "
                              f"{_one_line(e)}") from e
    damaged = list(self._damaged)
    for candidate in reversed(self.all_steps()):
      error = None
      try:
        restored = self._restore(abstract_state, candidate)
      except Exception as e:  # tensorstore, JSON, missing files: all mean "damaged"
        error = _one_line(e)
      if any_process(error is not None):
        damaged.append((candidate, error or "damaged as another process sees it"))
        continue
      if damaged:
        # Moved aside so that this run's own save of that step later is not refused.
        known = {s for s, _ in self._damaged}  # moved aside when the directory was opened
        fresh = [s for s, _ in damaged if s not in known]
        if fresh and not self.read_only:
          self._move_aside(fresh)
        where = ("left in place (read-only)" if self.read_only and fresh
                 else f"moved to {os.path.join(self.directory, DAMAGED_DIR)}")
        log.warning("checkpoint %s is damaged (%s); %s; restored %s instead",
                    ", ".join(self._step_dir(s) for s, _ in damaged), damaged[0][1], where,
                    self._step_dir(candidate))
        self._damaged = []
      return restored
    if damaged:
      raise CheckpointError(
          f"no checkpoint in {self.directory} can be restored (steps "
          f"{', '.join(str(s) for s, _ in damaged)}; latest: {damaged[0][1]}); move the directory "
          "away to start afresh")
    return None

  def _restore(self, abstract_state: Any, step: int) -> Restored:
    # Through the item handlers, not the manager: the manager's restore ends at a barrier of all
    # processes, which a process whose read failed would never reach (the others would wait
    # there for ever instead of agreeing that the step is damaged).
    directory = epath.Path(self._step_dir(step))
    state = self._state_handler.restore(
        directory / "state", args=ocp.args.PyTreeRestore(abstract_state, restore_args=(
            ocp.checkpoint_utils.construct_restore_args(abstract_state))))
    meta = ocp.JsonCheckpointHandler().restore(directory / "meta", args=ocp.args.JsonRestore())
    if not isinstance(meta, dict):
      raise CheckpointError(f"its meta item is {type(meta).__name__}, not a JSON object")
    state_step = int(jax.device_get(getattr(state, "step", step)))
    if state_step != step:
      raise CheckpointError(f"its state says step {state_step}")
    log.info("restored checkpoint %s", self._step_dir(step))
    return Restored(step, state, dict(meta))

  def _step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def _move_aside(self, steps: list[int], *, reload: bool = True) -> None:
    target = os.path.join(self.directory, DAMAGED_DIR)
    if jax.process_index() == 0:
      os.makedirs(target, exist_ok=True)
      for step in steps:
        shutil.move(self._step_dir(step), os.path.join(target, f"{step}-{int(time.time())}"))
    if jax.process_count() > 1:  # nobody lists the directory before process 0 has moved them
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("alexnet_jax: damaged checkpoints moved aside")
    if reload:
      self.manager.reload()

  def _unreadable_steps(self) -> list[tuple[int, str]]:
    """Steps whose checkpoint metadata or metrics (JSON) cannot be parsed, newest first."""
    if not os.path.isdir(self.directory):
      return []
    damaged = []
    for name in sorted((n for n in os.listdir(self.directory) if n.isdigit()), key=int,
                       reverse=True):
      for part in ("_CHECKPOINT_METADATA", os.path.join("metrics", "metrics")):
        path = os.path.join(self.directory, name, part)
        try:
          with open(path) as f:
            json.load(f)
        except FileNotFoundError:
          continue
        except (OSError, ValueError) as e:
          damaged.append((int(name), f"{part}: {_one_line(e)}"))
          break
    return damaged

  # --- lifetime ---

  def wait(self) -> None:
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001
      if not _is_disk_full(e):
        raise
      if not self._failed:
        raise self._disk_full() from None

  def close(self) -> None:
    try:
      self.wait()
    finally:
      try:
        self.manager.close()
      except Exception as e:  # noqa: BLE001 (a failure already reported by wait)
        if not (self._failed and _is_disk_full(e)):
          raise


def _state_bytes(state: Any) -> int:
  """What a checkpoint of `state` takes on disk, about: its arrays' bytes plus Orbax's metadata."""
  return sum(int(getattr(x, "nbytes", 0)) for x in jax.tree.leaves(state)) + 64 * 1024


def _free_bytes(directory: str) -> int | None:
  from alexnet_jax import workdir
  try:
    return workdir.free_bytes(directory)
  except OSError:
    return None


def _is_disk_full(e: BaseException | None) -> bool:
  """Whether `e` (or what caused it) is a write that found no space. TensorStore reports it as a
  ValueError "RESOURCE_EXHAUSTED: ... No space left on device [os_error_code='28']"."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    if "No space left on device" in str(e) or "Disk quota exceeded" in str(e):
      return True
    e = e.__cause__ or e.__context__
  return False


def _error(metrics) -> float:
  return float(metrics.get(BEST_METRIC, float("inf"))) if metrics else float("inf")


def _type_handlers():
  """Orbax's standard handlers, except that a single process writes replicated arrays whole.

  By default Orbax splits every replicated array into one slice per device to write them in
  parallel; each slice is a separate small computation compiled on first use (hundreds for
  AlexNet's state), which made the first save take seconds. Across processes the split is kept:
  there it spreads the writing over hosts.
  """
  th = ocp.type_handlers
  return th.create_type_handler_registry(
      (int, th.ScalarHandler()), (float, th.ScalarHandler()), (bytes, th.ScalarHandler()),
      (np.number, th.ScalarHandler()), (np.ndarray, th.NumpyHandler()),
      (jax.Array, th.ArrayHandler(use_replica_parallel=jax.process_count() > 1)),
      (str, th.StringHandler()),
  )


def _one_line(e: BaseException) -> str:
  text = str(e)
  # TensorStore appends its whole JSON spec ("[tensorstore_spec[1]='{...}']") and a method's
  # repr ("See full TensorStore details: <bound method ...>"): noise in a one-line warning.
  text = re.sub(r"\s*(\[tensorstore_spec|See full TensorStore details:).*", "", text,
                flags=re.DOTALL)
  text = " ".join(text.split()) or type(e).__name__
  return text if len(text) <= 300 else text[:297] + "..."


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs carrying each array's sharding: what restore lays the data onto."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


# --- the host-side part of a checkpoint -----------------------------------------------------


def make_meta(*, step: int, seed: int, steps_per_epoch: int, plateau: dict,
              class_names: tuple[str, ...]) -> dict:
  epoch, batch = divmod(step, steps_per_epoch)
  return {
      "plateau": plateau,
      # The input iterator's position: the next batch is batch `batch` of epoch `epoch`.
      "input": {"step": step, "epoch": epoch, "batch_in_epoch": batch,
                "steps_per_epoch": steps_per_epoch},
      # Nothing random is stateful: dropout keys are fold_in(key(seed), step) and augmentation
      # is keyed by (seed, epoch, example), so the step is the whole RNG state.
      "rng": {"seed": seed, "dropout_key": "fold_in(key(seed), step)",
              "augmentation_key": "(seed, epoch, example)"},
      "class_names": list(class_names),
  }


def check_meta(meta: dict, *, step: int, seed: int, steps_per_epoch: int) -> None:
  """Warn when the run resumes with a different data position than the checkpoint's."""
  saved = meta.get("input", {})
  if saved.get("steps_per_epoch", steps_per_epoch) != steps_per_epoch:
    log.warning("checkpoint at step %d was written with %d steps per epoch, now %d (batch size "
                "or dataset changed): the data order from here differs from the original run's",
                step, saved["steps_per_epoch"], steps_per_epoch)
  if meta.get("rng", {}).get("seed", seed) != seed:
    log.warning("checkpoint at step %d was written with seed %s, now %d", step,
                meta["rng"]["seed"], seed)


# --- stopping on SIGTERM / SIGINT -----------------------------------------------------------


class StopSignals:
  """While active, SIGTERM and SIGINT ask the training loop to stop after the current step
  (it saves and exits); a second SIGINT interrupts at once.

  With several processes the request is agreed at sync points (any process asked: all stop at
  the same step), since each process may receive the signal at a different step.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signum: int | None = None
    self._previous: dict = {}

  def install(self) -> None:
    try:
      for sig in self.SIGNALS:
        if signal.getsignal(sig) is signal.SIG_IGN:
          continue  # ignored on purpose (nohup, a background job): leave it so
        self._previous[sig] = signal.signal(sig, self._handle)
    except ValueError:  # not the main thread: signals cannot be caught here
      self.uninstall()

  def uninstall(self) -> None:
    """Put the previous handlers back."""
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()

  def _handle(self, signum, frame):
    del frame
    if self.signum is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a checkpoint
    self.signum = signum
    log.warning("received %s: finishing the current step, then saving a checkpoint and stopping "
                "(Ctrl-C again to stop at once)", signal.Signals(signum).name)

  def requested(self, *, sync_point: bool) -> bool:
    if jax.process_count() == 1:
      return self.signum is not None
    return sync_point and any_process(self.signum is not None)

  @property
  def name(self) -> str:
    return signal.Signals(self.signum).name if self.signum else ""


def agreed_steps(steps: list[int]) -> list[int]:
  """The union of every process's `steps`, newest first, the same on every process (a
  collective: call it on all of them)."""
  if jax.process_count() == 1:
    return sorted(set(steps), reverse=True)
  from jax.experimental import multihost_utils
  longest = int(np.max(multihost_utils.process_allgather(np.asarray(len(steps)))))
  padded = np.full(max(longest, 1), -1, np.int64)
  padded[:len(steps)] = steps
  every = np.asarray(multihost_utils.process_allgather(padded)).reshape(-1)
  return sorted({int(s) for s in every if s >= 0}, reverse=True)


def any_process(flag: bool) -> bool:
  """True on every process if `flag` is True on any (a collective: call it on all of them)."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils
  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


class Interrupted(Exception):
  """Training stopped on a signal after saving a checkpoint."""

  def __init__(self, step: int, signum: int | None, directory: str):
    self.step, self.signum, self.directory = step, signum, directory
    cause = signal.Signals(signum).name if signum else "a signal to another process"
    super().__init__(f"stopped by {cause} after step {step}; checkpoint saved in "
                     f"{os.path.join(directory, str(step))}")
