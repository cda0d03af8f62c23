"""AlexNet as a Flax NNX module (the variants' layer tables are in variants.py).

The 2012 network is two *towers* (one per GTX 580), each holding half of every layer's channels.
Here the towers are explicit: a towered layer's kernel has a leading tower axis
`(T, kh, kw, cin, cout)`, and towered activations are `x_TxNxHxWxC`. A run of layers where every
layer after the first reads only its own tower is one pure *segment* function, mapped over the
tower axis by the placement's tower map (config.model.tower_impl's loop or `jax.vmap` by
default; the two-tower sharding strategy maps it with `shard_map` so each tower runs on its own
device). Towers meet only where the paper's do: the
inputs of conv3, fc6, fc7 and fc8, where their channels are concatenated ("merged").

Single-tower variants (`owt`, `bn`) have no tower axis at all, so their parameters map one to
one onto torchvision's AlexNet.

How a convolution, a pooling or LRN's window sum is computed on this machine is the backend's
choice (`backend.ops`); this module never imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from alexnet_jax.backend import ops
# The variants' layer tables and a config's options are the model's API too (model.VARIANTS).
from alexnet_jax.variants import VARIANTS, Conv, Options, Variant, options_from_config  # noqa: F401

Array = jax.Array
TowerMap = Callable[[Callable], Callable]
# `constrain(point, x) -> x` lets a sharding strategy place arrays at named points: the
# activations entering a layer ("conv1".."conv5", "fc6".."fc8"; merged, never per tower), the
# towers' outputs (T, N, ...) just before they merge into a layer ("conv3/towers"), the
# "logits", and each layer's weights where they are used ("fc6/kernel", "conv1/bias").
Constrain = Callable[[str, Array], Array]


def no_constraint(point: str, x: Array) -> Array:
  del point
  return x


@dataclasses.dataclass(frozen=True)
class Placement:
  """Where a sharding strategy puts the model's work, bound once when the model is built.

  tower_map: maps a per-tower segment over the tower axis (None: config.model.tower_impl);
  constrain: places arrays at the named points above.
  """
  tower_map: TowerMap | None = None
  constrain: Constrain = no_constraint


NORMS = ("lrn", "batch", "none")
POOLS = {"overlap": (3, 2), "nonoverlap": (2, 2)}
ACTIVATIONS = {"relu": jax.nn.relu, "tanh": jnp.tanh}
INITS = ("paper", "pytorch", "he")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


# --- pure layer functions -------------------------------------------------------------------


def local_response_norm(x: Array, k: float = 2.0, n: int = 5, alpha: float = 1e-4,
                        beta: float = 0.75, impl: str = "auto") -> Array:
  """The paper's LRN over the channel (last) axis: a / (k + alpha * sum of a^2 over n)^beta.

  alpha is not divided by n (Caffe and PyTorch divide it). Computed in float32: the sum of
  squares of bfloat16 activations loses too much. `impl`: how the window sum is computed
  (config.model.lrn_impl, backend.ops.LRN_IMPLS).
  """
  sq = jnp.square(x.astype(jnp.float32))
  window_sum = ops.window_sum_function(impl)(sq, n)
  return (x.astype(jnp.float32) / (k + alpha * window_sum) ** beta).astype(x.dtype)


def adaptive_avg_pool(x: Array, size: int) -> Array:
  """PyTorch's AdaptiveAvgPool2d: bin i spans [floor(i*H/size), ceil((i+1)*H/size))."""
  n, h, w, c = x.shape
  if h == size and w == size:
    return x

  def bins(length):
    return [(math.floor(i * length / size), math.ceil((i + 1) * length / size))
            for i in range(size)]

  rows = [jnp.mean(x[:, a:b], axis=1) for a, b in bins(h)]  # each (n, w, c)
  x = jnp.stack(rows, axis=1)
  cols = [jnp.mean(x[:, :, a:b], axis=2) for a, b in bins(w)]
  return jnp.stack(cols, axis=2)


def dropout(x: Array, rate: float, key: Array | None) -> Array:
  if key is None or rate == 0.0:
    return x
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def vmap_towers(segment: Callable) -> Callable:
  """Map `segment(x_merged, tower_params)` over the params' tower axis with vmap.

  JAX turns the batched convolutions into one grouped convolution (Caffe's `group: 2`).
  """
  return jax.vmap(segment, in_axes=(None, 0))


def unrolled_towers(segment: Callable) -> Callable:
  """Map `segment` over the tower axis with a Python loop: one ordinary convolution per tower.

  Same function as vmap_towers; on XLA:CPU it ran several times faster than the grouped
  convolution (docs/performance.md).
  """
  def run(x, params):
    towers = jax.tree.leaves(params)[0].shape[0]
    return jnp.stack([segment(x, jax.tree.map(lambda a: a[t], params)) for t in range(towers)])
  return run


TOWER_IMPLS = {"unrolled": unrolled_towers, "vmap": vmap_towers}


def merge_towers(x_T: Array) -> Array:
  """(T, N, ..., C) -> (N, ..., T*C): the towers' channels side by side, tower 0 first."""
  return jnp.concatenate(list(x_T), axis=-1)


# --- initialisers ---------------------------------------------------------------------------


def _weight_init(init: str, fan_in: int) -> Callable:
  if init == "paper":
    return jax.nn.initializers.normal(0.01)
  if init == "pytorch":  # kaiming_uniform(a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    bound = 1.0 / math.sqrt(fan_in)
    return lambda key, shape: jax.random.uniform(key, shape, jnp.float32, -bound, bound)
  return lambda key, shape: jax.random.normal(key, shape) * math.sqrt(2.0 / fan_in)  # he


def _bias_init(init: str, fan_in: int, paper_value: float) -> Callable:
  if init == "paper":
    return lambda key, shape: jnp.full(shape, paper_value, jnp.float32)
  if init == "pytorch":
    bound = 1.0 / math.sqrt(fan_in)
    return lambda key, shape: jax.random.uniform(key, shape, jnp.float32, -bound, bound)
  return lambda key, shape: jnp.zeros(shape, jnp.float32)


class Weights(nnx.Module):
  """A kernel and a bias; with `towers`, both carry a leading tower axis."""

  def __init__(self, kernel_shape: Sequence[int], fan_in: int, init: str, paper_bias: float,
               towers: int | None, *, rngs: nnx.Rngs, use_bias: bool = True):
    lead = (towers,) if towers else ()
    self.kernel = nnx.Param(_weight_init(init, fan_in)(rngs.params(), lead + tuple(kernel_shape)))
    if use_bias:
      self.bias = nnx.Param(_bias_init(init, fan_in, paper_bias)(rngs.params(),
                                                                  lead + (kernel_shape[-1],)))
    else:
      self.bias = None


# --- the network ----------------------------------------------------------------------------


def _sides(convs: Sequence[Conv], size: int, pool: str) -> list[int]:
  """The spatial side of the feature map after each convolution block (its pool included)."""
  window, stride = POOLS[pool]
  sides = []
  for spec in convs:
    size = (size + 2 * spec.padding - spec.kernel) // spec.stride + 1
    if spec.pool:
      size = (size - window) // stride + 1
    sides.append(size)
  return sides


class AlexNet(nnx.Module):
  """`model(images_NHWC, train=..., dropout_key=...) -> logits (float32)`.

  `placement` (a sharding strategy's tower map and constraints) is given once, here: it is part
  of the module's static structure, so no call passes it.
  """

  def __init__(self, variant: Variant, opts: Options, *, rngs: nnx.Rngs,
               placement: Placement = Placement()):
    self.variant = variant
    self.opts = opts
    self.placement = placement
    towers = variant.towers if variant.towers > 1 else None
    scale = lambda f: max(1, round(f * opts.width))
    self.conv_specs = tuple(dataclasses.replace(c, features=scale(c.features)) for c in variant.convs)
    fc_widths = tuple(scale(f) for f in variant.fc)
    t = variant.towers

    cin_total = 3
    for spec in self.conv_specs:
      cin = cin_total if spec.reads_both else cin_total // t
      fan_in = spec.kernel * spec.kernel * cin
      use_bias = opts.norm != "batch"  # BatchNorm's own bias makes a conv bias redundant
      setattr(self, spec.name, Weights((spec.kernel, spec.kernel, cin, spec.features), fan_in,
                                       opts.init, spec.bias, towers, rngs=rngs, use_bias=use_bias))
      if opts.norm == "batch":
        setattr(self, spec.name + "_bn", nnx.BatchNorm(spec.features * t, momentum=0.9,
                                                       epsilon=1e-5, rngs=rngs))
      cin_total = spec.features * t
    size = variant.avgpool_to or _sides(self.conv_specs, opts.input_size, opts.pool)[-1]
    fan_in = size * size * cin_total
    self.fc_names = tuple(f"fc{6 + i}" for i in range(len(fc_widths)))
    for name, width in zip(self.fc_names, fc_widths):
      setattr(self, name, Weights((fan_in, width), fan_in, opts.init, variant.fc_bias, towers,
                                  rngs=rngs))
      fan_in = width * t
    self.classifier_name = f"fc{6 + len(fc_widths)}"
    setattr(self, self.classifier_name,
            Weights((fan_in, opts.num_classes), fan_in, opts.init, variant.fc_bias, None, rngs=rngs))

  # Segments: the pure per-tower functions that the tower map maps.

  def _conv_function(self, spec: Conv) -> Callable:
    fold = (spec.name == "conv1" and spec.stride > 1
            and ops.resolve_conv1_impl(self.opts.conv1_impl) == "space_to_depth")
    return ops.conv_function(self.opts.conv_impl, space_to_depth=fold)

  def _conv_segment(self, specs: tuple[Conv, ...], constrain: Constrain, train: bool) -> Callable:
    act = ACTIVATIONS[self.opts.activation]
    window, stride = POOLS[self.opts.pool]
    pool = ops.pool_function(self.opts.pool_impl)
    k, n, alpha, beta = self.opts.lrn
    norm = self.opts.norm

    def segment(x, params):
      for i, (spec, (kernel, bias)) in enumerate(zip(specs, params)):
        # Named scopes put the layer into the compiled program's op names (HLO analysis).
        with jax.named_scope(spec.name):
          x = x if i == 0 else constrain(spec.name, x)
          x = self._conv_function(spec)(x, kernel, spec.stride, spec.padding)
          if norm == "batch":  # single tower only (validated): BatchNorm is never mapped
            bn = getattr(self, spec.name + "_bn")
            x = bn(x, use_running_average=not train).astype(x.dtype)
          else:
            x = x + bias.astype(x.dtype)
          x = act(x)
          if norm == "lrn" and spec.lrn:
            x = local_response_norm(x, k, n, alpha, beta, self.opts.lrn_impl)
          if spec.pool:
            x = pool(x, window, stride)
      return x

    return segment

  def _dense_segment(self) -> Callable:
    act = ACTIVATIONS[self.opts.activation]
    return lambda x, params: act(x @ params[0].astype(x.dtype) + params[1].astype(x.dtype))

  def _conv_runs(self) -> list[tuple[Conv, ...]]:
    """Split the convolutions into segments: a new one starts at each layer reading both towers."""
    runs: list[list[Conv]] = []
    for spec in self.conv_specs:
      if spec.reads_both or not runs:
        runs.append([])
      runs[-1].append(spec)
    return [tuple(r) for r in runs]

  def _weights(self, name: str) -> tuple[Array, Array | None]:
    w, constrain = getattr(self, name), self.placement.constrain
    with jax.named_scope(name):  # a run of layers reads all its weights in its first layer's scope
      kernel = constrain(f"{name}/kernel", w.kernel[...])
      return kernel, None if w.bias is None else constrain(f"{name}/bias", w.bias[...])

  def _flatten(self, x: Array) -> Array:
    """The last feature map (N, H, W, C) -> (N, H*W*C), through torchvision's average pool."""
    if self.variant.avgpool_to:
      x = adaptive_avg_pool(x, self.variant.avgpool_to)
    return x.reshape(x.shape[0], -1)

  def _enter(self, name: str, x: Array, *, merge: bool, flatten: bool = False) -> Array:
    """The input of layer `name`: the towers merged (where they meet), flattened (the first dense
    layer), then placed."""
    constrain = self.placement.constrain
    if merge:
      x = merge_towers(constrain(f"{name}/towers", x))
    if flatten:
      x = self._flatten(x)
    return constrain(name, x)

  def _towered(self, segment: Callable, x: Array, params) -> Array:
    """The one place a segment runs: per tower through the tower map, or once without towers."""
    if self.variant.towers == 1:
      return segment(x, params)
    return (self.placement.tower_map or TOWER_IMPLS[self.opts.tower_impl])(segment)(x, params)

  def embed(self, x: Array, *, train: bool = False,
            dropout_key: Array | None = None) -> tuple[Array, Array | None]:
    """Images (N, H, W, 3) -> the fc7 activations (N, T*fc7), merged, before dropout.

    Returns (features, the dropout key left for the classifier's input).
    """
    x = x.astype(DTYPES[self.opts.dtype])
    towered = self.variant.towers > 1
    keys = list(jax.random.split(dropout_key, 4)) if (train and dropout_key is not None) else [None] * 4
    # Each layer runs under a named scope, so the compiled program's op names say which layer a
    # collective belongs to; towers are merged inside the scope of the layer that reads them
    # (the paper's meeting points: conv3, fc6, fc7, fc8). Per-tower layers inside a segment
    # take no constraint: the tower map places the towers.
    inner = no_constraint if towered else self.placement.constrain
    for j, run in enumerate(self._conv_runs()):
      with jax.named_scope(run[0].name):
        x = self._enter(run[0].name, x, merge=towered and j > 0)
        params = [self._weights(spec.name) for spec in run]
        x = self._towered(self._conv_segment(run, inner, train), x, params)
    for i, name in enumerate(self.fc_names):
      with jax.named_scope(name):
        x = self._enter(name, x, merge=towered, flatten=i == 0)
        if name in self.variant.dropout_on:
          x = dropout(x, self.opts.dropout, keys[i])
        x = self._towered(self._dense_segment(), x, self._weights(name))
    with jax.named_scope(self.classifier_name):
      if towered:
        x = merge_towers(self.placement.constrain(f"{self.classifier_name}/towers", x))
      if not self.fc_names:  # the classifier is the first dense layer (cnn4)
        x = self._flatten(x)
    last_key = keys[len(self.fc_names)] if self.classifier_name in self.variant.dropout_on else None
    return x, last_key

  def __call__(self, x: Array, *, train: bool = False,
               dropout_key: Array | None = None) -> Array:
    constrain = self.placement.constrain
    features, key = self.embed(x, train=train, dropout_key=dropout_key)
    with jax.named_scope(self.classifier_name):
      features = constrain(self.classifier_name, features)
      features = dropout(features, self.opts.dropout, key)
      kernel, bias = self._weights(self.classifier_name)
      logits = features @ kernel.astype(features.dtype) + bias.astype(features.dtype)
    return constrain("logits", logits.astype(jnp.float32))


# --- building from a config -----------------------------------------------------------------


def check_options(variant: Variant, opts: Options, *, other_input_size: bool = True) -> None:
  """Raise ValueError naming the config field for a combination that cannot work.

  other_input_size=False (config validation passes config.model.allow_other_input_size):
  the 2012 network at another crop than 227 is refused. It would still build, but as another
  network (at 224 px fc6 reads 6,400 inputs instead of 9,216: 49.4 million parameters, not 61).
  """
  checks = [
      (opts.norm in NORMS, f"config.model.norm={opts.norm!r}: choose default, {', '.join(NORMS)}"),
      (opts.pool in POOLS, f"config.model.pool={opts.pool!r}: choose {' or '.join(POOLS)}"),
      (opts.activation in ACTIVATIONS,
       f"config.model.activation={opts.activation!r}: choose {' or '.join(ACTIVATIONS)}"),
      (opts.init in INITS, f"config.model.init={opts.init!r}: choose default, {', '.join(INITS)}"),
      (opts.dtype in DTYPES, f"config.model.dtype={opts.dtype!r}: choose {', '.join(DTYPES)}"),
      (opts.tower_impl in TOWER_IMPLS,
       f"config.model.tower_impl={opts.tower_impl!r}: choose {' or '.join(TOWER_IMPLS)}"),
      *ops.checks(pool_impl=opts.pool_impl, conv1_impl=opts.conv1_impl,
                  conv_impl=opts.conv_impl, lrn_impl=opts.lrn_impl),
      (opts.lrn[1] >= 1 and opts.lrn[1] % 2 == 1,
       f"config.model.lrn_n={opts.lrn[1]}: must be odd (a window centred on each channel)"),
      (0.0 <= opts.dropout < 1.0, f"config.model.dropout={opts.dropout}: must be in [0, 1)"),
      (opts.num_classes >= 1, f"config.model.num_classes={opts.num_classes}: must be >= 1"),
      (opts.width > 0, f"config.model.width={opts.width}: must be > 0"),
      (not (opts.norm == "batch" and variant.towers > 1),
       f"config.model.norm=batch needs a single-tower model (owt or bn), not {variant.name!r}"),
  ]
  for ok, message in checks:
    if not ok:
      raise ValueError(message)
  # The spatial size must stay >= 1 through every convolution and pool.
  sides = _sides(variant.convs, opts.input_size, opts.pool)
  for spec, size in zip(variant.convs, sides):
    if size < 1:
      raise ValueError(f"config.data.crop_size={opts.input_size} is too small for model "
                       f"{variant.name!r} (nothing left after {spec.name}); use at least "
                       f"{variant.input_size}")
  fixed = variant.name in ("paper", "paper6")  # defined by the paper at exactly 227 px
  if fixed and opts.input_size != variant.input_size and not other_input_size:
    channels = variant.towers * max(1, round(variant.convs[-1].features * opts.width))
    own = _sides(variant.convs, variant.input_size, opts.pool)[-1]
    raise ValueError(
        f"config.data.crop_size={opts.input_size}: model {variant.name!r} is the paper's network "
        f"at {variant.input_size} px only (at {opts.input_size} px its fc6 would read "
        f"{sides[-1] ** 2 * channels:,} inputs instead of {own ** 2 * channels:,}); set "
        f"--config.data.crop_size={variant.input_size}, or --config.model.allow_other_input_size"
        "=true if another network is intended")


def create_model(model_cfg, input_size: int, rngs: nnx.Rngs,
                 placement: Placement = Placement()) -> AlexNet:
  """The model a config's `model` section asks for. The options are not checked here: every
  path to a model has checked them once already (program.validate for programs, export's
  loader for parameter files); check_options says what would be refused."""
  variant, opts = options_from_config(model_cfg, input_size)
  return AlexNet(variant, opts, rngs=rngs, placement=placement)


def count_params(model: nnx.Module) -> int:
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
