"""A profiler trace of a few training steps (config.profile_steps).

    python launch.py train ... --config.profile_steps=10-12

traces steps 10 to 12 (counted from 1, as the logs and checkpoints count them; "5" is one step,
"" is off) with JAX's profiler and writes the trace under `WORKDIR/profile`:
`plugins/profile/<time>/<host>.xplane.pb` for XProf or TensorBoard's profile plugin
(`tensorboard --logdir WORKDIR/profile`, or `xprof WORKDIR/profile`), and
`perfetto_trace.json.gz` next to it for https://ui.perfetto.dev. Each traced step is marked
with a step annotation ("train", step_num), which XProf's per-step views read.

Skip the first steps: step 1 includes compilation. The trace stops only after the last traced
step's outputs are ready, so the device work of that step is in it (steps are dispatched
asynchronously).
"""

from __future__ import annotations

import glob
import logging
import os

import jax

from alexnet_jax import configlib

log = logging.getLogger(__name__)

FIELD = "config.profile_steps"
parse = configlib.parse_profile_steps  # "10-12" -> (10, 12); the config layer validates it


class StepProfiler:
  """Starts JAX's profiler before the first step of `spec` and stops it after the last.

  Call `step_started(step)` before dispatching step `step` (counted from 1),
  `step_finished(step, outputs)` after it (with what the step returned: the trace waits for it),
  and `close()` at the end (it stops a trace that is still running, e.g. when training ended or
  was interrupted inside the range). With several processes each writes its own folder,
  `profile/process_<i>`; pass `enabled=False` where a process should trace nothing.
  """

  def __init__(self, spec: str, workdir: str, *, enabled: bool = True):
    self.steps = parse(spec)
    self.spec = spec
    self.enabled = enabled and self.steps is not None
    self.directory = os.path.join(workdir, "profile")
    if jax.process_count() > 1:
      self.directory = os.path.join(self.directory, f"process_{jax.process_index()}")
    self.running = False
    self.finished = False
    self._first_traced = None
    self._annotation = None

  def _in_range(self, step: int) -> bool:
    return self.steps[0] <= step <= self.steps[1]

  def step_started(self, step: int) -> None:
    if not self.enabled or self.finished or not self._in_range(step):
      return
    if not self.running:
      os.makedirs(self.directory, exist_ok=True)
      jax.profiler.start_trace(self.directory, create_perfetto_trace=True)
      self.running, self._first_traced = True, step
      log.info("profiling steps %d-%d into %s", step, self.steps[1], self.directory)
    self._annotation = jax.profiler.StepTraceAnnotation("train", step_num=step)
    self._annotation.__enter__()

  def step_finished(self, step: int, outputs=None) -> None:
    if not self.running:
      return
    if self._annotation is not None:
      self._annotation.__exit__(None, None, None)
      self._annotation = None
    if step >= self.steps[1]:
      jax.block_until_ready(outputs)  # the step's device work belongs in the trace
      self._stop(step)

  def close(self) -> None:
    """Stop a trace that is still running; say so if the requested steps never ran."""
    if self.running:
      if self._annotation is not None:
        self._annotation.__exit__(None, None, None)
        self._annotation = None
      self._stop(None)
    elif self.enabled and not self.finished:
      log.warning("%s=%r: training never reached those steps; no profile written", FIELD,
                  self.spec)
      self.enabled = False

  def _stop(self, last: int | None) -> None:
    jax.profiler.stop_trace()
    self.running, self.finished = False, True
    traces = sorted(glob.glob(os.path.join(self.directory, "plugins", "profile", "*",
                                           "*.xplane.pb")), key=os.path.getmtime)
    where = os.path.dirname(traces[-1]) if traces else self.directory
    if last is None:
      steps = f"steps from {self._first_traced} (stopped before {self.steps[1]})"
    else:
      steps = f"step {last}" if last == self._first_traced else f"steps {self._first_traced}-{last}"
    log.info("profile of %s written to %s: open it with `tensorboard --logdir %s` (or xprof), "
             "or load perfetto_trace.json.gz from there into https://ui.perfetto.dev", steps,
             where, self.directory)
