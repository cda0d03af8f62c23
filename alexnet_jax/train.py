"""Training: the train state, the jitted train and eval steps, and the loop.

Flow of `train_and_evaluate(cfg, workdir)`:
  mesh     - the strategy's mesh over every device
  input    - dataset info; per-process numpy batches (alexnet_jax.data)
  model    - the Flax NNX module, split into a static graphdef and pure-dict parameters
  shard    - state shapes first (eval_shape), shardings from the strategy, then init or restore
  update   - one pure jitted train step: (state, batch) -> (state, metrics), state donated
  loop     - progress bar, metrics, evaluation, plateau schedule, checkpoints
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from typing import Any, Callable, Iterator

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from alexnet_jax import checkpoint as ckpt_lib
from alexnet_jax import configlib
from alexnet_jax import model as model_lib
from alexnet_jax import optim
from alexnet_jax import preprocess
from alexnet_jax import sharding as shard_lib
from alexnet_jax.experiments import curves
from alexnet_jax.metric_writer import MetricWriter

log = logging.getLogger("alexnet_jax.train")


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: updates applied so far
  params: Any  # nested dict of float32 arrays, e.g. params["conv1"]["kernel"]
  model_state: Any  # BatchNorm statistics ({} for models without)
  opt_state: Any
  lr_scale: jax.Array  # the plateau schedule's factor (1, 0.1, 0.01, ...)


# --- the model as pure functions ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ModelFns:
  """The model's static structure plus pure functions of (params, model_state)."""
  graphdef: Any
  init: Callable[[jax.Array], tuple[Any, Any]]  # key -> (params, model_state)

  def apply(self, params, model_state, images, *, train, dropout_key=None, tower_map=None,
            constrain=None):
    """-> (logits, new model_state)."""
    model = nnx.merge(self.graphdef, params, model_state)
    logits = model(images, train=train, dropout_key=dropout_key, tower_map=tower_map,
                   constrain=constrain)
    return logits, nnx.to_pure_dict(nnx.state(model, nnx.Not(nnx.Param)))

  def embed(self, params, model_state, images, *, tower_map=None, constrain=None):
    """Images -> fc7 activations (inference mode)."""
    model = nnx.merge(self.graphdef, params, model_state)
    return model.embed(images, train=False, tower_map=tower_map, constrain=constrain)[0]


def model_fns(cfg) -> ModelFns:
  def build(key):
    return model_lib.create_model(cfg.model, cfg.data.crop_size, nnx.Rngs(params=key))

  def init(key):
    _, params, rest = nnx.split(build(key), nnx.Param, ...)
    return nnx.to_pure_dict(params), nnx.to_pure_dict(rest)

  graphdef, _, _ = nnx.split(nnx.eval_shape(lambda: build(jax.random.key(0))), nnx.Param, ...)
  return ModelFns(graphdef, init)


# --- losses and metrics ---------------------------------------------------------------------


def label_rank(scores: jax.Array, labels: jax.Array) -> jax.Array:
  """How many classes score strictly higher than the true one (0 = top-1 correct)."""
  true_score = jnp.take_along_axis(scores, labels[:, None], axis=-1)
  return jnp.sum(scores > true_score, axis=-1)


def train_metrics(logits, labels, mask) -> dict[str, jax.Array]:
  weights = mask.astype(jnp.float32)
  count = jnp.maximum(weights.sum(), 1.0)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  rank = label_rank(logits, labels)
  return {
      "loss": (losses * weights).sum() / count,
      "top1_err": ((rank >= 1) * weights).sum() / count,
      "top5_err": ((rank >= 5) * weights).sum() / count,
  }


# --- the steps ------------------------------------------------------------------------------


def make_train_step(cfg, fns: ModelFns, tx: optax.GradientTransformation, schedule: Callable,
                    tower_map: model_lib.TowerMap | None = None,
                    constrain: model_lib.Constrain | None = None) -> Callable:
  mean, std = tuple(cfg.data.mean), tuple(cfg.data.std)
  dtype = model_lib.DTYPES[cfg.model.dtype]
  seed = cfg.seed

  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    images = preprocess.normalize(batch["image"], batch.get("rgb_shift"), mean, std, dtype)
    # Dropout randomness is a pure function of (seed, step): a resumed run draws the same masks.
    dropout_key = jax.random.fold_in(jax.random.key(seed), state.step)

    def loss_fn(params):
      logits, model_state = fns.apply(params, state.model_state, images, train=True,
                                      dropout_key=dropout_key, tower_map=tower_map,
                                      constrain=constrain)
      metrics = train_metrics(logits, batch["label"], batch["mask"])
      return metrics["loss"], (metrics, model_state)

    grads, (metrics, model_state) = jax.grad(loss_fn, has_aux=True)(state.params)
    lr = schedule(state.step) * state.lr_scale
    opt_state = optim.set_learning_rate(state.opt_state, lr)
    updates, opt_state = tx.update(grads, opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics |= {"lr": lr, "grad_norm": optax.tree.norm(grads),
                "param_norm": optax.tree.norm(params)}
    new_state = state.replace(step=state.step + 1, params=params, model_state=model_state,
                              opt_state=opt_state)
    return new_state, metrics

  return train_step


def make_eval_step(cfg, fns: ModelFns, tower_map: model_lib.TowerMap | None = None,
                   constrain: model_lib.Constrain | None = None) -> Callable:
  """(params, model_state, batch) -> sums over the batch's real (mask) examples.

  With views (image of shape (B, V, H, W, 3)) the softmax outputs of the V views are averaged,
  as the paper does for its 10 views.
  """
  mean, std = tuple(cfg.data.mean), tuple(cfg.data.std)
  dtype = model_lib.DTYPES[cfg.model.dtype]

  def eval_step(params, model_state, batch):
    images = preprocess.normalize(batch["image"], None, mean, std, dtype)
    lead = images.shape[:-3]
    logits, _ = fns.apply(params, model_state, images.reshape((-1,) + images.shape[-3:]),
                          train=False, tower_map=tower_map, constrain=constrain)
    probs = jax.nn.softmax(logits).reshape(lead + logits.shape[-1:])
    if probs.ndim == 3:
      probs = probs.mean(axis=1)
    labels, weights = batch["label"], batch["mask"].astype(jnp.float32)
    true_prob = jnp.take_along_axis(probs, labels[:, None], axis=-1)[:, 0]
    rank = label_rank(probs, labels)
    return {
        "count": weights.sum(),
        "loss": (-jnp.log(jnp.maximum(true_prob, 1e-12)) * weights).sum(),
        "top1_err": ((rank >= 1) * weights).sum(),
        "top5_err": ((rank >= 5) * weights).sum(),
    }

  return eval_step


def run_eval(eval_step: Callable, params, model_state, batches: Iterator[dict],
             batch_sharding: NamedSharding) -> dict[str, float]:
  """Sum the eval step over every batch; each real example counted exactly once (mask)."""
  totals: dict[str, float] = {}
  for batch in batches:
    sums = jax.device_get(eval_step(params, model_state, shard_lib.put_batch(batch, batch_sharding)))
    for k, v in sums.items():
      totals[k] = totals.get(k, 0.0) + float(v)
  count = totals.pop("count", 0.0)
  result = {k: v / max(count, 1.0) for k, v in totals.items()}
  result["count"] = count
  return result


# --- state creation -------------------------------------------------------------------------


def state_shardings(state_shapes: TrainState, mesh, strategy) -> TrainState:
  """Parameters and optimizer state by the strategy's rules (optimizer-state paths end with the
  parameter's path, so the same rules match them); everything else replicated."""
  return shard_lib.tree_shardings(state_shapes, mesh, strategy)


def init_state_fn(fns: ModelFns, tx: optax.GradientTransformation, seed: int) -> Callable:
  def init():
    params, model_state = fns.init(jax.random.key(seed))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                      opt_state=tx.init(params), lr_scale=jnp.ones((), jnp.float32))
  return init


def create_state(init: Callable, shardings) -> TrainState:
  """Run `init` straight into its shardings (no device ever holds more than its part)."""
  lowered = jax.jit(init, out_shardings=shardings).lower()
  # The init runs once, but XLA:CPU spends ~1 s of LLVM optimisation per threefry random
  # draw (20 s for the small model); unoptimised code draws the same numbers in milliseconds.
  options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
  return lowered.compile(compiler_options=options)()


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


def train_and_evaluate(cfg, workdir: str) -> dict[str, float]:
  """Train `cfg` in `workdir` (resuming from its latest checkpoint), return final eval metrics."""
  from alexnet_jax import data  # the input pipeline; imports TensorFlow lazily

  is_main = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)

  # --- mesh (validates the whole config against it: one line, before anything compiles) ---
  strategy, mesh = shard_lib.setup(cfg)

  # --- input ---
  info = data.dataset_info(cfg)
  configlib.check_against_dataset(cfg, info)
  steps_per_epoch = data.steps_per_epoch(cfg, info)
  total_steps = max(1, int(round(cfg.num_epochs * steps_per_epoch)))
  eval_every = max(1, int(round(cfg.eval_every_epochs * steps_per_epoch)))

  # --- model, optimizer ---
  fns = model_fns(cfg)
  tx = optim.make_optimizer(cfg.optim)
  schedule = optim.make_schedule(cfg.optim, steps_per_epoch, total_steps)
  plateau = optim.Plateau.from_config(cfg.optim)
  tower_map, constrain = strategy.tower_map(mesh), strategy.constrain(mesh)

  # --- shard: shapes first, then init or restore ---
  init = init_state_fn(fns, tx, cfg.seed)
  shapes = jax.eval_shape(init)
  shardings = state_shardings(shapes, mesh, strategy)
  checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                                       every_steps=cfg.checkpoint_every_steps,
                                       every_minutes=cfg.checkpoint_every_minutes,
                                       keep=cfg.keep_checkpoints,
                                       keep_best=cfg.keep_best_checkpoint)
  # Restored onto the shapes with *this* run's shardings: any strategy or mesh can resume.
  restored = checkpointer.restore(jax.tree.map(
      lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings))
  if restored is None:
    state = create_state(init, shardings)
  else:
    state = restored.state
    plateau.load_state_dict(restored.meta["plateau"])
    ckpt_lib.check_meta(restored.meta, step=restored.step, seed=cfg.seed,
                        steps_per_epoch=steps_per_epoch)
  start_step = int(state.step)
  n_params = sum(x.size for x in jax.tree.leaves(shapes.params))
  log.info("model %s: %s parameters; %d devices, mesh %s; %d steps/epoch, %d steps; %s",
           cfg.model.name, f"{n_params:,}", jax.device_count(), dict(mesh.shape),
           steps_per_epoch, total_steps,
           f"resuming at step {start_step}" if start_step else "starting fresh")

  # --- update ---
  batch_sharding = shard_lib.batch_sharding(mesh, strategy)
  replicated = NamedSharding(mesh, P())
  train_step = jax.jit(make_train_step(cfg, fns, tx, schedule, tower_map, constrain),
                       out_shardings=(shardings, replicated), donate_argnums=(0,))
  eval_step = jax.jit(make_eval_step(cfg, fns, tower_map, constrain), out_shardings=replicated)

  def evaluate() -> dict[str, float]:
    return run_eval(eval_step, state.params, state.model_state, data.eval_iterator(cfg),
                    batch_sharding)

  # --- loop ---
  writer = MetricWriter(workdir, enabled=is_main, resume_step=start_step)
  progress = _progress_bar(cfg, total_steps, start_step, enabled=is_main)
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
      raise NonFiniteLoss(f"{bad[1]} became NaN or Inf at step {bad[0]}; stopped, and the last "
                          f"good checkpoint (step {checkpointer.latest_step()}) is kept. Lower "
                          "config.optim.learning_rate or check the data.")

  batches = shard_lib.prefetch_to_device(data.train_iterator(cfg, start_step=start_step),
                                         cfg.data.prefetch, batch_sharding)
  stop = ckpt_lib.StopSignals()
  try:
    stop.install()
    for step in range(start_step, total_steps):
      state, metrics = train_step(state, next(batches))
      history.append(metrics)
      done = step + 1
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
          curves.write_after_eval(workdir)  # DIR/curves.png, redrawn at every evaluation
        log.info("eval at step %d: loss %.4f top1_err %.4f top5_err %.4f (%d examples)", done,
                 eval_metrics["loss"], eval_metrics["top1_err"], eval_metrics["top5_err"],
                 eval_metrics["count"])
        if cfg.optim.schedule == "plateau" and plateau.observe(eval_metrics["top1_err"]):
          state = state.replace(lr_scale=jnp.asarray(plateau.scale, jnp.float32))
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
    progress.close()
    checkpointer.close()  # waits for the last save; a signal meanwhile does not cut it short
    writer.close()
    stop.uninstall()
  return eval_metrics


def _progress_bar(cfg, total: int, initial: int, *, enabled: bool):
  from tqdm.auto import tqdm
  return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
              disable=not (enabled and cfg.progress), desc="train")
