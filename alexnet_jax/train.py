"""Training: the loop around the program that alexnet_jax.program builds.

Flow of `train_and_evaluate(cfg, workdir)`:
  input    - dataset info (its size shapes the schedule)
  validate - program.validate and the dataset's metadata, then the work directory is locked
  program  - program.build: mesh, model, optimizer, state shardings, the batch
             feeds (which rows this process loads), the jitted train and eval steps
  state    - restored from the latest checkpoint onto the program's shardings, or created
  loop     - batches fed by the program's feed, progress, metrics, evaluation, plateau
             schedule, checkpoints, stop signals
"""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax import checkpoint as ckpt_lib
from alexnet_jax import configlib
from alexnet_jax import distributed
from alexnet_jax import optim
from alexnet_jax import profiling
from alexnet_jax import program as program_lib
from alexnet_jax import workdir as workdir_lib
from alexnet_jax.metric_writer import MetricWriter

log = logging.getLogger("alexnet_jax.train")


def run_eval(program: program_lib.Program, params, model_state, cfg=None) -> dict[str, float]:
  """The program's eval step over one pass of the config's eval split: every example counted
  exactly once (mask), whatever the process layout."""
  from alexnet_jax import data  # the input pipeline; imports TensorFlow lazily

  cfg = cfg or program.cfg
  rows = program.eval_feed.rows
  return program.evaluate(params, model_state, data.eval_iterator(
      cfg, shard_index=rows.index, shard_count=rows.count))


# --- the loop -------------------------------------------------------------------------------


def _mean_metrics(history: list[dict]) -> dict[str, float]:
  fetched = jax.device_get(history)
  return {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}


def _first_nonfinite(history: list[dict], first_step: int) -> tuple[int, str] | None:
  """(step, what) of the first update with a NaN/Inf loss, gradient or parameter norm; steps
  counted as in metrics.jsonl (the n-th update is step n)."""
  for i, m in enumerate(jax.device_get(history)):
    for key, what in (("loss", "the training loss"), ("grad_norm", "the gradients"),
                      ("param_norm", "the parameters")):
      if not math.isfinite(float(m[key])):
        return first_step + i + 1, what
  return None


class NonFiniteLoss(RuntimeError):
  pass


def train_and_evaluate(cfg, workdir: str, *,
                       after_eval: Sequence[Callable[[str], None]] = ()) -> dict[str, float]:
  """Train `cfg` in `workdir` (resuming from its latest checkpoint), return final eval metrics.

  The config is validated once (program.validate, then against the dataset) before anything is
  written; then the work directory is checked and locked and its config.json written
  (workdir.open_run), so a refused command leaves it as it was. `after_eval`: functions of the
  work directory that process 0 calls after every evaluation, once its metrics are written (the
  command line redraws DIR/curves.png there).
  """
  from alexnet_jax import data  # the input pipeline; imports TensorFlow lazily

  plan = program_lib.validate(cfg)
  info = data.dataset_info(cfg)
  configlib.check_against_dataset(cfg, info)
  with workdir_lib.open_run(cfg, workdir):
    return _train(cfg, workdir, plan, info, after_eval)


def _train(cfg, workdir: str, plan: program_lib.Plan, info,
           after_eval: Sequence[Callable[[str], None]]) -> dict[str, float]:
  from alexnet_jax import data

  is_main = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)  # process 0 made it under the lock; on a shared disk too
  # --- input: the dataset's size shapes the schedule ---
  steps_per_epoch = data.steps_per_epoch(cfg, info)
  total_steps = max(1, int(round(cfg.num_epochs * steps_per_epoch)))
  eval_every = max(1, int(round(cfg.eval_every_epochs * steps_per_epoch)))

  # --- the program: mesh, model, optimizer, shardings, feeds, jitted steps ---
  program = program_lib.build(cfg, plan=plan, steps_per_epoch=steps_per_epoch,
                              total_steps=total_steps)
  plateau = optim.Plateau.from_config(cfg.optim)

  # --- state: restored onto this program's shardings (any strategy or mesh can resume), or
  # created straight into them ---
  checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                                       every_steps=cfg.checkpoint_every_steps,
                                       every_minutes=cfg.checkpoint_every_minutes,
                                       keep=cfg.keep_checkpoints,
                                       keep_best=cfg.keep_best_checkpoint)
  restored = checkpointer.restore(program.abstract_state())
  if restored is None:
    state = program.create_state()
  else:
    state = restored.state
    plateau.load_state_dict(restored.meta["plateau"])
    ckpt_lib.check_meta(restored.meta, step=restored.step, seed=cfg.seed,
                        steps_per_epoch=steps_per_epoch)
  start_step = int(state.step)
  log.info("model %s: %s parameters; %d devices in %d process%s, mesh %s, strategy %s "
           "(each process loads rows block %d of %d); %d steps/epoch, %d steps; %s",
           cfg.model.name, f"{program.num_params:,}", jax.device_count(), jax.process_count(),
           "es" if jax.process_count() > 1 else "", dict(program.mesh.shape),
           program.strategy.name, program.train_feed.rows.index, program.train_feed.rows.count,
           steps_per_epoch, total_steps,
           f"resuming at step {start_step}" if start_step else "starting fresh")
  train_step = program.train_step

  def evaluate() -> dict[str, float]:
    return run_eval(program, state.params, state.model_state)

  # --- loop ---
  writer = MetricWriter(workdir, enabled=is_main, resume_step=start_step)
  progress = _progress_bar(cfg, total_steps, start_step, enabled=is_main)
  distributed.wait_for_peers("training starts")  # process 0 alone opened the writers
  history: list[dict] = []
  history_start, last_log_time, last_log_step = start_step, time.perf_counter(), start_step
  eval_metrics: dict[str, float] = {}

  def meta(done: int) -> dict:
    return ckpt_lib.make_meta(step=done, seed=cfg.seed, steps_per_epoch=steps_per_epoch,
                              plateau=plateau.state_dict(), class_names=info.class_names)

  def check_finite():
    """Before every log line and every save: no checkpoint of a NaN/Inf state is written."""
    bad = _first_nonfinite(history, history_start)
    if bad is not None:
      checkpointer.wait()
      last = checkpointer.latest_step()
      kept = (f"the last good checkpoint (step {last}) is kept" if last is not None
              else "no checkpoint had been written yet")
      raise NonFiniteLoss(f"{bad[1]} became NaN or Inf at step {bad[0]}; stopped, and {kept}. "
                          "Lower config.optim.learning_rate or check the data.")

  rows = program.train_feed.rows
  batches = program.train_feed.prefetch(
      data.train_iterator(cfg, start_step=start_step, shard_index=rows.index,
                          shard_count=rows.count), cfg.data.prefetch)
  stop = ckpt_lib.StopSignals()
  profiler = profiling.StepProfiler(cfg.profile_steps, workdir)
  try:
    stop.install()
    for step in range(start_step, total_steps):
      done = step + 1  # steps are counted from 1, as in the logs and checkpoints
      profiler.step_started(done)
      state, metrics = train_step(state, next(batches))
      profiler.step_finished(done, metrics)
      history.append(metrics)
      log_step = done % cfg.log_every_steps == 0 or done == total_steps
      if log_step:
        check_finite()
        now = time.perf_counter()
        summary = _mean_metrics(history)
        summary["img_per_s"] = (done - last_log_step) * cfg.batch_size / (now - last_log_time)
        writer.write(done, "train", summary)
        progress.update(done - progress.n)
        progress.set_postfix(loss=f"{summary['loss']:.3f}", top1_err=f"{summary['top1_err']:.3f}",
                             img_s=f"{summary['img_per_s']:.0f}")
        if not cfg.progress and is_main:
          log.info("step %d/%d loss %.4f top1_err %.4f lr %.3g %.0f img/s", done, total_steps,
                   summary["loss"], summary["top1_err"], summary["lr"], summary["img_per_s"])
        history, history_start, last_log_time, last_log_step = [], done, now, done
      evaluated = done % eval_every == 0 or done == total_steps
      if evaluated:
        eval_metrics = evaluate()
        writer.write(done, "eval", eval_metrics)
        if is_main:
          for hook in after_eval:
            hook(workdir)
        log.info("eval at step %d: loss %.4f top1_err %.4f top5_err %.4f (%d examples)", done,
                 eval_metrics["loss"], eval_metrics["top1_err"], eval_metrics["top5_err"],
                 eval_metrics["count"])
        if cfg.optim.schedule == "plateau" and plateau.observe(eval_metrics["top1_err"]):
          # Placed like the state's own factor: an uncommitted array would recompile the step.
          state = state.replace(lr_scale=jax.device_put(
              jnp.asarray(plateau.scale, jnp.float32), program.state_shardings.lr_scale))
          log.info("validation error stopped improving: learning rate x%g (drop %d of %d)",
                   plateau.factor, plateau.drops, plateau.max_drops)
      stopping = stop.requested(sync_point=log_step)
      # Every evaluation is saved with its metrics, so the best checkpoint can be kept.
      if evaluated or stopping or done == total_steps or checkpointer.due(done, sync_point=log_step):
        check_finite()
        checkpointer.save(done, state, meta(done), metrics=(
            {k: eval_metrics[k] for k in ("top1_err", "top5_err", "loss")} if evaluated else None))
      if stopping and done < total_steps:
        raise ckpt_lib.Interrupted(done, stop.signum, checkpointer.directory)
    if start_step >= total_steps:
      eval_metrics = evaluate()
  finally:
    profiler.close()
    progress.close()
    checkpointer.close()  # waits for the last save; a signal meanwhile does not cut it short
    writer.close()
    stop.uninstall()
  return eval_metrics


def _progress_bar(cfg, total: int, initial: int, *, enabled: bool):
  from tqdm.auto import tqdm
  return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
              disable=not (enabled and cfg.progress), desc="train")
