"""The one train program: what `train` runs, `bench` times, `compare` measures and `evaluate` and
the experiments read parameters with.

`validate(cfg, devices)` is the one place a config is checked: its fields, the model's and the
optimizer's choices, the strategy and its mesh on the devices, the model against the strategy;
ConfigError, one line naming the field, before anything compiles. It returns a Plan (the
strategy and its mesh), and `build(cfg, devices, plan=...)` does, in order:
  plan     - validate, unless the caller did (train validates before it writes anything)
  model    - the Flax NNX module as a static graphdef and pure functions of (params, model_state),
             with the strategy's tower map and activation constraints bound inside
  optim    - the optax chain and the learning-rate schedule
  state    - shapes first (eval_shape), then shardings from the strategy's table
  feed     - the batch sharding and the rows of every batch this process loads
  steps    - the jitted train step (state donated) and eval step

No caller assembles any of these itself, so no command can time or run another program than
`train` does.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from alexnet_jax import configlib
from alexnet_jax import distributed
from alexnet_jax import metrics as metrics_lib
from alexnet_jax import model as model_lib
from alexnet_jax import optim
from alexnet_jax import preprocess
from alexnet_jax import sharding as shard_lib


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
  """The model's static structure plus pure functions of (params, model_state); the placement
  of its towers and activations (a sharding strategy's) is part of the structure, bound when the
  model was built, not passed per call."""
  graphdef: Any
  init: Callable[[jax.Array], tuple[Any, Any]]  # key -> (params, model_state)

  def apply(self, params, model_state, images, *, train, dropout_key=None):
    """-> (logits, new model_state)."""
    model = nnx.merge(self.graphdef, params, model_state)
    logits = model(images, train=train, dropout_key=dropout_key)
    return logits, nnx.to_pure_dict(nnx.state(model, nnx.Not(nnx.Param)))

  def embed(self, params, model_state, images):
    """Images -> fc7 activations (inference mode)."""
    model = nnx.merge(self.graphdef, params, model_state)
    return model.embed(images, train=False)[0]

  def probabilities(self, cfg, params, model_state, images_uint8):
    """uint8 images (B, H, W, 3) or views (B, V, H, W, 3) -> class probabilities (B, classes),
    averaged over the views, with `cfg`'s normalisation."""
    x = preprocess.normalize(images_uint8, None, tuple(cfg.data.mean), tuple(cfg.data.std),
                             model_lib.DTYPES[cfg.model.dtype])
    lead = x.shape[:-3]
    logits, _ = self.apply(params, model_state, x.reshape((-1,) + x.shape[-3:]), train=False)
    return metrics_lib.view_probabilities(logits, lead)


def model_fns(cfg, placement: model_lib.Placement = model_lib.Placement()) -> ModelFns:
  """The model of `cfg` with `placement` bound; without a tower map it maps towers its own way
  (config.model.tower_impl)."""
  def build(key):
    return model_lib.create_model(cfg.model, cfg.data.crop_size, nnx.Rngs(params=key), placement)

  def init(key):
    _, params, rest = nnx.split(build(key), nnx.Param, ...)
    return nnx.to_pure_dict(params), nnx.to_pure_dict(rest)

  graphdef, _, _ = nnx.split(nnx.eval_shape(lambda: build(jax.random.key(0))), nnx.Param, ...)
  return ModelFns(graphdef, init)


def init_state_fn(fns: ModelFns, tx: optax.GradientTransformation, seed: int) -> Callable:
  def init():
    params, model_state = fns.init(jax.random.key(seed))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                      opt_state=tx.init(params), lr_scale=jnp.ones((), jnp.float32))
  return init


# --- the steps ------------------------------------------------------------------------------


def make_train_step(cfg, fns: ModelFns, tx: optax.GradientTransformation,
                    schedule: Callable) -> Callable:
  mean, std = tuple(cfg.data.mean), tuple(cfg.data.std)
  dtype = model_lib.DTYPES[cfg.model.dtype]
  seed = cfg.seed

  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    images = preprocess.normalize(batch["image"], batch.get("rgb_shift"), mean, std, dtype,
                                  flip=batch.get("flip"))
    # Dropout randomness is a pure function of (seed, step): a resumed run draws the same masks.
    dropout_key = jax.random.fold_in(jax.random.key(seed), state.step)

    def loss_fn(params):
      logits, model_state = fns.apply(params, state.model_state, images, train=True,
                                      dropout_key=dropout_key)
      metrics = metrics_lib.train_metrics(logits, batch["label"], batch["mask"])
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


def make_eval_step(cfg, fns: ModelFns) -> Callable:
  """(params, model_state, batch) -> sums over the batch's real (mask) examples.

  With views (image of shape (B, V, H, W, 3)) the softmax outputs of the V views are averaged,
  as the paper does for its 10 views.
  """
  def eval_step(params, model_state, batch):
    probs = fns.probabilities(cfg, params, model_state, batch["image"])
    weights = batch["mask"].astype(jnp.float32)
    return {"count": weights.sum(),
            **metrics_lib.probability_sums(probs, batch["label"], weights)}

  return eval_step


# --- the program ----------------------------------------------------------------------------


@dataclasses.dataclass
class Program:
  cfg: Any
  strategy: shard_lib.Strategy
  mesh: jax.sharding.Mesh
  fns: ModelFns
  tx: optax.GradientTransformation
  schedule: Callable
  init: Callable[[], TrainState]
  state_shapes: TrainState  # ShapeDtypeStructs
  state_shardings: TrainState
  train_feed: shard_lib.BatchFeed  # cfg.batch_size rows
  eval_feed: shard_lib.BatchFeed  # cfg.eval_batch_size rows
  # Jitted, started together by every process (distributed.StartTogether):
  train_step: distributed.StartTogether  # (state, batch) -> (state, metrics), state donated
  eval_step: distributed.StartTogether  # (params, model_state, batch) -> sums
  compiler_options: dict | None = None

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  @property
  def num_params(self) -> int:
    return sum(x.size for x in jax.tree.leaves(self.state_shapes.params))

  def create_state(self) -> TrainState:
    """Run the initialiser straight into the state's shardings (no device ever holds more than
    its part)."""
    lowered = jax.jit(self.init, out_shardings=self.state_shardings).lower()
    options = dict(self.compiler_options or {})
    if jax.default_backend() == "cpu":
      # The init runs once, and XLA:CPU spends long in LLVM optimising each threefry random
      # draw; unoptimised code draws the same numbers in milliseconds.
      options.setdefault("xla_backend_optimization_level", 0)
    return lowered.compile(compiler_options=options or None)()

  def abstract_state(self) -> TrainState:
    """The state's shapes carrying this program's shardings (what a checkpoint restores onto)."""
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        self.state_shapes, self.state_shardings)

  def place_state(self, host_state: TrainState) -> TrainState:
    return jax.device_put(host_state, self.state_shardings)

  def evaluate(self, params, model_state, batches: Iterable[dict]) -> dict[str, float]:
    """Means over every real example of `batches` (per-process numpy eval batches), "count"."""
    return metrics_lib.totals(
        jax.device_get(self.eval_step(params, model_state, self.eval_feed.put(batch)))
        for batch in batches)


@dataclasses.dataclass(frozen=True)
class Plan:
  """A config checked against its devices: the strategy and the mesh it runs on."""
  strategy: shard_lib.Strategy
  mesh: jax.sharding.Mesh


def validate(cfg, devices: Sequence[jax.Device] | None = None) -> Plan:
  """Check the whole config against `devices` (default: every device of every process).

  Raises ConfigError, one line naming the field, for a config that cannot run here: an unknown
  strategy or a mesh that does not fit the devices, a model option, a field value, an optimizer
  or schedule, a model the strategy cannot hold.
  """
  strategy, mesh = shard_lib.setup(cfg, devices)
  try:
    variant, opts = model_lib.options_from_config(cfg.model, cfg.data.crop_size)
    model_lib.check_options(variant, opts,
                            other_input_size=cfg.model.get("allow_other_input_size", False))
    configlib.validate(cfg, data_axis=shard_lib.data_axis_size(mesh, strategy))
    optim.check_config(cfg.optim)
  except ValueError as e:
    raise configlib.ConfigError(str(e)) from None
  strategy.check_model(variant, tuple(mesh.shape.values()))
  return Plan(strategy, mesh)


def build(cfg, devices: Sequence[jax.Device] | None = None, *, plan: Plan | None = None,
          steps_per_epoch: int = 1000, total_steps: int = 100_000,
          compiler_options: dict | None = None) -> Program:
  """The program of `cfg` on `devices` (default: every device of every process).

  `plan`: what validate(cfg, devices) returned, when the caller has validated already (it is
  not checked twice). `steps_per_epoch` and `total_steps` shape the learning-rate schedule
  (train passes the dataset's; the cost of a step does not depend on them). `compiler_options`
  go to XLA for the steps (tests turn optimisation off).
  """
  plan = plan or validate(cfg, devices)
  strategy, mesh = plan.strategy, plan.mesh
  fns = model_fns(cfg, strategy.placement(mesh))
  tx = optim.make_optimizer(cfg.optim)
  schedule = optim.make_schedule(cfg.optim, steps_per_epoch, total_steps)
  init = init_state_fn(fns, tx, cfg.seed)
  shapes = jax.eval_shape(init)
  shardings = shard_lib.tree_shardings(shapes, mesh, strategy)
  replicated = NamedSharding(mesh, P())
  train_step = distributed.StartTogether(jax.jit(
      make_train_step(cfg, fns, tx, schedule), out_shardings=(shardings, replicated),
      donate_argnums=(0,), compiler_options=compiler_options), "train step")
  eval_step = distributed.StartTogether(jax.jit(
      make_eval_step(cfg, fns), out_shardings=replicated, compiler_options=compiler_options),
      "eval step")
  distributed.wait_for_peers("program built")  # the processes leave set-up together
  return Program(
      cfg=cfg, strategy=strategy, mesh=mesh, fns=fns, tx=tx, schedule=schedule, init=init,
      state_shapes=shapes, state_shardings=shardings,
      train_feed=shard_lib.batch_feed(mesh, strategy, cfg.batch_size),
      eval_feed=shard_lib.batch_feed(mesh, strategy, cfg.eval_batch_size),
      train_step=train_step, eval_step=eval_step, compiler_options=compiler_options)
