"""AlexNet variants as Flax NNX modules.

The 2012 network is two *towers* (one per GTX 580), each holding half of every layer's channels.
Here the towers are explicit: a towered layer's kernel has a leading tower axis
`(T, kh, kw, cin, cout)`, and towered activations are `x_TxNxHxWxC`. A run of layers where every
layer after the first reads only its own tower is one pure *segment* function, mapped over the
tower axis by `tower_map` (`jax.vmap` by default; the two-tower sharding strategy maps it with
`shard_map` so each tower runs on its own device). Towers meet only where the paper's do: the
inputs of conv3, fc6, fc7 and fc8, where their channels are concatenated ("merged").

Single-tower variants (`owt`, `bn`) have no tower axis at all, so their parameters map one to
one onto torchvision's AlexNet.

This module never imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from alexnet_jax import fastops, onednn

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


# --- the layer tables -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Conv:
  name: str
  features: int  # per tower
  kernel: int
  stride: int = 1
  padding: int = 0
  reads_both: bool = False  # True: reads every tower's channels; False: only its own tower's
  lrn: bool = False  # where LRN follows the ReLU (when the model's norm is "lrn")
  pool: bool = False  # max pooling after (overlapping 3x3/2 by default)
  bias: float = 0.0  # the paper's initial bias


@dataclasses.dataclass(frozen=True)
class Variant:
  name: str
  towers: int
  convs: tuple[Conv, ...]
  fc: tuple[int, ...]  # fc6, fc7 widths per tower; fc8 (the classifier) follows
  input_size: int  # the size the variant is defined for (configs set data.crop_size to it)
  norm: str  # lrn | batch | none
  init: str  # paper | pytorch | he
  fc_bias: float = 1.0
  avgpool_to: int = 0  # torchvision's AdaptiveAvgPool2d((6, 6)) before fc6; 0 = none
  dropout_on: tuple[str, ...] = ("fc7", "fc8")  # layers whose *inputs* get dropout


def _paper_convs(conv1_padding: int = 0) -> tuple[Conv, ...]:
  return (
      Conv("conv1", 48, 11, 4, conv1_padding, reads_both=True, lrn=True, pool=True),
      Conv("conv2", 128, 5, 1, 2, lrn=True, pool=True, bias=1.0),
      Conv("conv3", 192, 3, 1, 1, reads_both=True),
      Conv("conv4", 192, 3, 1, 1, bias=1.0),
      Conv("conv5", 128, 3, 1, 1, pool=True, bias=1.0),
  )


VARIANTS: dict[str, Variant] = {
    # The 2012 network (PAPER.md). 227x227 input: 224 needs conv1 padding 2, as torchvision has.
    "paper": Variant("paper", 2, _paper_convs(), (2048, 2048), 227, "lrn", "paper"),
    # The seven-CNN entry's variant: a sixth convolution over the last pooling layer. The paper
    # gives no details; here it is 3x3, 128 per tower, own tower only, like conv4 and conv5.
    "paper6": Variant(
        "paper6", 2, _paper_convs() + (Conv("conv6", 128, 3, 1, 1, bias=1.0),), (2048, 2048), 227,
        "lrn", "paper"),
    # One weird trick / torchvision: one tower, no LRN, adaptive average pooling, dropout before
    # fc6 and fc7, PyTorch's default initialisation.
    "owt": Variant(
        "owt", 1,
        (
            Conv("conv1", 64, 11, 4, 2, reads_both=True, pool=True),
            Conv("conv2", 192, 5, 1, 2, pool=True),
            Conv("conv3", 384, 3, 1, 1),
            Conv("conv4", 256, 3, 1, 1),
            Conv("conv5", 256, 3, 1, 1, pool=True),
        ),
        (4096, 4096), 224, "none", "pytorch", avgpool_to=6, dropout_on=("fc6", "fc7")),
    # AlexNet-BN of the large-batch literature (You et al. 2017): the paper's layer widths in one
    # tower, BatchNorm after every convolution instead of LRN.
    "bn": Variant(
        "bn", 1,
        tuple(dataclasses.replace(c, features=2 * c.features, reads_both=True)
              for c in _paper_convs()),
        (4096, 4096), 227, "batch", "he"),
    # The same shape for 32-64 px inputs (tests, the offline demo): two towers, LRN, 3x3/2 pools.
    "small": Variant(
        "small", 2,
        (
            Conv("conv1", 16, 5, 1, 2, reads_both=True, lrn=True, pool=True),
            Conv("conv2", 32, 5, 1, 2, lrn=True, pool=True, bias=1.0),
            Conv("conv3", 48, 3, 1, 1, reads_both=True),
            Conv("conv4", 48, 3, 1, 1, bias=1.0),
            Conv("conv5", 32, 3, 1, 1, pool=True, bias=1.0),
        ),
        (128, 128), 32, "lrn", "he"),
    # The paper's Figure 1 network (ReLU vs tanh on CIFAR-10): "a four-layer convolutional
    # network", three convolutions and a classifier as in cuda-convnet's CIFAR-10 layouts. No
    # towers, no LRN, no dropout: the figure compares activations with no regularisation.
    "cnn4": Variant(
        "cnn4", 1,
        (
            Conv("conv1", 32, 5, 1, 2, reads_both=True, pool=True),
            Conv("conv2", 32, 5, 1, 2, pool=True),
            Conv("conv3", 64, 5, 1, 2, pool=True),
        ),
        (), 32, "none", "pytorch", fc_bias=0.0, dropout_on=()),
}

NORMS = ("lrn", "batch", "none")
POOLS = {"overlap": (3, 2), "nonoverlap": (2, 2)}
ACTIVATIONS = {"relu": jax.nn.relu, "tanh": jnp.tanh}
INITS = ("paper", "pytorch", "he")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


# --- pure layer functions -------------------------------------------------------------------


def _window_sum_reduce_window(sq: Array, n: int) -> Array:
  """Sum over the n channels centred on each channel (zeros past the edges): XLA's reduce_window."""
  half = n // 2
  return jax.lax.reduce_window(
      sq, 0.0, jax.lax.add, (1,) * (sq.ndim - 1) + (n,), (1,) * sq.ndim,
      [(0, 0)] * (sq.ndim - 1) + [(half, half)])


def _self_adjoint(window_sum: Callable) -> Callable:
  """`window_sum(sq, n)` with its gradient computed by itself: the sum is linear with a symmetric
  matrix, so the cotangent's window sum is the gradient. Autodiff would transpose the pads and
  slices into more of them, or round the cotangent to bfloat16 through the matmul's casts."""
  f = jax.custom_vjp(window_sum, nondiff_argnums=(1,))
  f.defvjp(lambda sq, n: (window_sum(sq, n), None), lambda n, _, g: (window_sum(g, n),))
  return f


@_self_adjoint
def _window_sum_slices(sq: Array, n: int) -> Array:
  """The same sum as n shifted slices of the zero-padded squares added up: pads, slices and adds
  only, the kind of work XLA fuses into one loop with the rest of LRN."""
  half, c = n // 2, sq.shape[-1]
  padded = jnp.pad(sq, [(0, 0)] * (sq.ndim - 1) + [(half, half)])
  total = padded[..., :c]
  for shift in range(1, n):
    total = total + padded[..., shift:shift + c]
  return total


def _band(c: int, n: int) -> Array:
  """The C x C 0/1 matrix with ones where |i - j| <= n // 2 (symmetric)."""
  i = jnp.arange(c)
  return (jnp.abs(i[:, None] - i[None, :]) <= n // 2).astype(jnp.bfloat16)


@_self_adjoint
def _window_sum_matmul(sq: Array, n: int) -> Array:
  """The same sum as a matrix product with the banded 0/1 matrix, which GPUs run as a GEMM.

  The band is exact in bfloat16, so the float32 squares are split into three bfloat16 parts
  (hi + mid + lo: 24 bits of mantissa, as float32 has) multiplied with float32 accumulation, as
  one product over 3C: tensor-core speed and float32 accuracy on any backend (a float32 product
  would round to TF32 by default on GPUs; two parts were 3e-6 off the formula).
  """
  parts, rest = [], sq
  for _ in range(3):
    parts.append(rest.astype(jnp.bfloat16))
    rest = rest - parts[-1].astype(jnp.float32)
  band = _band(sq.shape[-1], n)
  return jnp.matmul(jnp.concatenate(parts, axis=-1), jnp.concatenate([band] * 3, axis=0),
                    preferred_element_type=jnp.float32)


# config.model.lrn_impl: LRN's window sum of squares over channels, computed three ways (the same
# function and gradient). "auto" takes reduce_window on CPUs, where it was the fastest of the three
# (benchmarks/lrn.py: the matrix product took over twice its time), and the matrix product
# elsewhere: a GEMM is what GPUs run best, while a reduce_window over the channel axis is unlikely
# to fuse with its neighbours there (not yet measured on a GPU: run benchmarks/lrn.py on one).
LRN_WINDOW_SUMS = {"reduce_window": _window_sum_reduce_window, "matmul": _window_sum_matmul,
                   "slices": _window_sum_slices}
LRN_IMPLS = ("auto",) + tuple(LRN_WINDOW_SUMS)


def resolve_lrn_impl(impl: str) -> str:
  if impl == "auto":
    return "reduce_window" if jax.default_backend() == "cpu" else "matmul"
  return impl


def local_response_norm(x: Array, k: float = 2.0, n: int = 5, alpha: float = 1e-4,
                        beta: float = 0.75, impl: str = "auto") -> Array:
  """The paper's LRN over the channel (last) axis: a / (k + alpha * sum of a^2 over n)^beta.

  alpha is not divided by n (Caffe and PyTorch divide it). Computed in float32: the sum of
  squares of bfloat16 activations loses too much. `impl`: one of LRN_IMPLS.
  """
  sq = jnp.square(x.astype(jnp.float32))
  window_sum = LRN_WINDOW_SUMS[resolve_lrn_impl(impl)](sq, n)
  return (x.astype(jnp.float32) / (k + alpha * window_sum) ** beta).astype(x.dtype)


def max_pool(x: Array, window: int, stride: int) -> Array:
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, window, window, 1),
                               (1, stride, stride, 1), "VALID")


# config.model.pool_impl: the same function and gradient, computed two ways (fastops.py says
# why); "auto" takes slices on CPUs, where they train several times faster, and XLA's own
# reduce_window (select_and_scatter gradient) elsewhere.
POOL_IMPLS = {"auto": None, "slices": fastops.max_pool, "reduce_window": max_pool}
# config.model.conv1_impl: conv1 (stride 4, 3 channels) as is, or as a stride-1 convolution of
# 4x4 pixel blocks (48 channels); the same function, parameters unchanged.
CONV1_IMPLS = ("direct", "space_to_depth")


# config.model.conv_impl: the convolutions' forward pass and input gradient in XLA, or in oneDNN
# through XLA:CPU's own custom call (onednn.py says why and when); "auto" takes oneDNN on a
# single CPU device where the custom call works, XLA elsewhere.
CONV_IMPLS = ("auto", "xla", "onednn")


def resolve_conv_impl(impl: str) -> str:
  if impl == "auto":
    single_cpu = jax.default_backend() == "cpu" and jax.device_count() == 1
    return "onednn" if single_cpu and onednn.available() else "xla"
  return impl


def pool_function(impl: str) -> Callable:
  if impl == "auto":
    impl = "slices" if jax.default_backend() == "cpu" else "reduce_window"
  return POOL_IMPLS[impl]


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


def conv2d(x: Array, kernel: Array, stride: int, padding: int) -> Array:
  return jax.lax.conv_general_dilated(
      x, kernel.astype(x.dtype), (stride, stride), [(padding, padding)] * 2,
      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def onednn_conv2d(x: Array, kernel: Array, stride: int, padding: int) -> Array:
  """conv2d through oneDNN (float32 only: other dtypes stay with XLA)."""
  if x.dtype != jnp.float32:
    return conv2d(x, kernel, stride, padding)
  return onednn.conv2d(x, kernel.astype(x.dtype), stride, padding)


CONV_FUNCTIONS = {"xla": conv2d, "onednn": onednn_conv2d}


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

  Same function as vmap_towers; on XLA:CPU it ran 4-6x faster than the grouped convolution
  (small model, batch 64, 2-core CPU).
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


@dataclasses.dataclass(frozen=True)
class Options:
  """What a config chooses on top of a variant (the paper's ablations are these fields)."""
  num_classes: int
  input_size: int
  norm: str
  pool: str = "overlap"
  activation: str = "relu"
  dropout: float = 0.5
  width: float = 1.0
  init: str = "paper"
  dtype: str = "float32"
  tower_impl: str = "unrolled"  # how towers are mapped when no strategy says otherwise
  pool_impl: str = "auto"  # POOL_IMPLS
  conv1_impl: str = "direct"  # CONV1_IMPLS
  conv_impl: str = "auto"  # CONV_IMPLS
  lrn_impl: str = "auto"  # LRN_IMPLS
  lrn: tuple[float, int, float, float] = (2.0, 5, 1e-4, 0.75)  # k, n, alpha, beta


class AlexNet(nnx.Module):
  """`model(images_NHWC, train=..., dropout_key=..., tower_map=...) -> logits (float32)`.

  `tower_map` (default: the options' tower_impl) maps a per-tower segment over the tower axis;
  sharding strategies pass their own.
  """

  def __init__(self, variant: Variant, opts: Options, *, rngs: nnx.Rngs):
    self.variant = variant
    self.opts = opts
    towers = variant.towers if variant.towers > 1 else None
    scale = lambda f: max(1, round(f * opts.width))
    self.conv_specs = tuple(dataclasses.replace(c, features=scale(c.features)) for c in variant.convs)
    fc_widths = tuple(scale(f) for f in variant.fc)
    t = variant.towers

    cin_total, size = 3, opts.input_size
    window, stride = POOLS[opts.pool]
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
      size = (size + 2 * spec.padding - spec.kernel) // spec.stride + 1
      if spec.pool:
        size = (size - window) // stride + 1
    if variant.avgpool_to:
      size = variant.avgpool_to
    fan_in = size * size * cin_total
    self.fc_names = tuple(f"fc{6 + i}" for i in range(len(fc_widths)))
    for name, width in zip(self.fc_names, fc_widths):
      setattr(self, name, Weights((fan_in, width), fan_in, opts.init, variant.fc_bias, towers,
                                  rngs=rngs))
      fan_in = width * t
    self.classifier_name = f"fc{6 + len(fc_widths)}"
    setattr(self, self.classifier_name,
            Weights((fan_in, opts.num_classes), fan_in, opts.init, variant.fc_bias, None, rngs=rngs))

  # Segments: the pure per-tower functions that tower_map maps.

  def _conv_function(self, spec: Conv) -> Callable:
    if (spec.name == "conv1" and spec.stride > 1
        and self.opts.conv1_impl == "space_to_depth"):
      return fastops.strided_conv_as_space_to_depth
    return CONV_FUNCTIONS[resolve_conv_impl(self.opts.conv_impl)]

  def _conv_segment(self, specs: tuple[Conv, ...],
                    constrain: Constrain = no_constraint) -> Callable:
    act = ACTIVATIONS[self.opts.activation]
    window, stride = POOLS[self.opts.pool]
    pool = pool_function(self.opts.pool_impl)
    k, n, alpha, beta = self.opts.lrn
    use_lrn = self.opts.norm == "lrn"
    lrn_impl = resolve_lrn_impl(self.opts.lrn_impl)

    def segment(x, params):
      for i, (spec, (kernel, bias)) in enumerate(zip(specs, params)):
        # Named scopes put the layer into the compiled program's op names (HLO analysis).
        with jax.named_scope(spec.name):
          x = x if i == 0 else constrain(spec.name, x)
          conv = self._conv_function(spec)
          x = act(conv(x, kernel, spec.stride, spec.padding) + bias.astype(x.dtype))
          if use_lrn and spec.lrn:
            x = local_response_norm(x, k, n, alpha, beta, lrn_impl)
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

  def _weights(self, name: str, constrain: Constrain = no_constraint) -> tuple[Array, Array]:
    w = getattr(self, name)
    with jax.named_scope(name):  # a run of layers reads all its weights in its first layer's scope
      return constrain(f"{name}/kernel", w.kernel[...]), constrain(f"{name}/bias", w.bias[...])

  def _flatten(self, x: Array) -> Array:
    """The last feature map (N, H, W, C) -> (N, H*W*C), through torchvision's average pool."""
    if self.variant.avgpool_to:
      x = adaptive_avg_pool(x, self.variant.avgpool_to)
    return x.reshape(x.shape[0], -1)

  def embed(self, x: Array, *, train: bool = False, dropout_key: Array | None = None,
            tower_map: TowerMap | None = None,
            constrain: Constrain | None = None) -> tuple[Array, Array | None]:
    """Images (N, H, W, 3) -> the fc7 activations (N, T*fc7), merged, before dropout.

    Returns (features, the dropout key left for the classifier's input).
    """
    dtype = DTYPES[self.opts.dtype]
    x = x.astype(dtype)
    tower_map = tower_map or TOWER_IMPLS[self.opts.tower_impl]
    constrain = constrain or no_constraint
    towered = self.variant.towers > 1
    keys = list(jax.random.split(dropout_key, 4)) if (train and dropout_key is not None) else [None] * 4
    rate = self.opts.dropout

    if self.opts.norm == "batch":  # single tower (validated): BatchNorm is a stateful module
      act = ACTIVATIONS[self.opts.activation]
      window, stride = POOLS[self.opts.pool]
      pool = pool_function(self.opts.pool_impl)
      for spec in self.conv_specs:
        with jax.named_scope(spec.name):
          x = constrain(spec.name, x)
          kernel = constrain(f"{spec.name}/kernel", getattr(self, spec.name).kernel[...])
          x = self._conv_function(spec)(x, kernel, spec.stride, spec.padding)
          x = getattr(self, spec.name + "_bn")(x, use_running_average=not train).astype(dtype)
          x = act(x)
          if spec.pool:
            x = pool(x, window, stride)
    else:
      for j, run in enumerate(self._conv_runs()):
        # Each layer runs under a named scope, so the compiled program's op names say which
        # layer a collective belongs to; towers are merged inside the scope of the layer that
        # reads them (the paper's meeting points: conv3, fc6, fc7, fc8).
        with jax.named_scope(run[0].name):
          if towered and j:
            x = merge_towers(constrain(f"{run[0].name}/towers", x))
          x = constrain(run[0].name, x)
          params = [self._weights(spec.name, constrain) for spec in run]
          if towered:  # per-tower layers take no constraint: the tower_map places the towers
            x = tower_map(self._conv_segment(run))(x, params)
          else:
            x = self._conv_segment(run, constrain)(x, params)

    dense = self._dense_segment()
    for i, name in enumerate(self.fc_names):
      with jax.named_scope(name):
        x = merge_towers(constrain(f"{name}/towers", x)) if towered else x
        if i == 0:
          x = self._flatten(x)
        x = constrain(name, x)
        if name in self.variant.dropout_on:
          x = dropout(x, rate, keys[i])
        params = self._weights(name, constrain)
        x = tower_map(dense)(x, params) if towered else dense(x, params)
    with jax.named_scope(self.classifier_name):
      if towered:
        x = merge_towers(constrain(f"{self.classifier_name}/towers", x))
      if not self.fc_names:  # the classifier is the first dense layer (cnn4)
        x = self._flatten(x)
    last_key = keys[len(self.fc_names)] if self.classifier_name in self.variant.dropout_on else None
    return x, last_key

  def __call__(self, x: Array, *, train: bool = False, dropout_key: Array | None = None,
               tower_map: TowerMap | None = None, constrain: Constrain | None = None) -> Array:
    constrain = constrain or no_constraint
    features, key = self.embed(x, train=train, dropout_key=dropout_key, tower_map=tower_map,
                               constrain=constrain)
    with jax.named_scope(self.classifier_name):
      features = constrain(self.classifier_name, features)
      features = dropout(features, self.opts.dropout, key)
      kernel, bias = self._weights(self.classifier_name, constrain)
      logits = features @ kernel.astype(features.dtype) + bias.astype(features.dtype)
    return constrain("logits", logits.astype(jnp.float32))


# --- building from a config -----------------------------------------------------------------


def options_from_config(model_cfg, input_size: int) -> tuple[Variant, Options]:
  """The variant and options a config's `model` section and `data.crop_size` ask for."""
  if model_cfg.name not in VARIANTS:
    raise ValueError(f"config.model.name={model_cfg.name!r} is not a model; choose one of "
                     f"{', '.join(VARIANTS)}")
  variant = VARIANTS[model_cfg.name]
  norm = variant.norm if model_cfg.norm == "default" else model_cfg.norm
  init = variant.init if model_cfg.init == "default" else model_cfg.init
  opts = Options(
      num_classes=model_cfg.num_classes, input_size=input_size, norm=norm, pool=model_cfg.pool,
      activation=model_cfg.activation, dropout=model_cfg.dropout, width=model_cfg.width,
      init=init, dtype=model_cfg.dtype, tower_impl=model_cfg.tower_impl,
      pool_impl=model_cfg.pool_impl, conv1_impl=model_cfg.conv1_impl,
      conv_impl=model_cfg.conv_impl, lrn_impl=model_cfg.lrn_impl,
      lrn=(model_cfg.lrn_k, model_cfg.lrn_n, model_cfg.lrn_alpha, model_cfg.lrn_beta))
  return variant, opts


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
      (opts.pool_impl in POOL_IMPLS,
       f"config.model.pool_impl={opts.pool_impl!r}: choose {', '.join(POOL_IMPLS)}"),
      (opts.conv1_impl in CONV1_IMPLS,
       f"config.model.conv1_impl={opts.conv1_impl!r}: choose {' or '.join(CONV1_IMPLS)}"),
      (opts.conv_impl in CONV_IMPLS,
       f"config.model.conv_impl={opts.conv_impl!r}: choose {', '.join(CONV_IMPLS)}"),
      (opts.conv_impl != "onednn" or onednn.available(),
       "config.model.conv_impl=onednn: this JAX cannot run XLA:CPU's oneDNN convolution here "
       "(it needs the CPU backend and a jaxlib with that op); use auto or xla"),
      (opts.lrn_impl in LRN_IMPLS,
       f"config.model.lrn_impl={opts.lrn_impl!r}: choose {', '.join(LRN_IMPLS)}"),
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
  window, stride = POOLS[opts.pool]

  def side(size: int) -> int:  # the spatial side after the last convolution block
    for spec in variant.convs:
      size = (size + 2 * spec.padding - spec.kernel) // spec.stride + 1
      if spec.pool:
        size = (size - window) // stride + 1
    return size

  # The spatial size must stay >= 1 through every convolution and pool.
  size = opts.input_size
  for spec in variant.convs:
    size = (size + 2 * spec.padding - spec.kernel) // spec.stride + 1
    if spec.pool:
      size = (size - window) // stride + 1
    if size < 1:
      raise ValueError(f"config.data.crop_size={opts.input_size} is too small for model "
                       f"{variant.name!r} (nothing left after {spec.name}); use at least "
                       f"{variant.input_size}")
  fixed = variant.name in ("paper", "paper6")  # defined by the paper at exactly 227 px
  if fixed and opts.input_size != variant.input_size and not other_input_size:
    channels = variant.towers * max(1, round(variant.convs[-1].features * opts.width))
    raise ValueError(
        f"config.data.crop_size={opts.input_size}: model {variant.name!r} is the paper's network "
        f"at {variant.input_size} px only (at {opts.input_size} px its fc6 would read "
        f"{size * size * channels:,} inputs instead of {side(variant.input_size) ** 2 * channels:,}"
        f"); set "
        f"--config.data.crop_size={variant.input_size}, or --config.model.allow_other_input_size"
        "=true if another network is intended")


def create_model(model_cfg, input_size: int, rngs: nnx.Rngs) -> AlexNet:
  variant, opts = options_from_config(model_cfg, input_size)
  check_options(variant, opts)
  return AlexNet(variant, opts, rngs=rngs)


def count_params(model: nnx.Module) -> int:
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
