"""Meshes, sharding strategies, and putting host batches onto devices.

A strategy is data: the names of its two mesh axes (`data` x a second axis), a table from
parameter-path regexes to layouts (first match wins; unmatched leaves are replicated), the
PartitionSpec of the batch, a table from activation points ("conv3", "fc6", ... the inputs of
the model's layers, see model.Constrain) to PartitionSpecs, and whether the model's towers are
mapped onto a mesh axis. Adding a strategy is adding a table entry.

The parameter rules are matched against the path of every leaf of the whole train state
(`params/fc6/kernel`, `opt_state/inner_state/0/trace/fc6/kernel`), so a parameter's rule also
places its optimizer state.

Strategies (`config.sharding.strategy`, mesh `config.sharding.mesh` = "DxM"):
  data         parameters replicated, the batch split over every device (both axes).
  two_tower    the paper's split: the `model` axis (size 2) holds the two towers, the `data`
               axis splits the batch. Each tower's layers run on their own devices under
               `shard_map`, so devices talk only where the paper's towers do (the inputs of
               conv3, fc6, fc7 and fc8) plus the gradient reduction over `data`.
  weird_trick  Krizhevsky (2014): convolutions data-parallel over every device, the
               fully-connected kernels split over the `model` axis (output units), the
               activations exchanged once before fc6 (and between the FC layers).
  fsdp         ZeRO-3 style: every parameter and its optimizer state sharded over the `fsdp`
               axis (largest divisible dimension), gathered layer by layer for the compute;
               the batch split over every device. A `data` axis > 1 replicates the shards
               (hybrid sharding).
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re
from typing import Callable, Iterator, Sequence, Union

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from alexnet_jax import configlib
from alexnet_jax import model as model_lib
from alexnet_jax.optim import path_str


# --- layouts: how one array is split, given its shape -----------------------------------------


@dataclasses.dataclass(frozen=True)
class SplitLast:
  """Split the last dimension (a dense layer's output units) over `axis`."""
  axis: str

  def spec(self, shape: Sequence[int], mesh: Mesh) -> P:
    if not shape:
      return P()
    return P(*([None] * (len(shape) - 1) + [self.axis]))


@dataclasses.dataclass(frozen=True)
class Fsdp:
  """Split the largest dimension that `axis` divides (big_vision's fsdp rule); else replicate."""
  axis: str

  def spec(self, shape: Sequence[int], mesh: Mesh) -> P:
    size = mesh.shape[self.axis]
    candidates = [i for i in np.argsort(shape)[::-1] if shape[i] % size == 0]
    if size == 1 or not candidates:
      return P()
    spec = [None] * len(shape)
    spec[int(candidates[0])] = self.axis
    return P(*spec)


Layout = Union[P, SplitLast, Fsdp]


def _fit(spec: P, shape: Sequence[int], mesh: Mesh) -> P:
  """Replicate any dimension the spec's mesh axes do not divide (e.g. 10 classes over 4
  devices): jit needs every sharded dimension divisible."""
  dims = list(spec) + [None] * (len(shape) - len(spec))
  for i, names in enumerate(dims[:len(shape)]):
    if names is None:
      continue
    group = (names,) if isinstance(names, str) else tuple(names)
    if shape[i] % math.prod(mesh.shape[n] for n in group):
      dims[i] = None
  dims = dims[:len(shape)]
  while dims and dims[-1] is None:  # P('model') rather than P('model', None, None)
    dims.pop()
  return P(*dims)


# --- strategies -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Strategy:
  name: str
  axes: tuple[str, str]  # mesh axis names: the data axis, then the second axis
  rules: tuple[tuple[str, Layout], ...] = ()  # (regex over 'params/conv1/kernel', layout)
  batch_spec: P = P(("data", "model"))
  activations: tuple[tuple[str, P], ...] = ()  # (regex over an activation point, spec)
  tower_axis: str | None = None  # map the model's towers over this axis with shard_map
  default_second: Callable[[int], int] = lambda n: 1  # the second axis' size on n devices
  description: str = ""

  def default_mesh_shape(self, num_devices: int) -> tuple[int, int]:
    second = self.default_second(num_devices)
    return (num_devices // second, second)

  def placement(self, mesh: Mesh) -> model_lib.Placement:
    """Where the model's towers and activations go on `mesh`, bound into the model once."""
    return model_lib.Placement(
        tower_map=self.tower_map(mesh),
        constrain=self.constrain(mesh) or model_lib.no_constraint)

  def tower_map(self, mesh: Mesh) -> model_lib.TowerMap | None:
    """How the model maps its towers; None: the model's own choice (config.model.tower_impl)."""
    if self.tower_axis is None:
      return None
    return shard_map_towers(mesh, self.tower_axis, data_axis=self.axes[0])

  def constrain(self, mesh: Mesh) -> model_lib.Constrain | None:
    """The activation constraints as the model's `constrain(point, x)` hook (None: none)."""
    if not self.activations:
      return None
    table = tuple((re.compile(pattern), spec) for pattern, spec in self.activations)

    def constrain(point: str, x: jax.Array) -> jax.Array:
      for pattern, spec in table:
        if pattern.fullmatch(point):
          spec = _fit(spec, x.shape, mesh)
          return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
      return x

    return constrain

  def check_model(self, variant: model_lib.Variant, mesh_shape: Sequence[int]) -> None:
    """Raise ConfigError when this strategy cannot hold `variant` on a mesh of `mesh_shape`."""
    if self.tower_axis is None:
      return
    size = dict(zip(self.axes, mesh_shape))[self.tower_axis]
    if variant.towers < 2:
      raise configlib.ConfigError(
          f"config.sharding.strategy={self.name} places the paper's two towers on devices, but "
          f"model {variant.name!r} has one tower; use a two-tower model (paper, paper6, small) "
          "or another strategy (data, weird_trick, fsdp)")
    if variant.towers % size:
      raise configlib.ConfigError(
          f"config.sharding.mesh: strategy {self.name} puts the {variant.towers} towers on the "
          f"{self.tower_axis!r} axis, which has {size} devices; make it {variant.towers} "
          f"(e.g. --config.sharding.mesh={max(1, math.prod(mesh_shape) // variant.towers)}x"
          f"{variant.towers})")


_TOWERED = r"(conv\d+|fc6|fc7)/(kernel|bias)$"  # the layers with a tower axis (fc8 has none)
_FC_HIDDEN = r"(fc6|fc7)/(kernel|bias)$"

STRATEGIES: dict[str, Strategy] = {
    "data": Strategy(
        "data", ("data", "model"),
        description="parameters replicated, the batch split over every device"),
    "two_tower": Strategy(
        "two_tower", ("data", "model"),
        rules=((_TOWERED, P("model")),),
        batch_spec=P("data"),
        # The towers' outputs are gathered whole onto both towers' devices (one all-gather over
        # the model axis) right before the layer that reads both; the merge is then local.
        activations=((r".*/towers", P(None, "data")),),
        tower_axis="model",
        default_second=lambda n: 2 if n % 2 == 0 else 1,
        description="the paper's split: one tower per device on the model axis (shard_map), "
                    "the batch over data"),
    "weird_trick": Strategy(
        "weird_trick", ("data", "model"),
        # Dense kernels and biases split by output unit; towered ones keep their tower axis whole.
        rules=((_FC_HIDDEN, SplitLast("model")), (r"fc8/(kernel|bias)$", SplitLast("model"))),
        activations=(
            (r"conv\d+", P(("data", "model"))),  # convolutions: data-parallel on every device
            (r"fc\d+", P("data")),  # FC layers: every model device sees its data group's batch
            (r"logits", P("data")),  # the whole rows for the softmax (small: N x classes)
        ),
        default_second=lambda n: n,
        description="Krizhevsky 2014: convolutions data-parallel, FC layers model-parallel"),
    "fsdp": Strategy(
        "fsdp", ("data", "fsdp"),
        rules=((r"^(params|model_state|opt_state)/", Fsdp("fsdp")),),
        batch_spec=P(("data", "fsdp")),
        # Each layer's weights are gathered where the layer uses them (the backward pass turns
        # the gather into a reduction of the gradient onto the shards); activations stay split
        # by example, so GSPMD moves weights, not activations.
        activations=((r".*/(kernel|bias)", P()),
                     (r"(conv|fc)\d+|logits", P(("data", "fsdp")))),
        default_second=lambda n: n,
        description="ZeRO-3: parameters and optimizer state sharded, gathered per layer"),
}


def get_strategy(name: str) -> Strategy:
  if name not in STRATEGIES:
    raise configlib.ConfigError(
        f"config.sharding.strategy={name!r}: choose one of {', '.join(STRATEGIES)}")
  return STRATEGIES[name]


# --- meshes ---------------------------------------------------------------------------------


def parse_mesh_shape(text: str, strategy: Strategy, num_devices: int) -> tuple[int, int]:
  """'4x2' -> (4, 2) (data x second axis); '8' -> (8, 1); '' -> the strategy's default."""
  if not text:
    return strategy.default_mesh_shape(num_devices)
  try:
    shape = tuple(int(s) for s in text.lower().split("x"))
  except ValueError:
    raise configlib.ConfigError(
        f"config.sharding.mesh={text!r}: write sizes like '8' or '4x2' "
        f"({' x '.join(strategy.axes)})") from None
  if len(shape) == 1:
    shape = (shape[0], 1)
  if len(shape) != 2 or min(shape) < 1:
    raise configlib.ConfigError(
        f"config.sharding.mesh={text!r}: give two positive sizes, "
        f"{strategy.axes[0]} x {strategy.axes[1]}, e.g. '4x2'")
  if math.prod(shape) != num_devices:
    raise configlib.ConfigError(
        f"config.sharding.mesh={text!r} needs {math.prod(shape)} devices but {num_devices} are "
        f"present; the sizes must multiply to {num_devices}")
  return shape


def make_mesh(strategy: Strategy, shape: Sequence[int],
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  devices = jax.devices() if devices is None else list(devices)
  # Devices in process order, data axis outermost: each process's devices hold one contiguous
  # block of the batch's rows (process_rows), so a process loads only that block.
  grid = np.asarray(devices).reshape(tuple(shape))
  # Auto axes: GSPMD propagates shardings through ops we do not annotate.
  return Mesh(grid, strategy.axes, axis_types=(AxisType.Auto,) * len(strategy.axes))


def data_axis_size(mesh: Mesh, strategy: Strategy) -> int:
  """How many ways the batch is split."""
  names = strategy.batch_spec[0] if len(strategy.batch_spec) else ()
  names = (names,) if isinstance(names, str) else tuple(names or ())
  return math.prod(mesh.shape[n] for n in names)


def setup(cfg, devices: Sequence[jax.Device] | None = None) -> tuple[Strategy, Mesh]:
  """The config's strategy and its mesh over `devices` (default: every device of every process).

  Raises ConfigError (one line naming the field) for an unknown strategy or a mesh that does not
  match the devices. The rest of the config is checked against them by program.validate.
  """
  devices = jax.devices() if devices is None else list(devices)
  strategy = get_strategy(cfg.sharding.strategy)
  shape = parse_mesh_shape(cfg.sharding.mesh, strategy, len(devices))
  return strategy, make_mesh(strategy, shape, devices)


# --- placing arrays -------------------------------------------------------------------------


def spec_for(path: str, shape: Sequence[int], mesh: Mesh, strategy: Strategy) -> P:
  for pattern, layout in strategy.rules:
    if re.search(pattern, path):
      spec = layout if isinstance(layout, P) else layout.spec(tuple(shape), mesh)
      return _fit(spec, shape, mesh)
  return P()


def tree_shardings(tree, mesh: Mesh, strategy: Strategy):
  """NamedShardings for a tree of arrays (or shapes) by the strategy's path rules."""
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: NamedSharding(mesh, spec_for(path_str(path), np.shape(leaf), mesh,
                                                      strategy)), tree)


def batch_sharding(mesh: Mesh, strategy: Strategy) -> NamedSharding:
  return NamedSharding(mesh, strategy.batch_spec)


@dataclasses.dataclass(frozen=True)
class Rows:
  """The rows of every global batch that one process loads: block `index` of `count` equal,
  contiguous blocks. Processes whose devices hold the same rows (one data group, e.g. the two
  tower devices of two_tower in two processes) load the same block."""
  index: int
  count: int


def process_rows(sharding: NamedSharding, global_batch: int) -> Rows:
  """The block of rows this process's devices hold under `sharding` (the union of their
  slices of the batch dimension), which is exactly what it must load."""
  spans = sorted({(index[0].start or 0, global_batch if index[0].stop is None else index[0].stop)
                  for index in sharding.addressable_devices_indices_map((global_batch,)).values()})
  contiguous = all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
  lo, hi = spans[0][0], spans[-1][1]
  size = hi - lo
  if not contiguous or global_batch % size or lo % size:
    raise configlib.ConfigError(
        f"the mesh gives process {jax.process_index()} rows {spans} of a batch of "
        f"{global_batch}, not one aligned block; order the mesh's devices by process "
        "(config.sharding.mesh with the data axis outermost)")
  return Rows(lo // size, global_batch // size)


@dataclasses.dataclass(frozen=True)
class BatchFeed:
  """Per-process numpy batches -> global jax.Arrays of `global_batch` rows under `sharding`.

  The global shape is stated, so a process that loads other rows than its devices hold is an
  error here, never a silently smaller or mixed batch.
  """
  sharding: NamedSharding
  global_batch: int
  rows: Rows

  @property
  def local_batch(self) -> int:
    return self.global_batch // self.rows.count

  def put(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    out = {}
    for name, value in batch.items():
      if value.shape[0] != self.local_batch:
        raise ValueError(
            f"batch field {name!r} has {value.shape[0]} rows on process {jax.process_index()}, "
            f"but its devices hold {self.local_batch} rows (block {self.rows.index} of "
            f"{self.rows.count}) of the global batch of {self.global_batch}")
      out[name] = jax.make_array_from_process_local_data(
          self.sharding, value, (self.global_batch,) + value.shape[1:])
    return out

  def prefetch(self, batches: Iterator[dict[str, np.ndarray]],
               size: int) -> Iterator[dict[str, jax.Array]]:
    """Keep `size` batches in flight to the devices (transfers are asynchronous), so the copy
    of the next batch overlaps the current step."""
    queue: collections.deque = collections.deque()
    for batch in batches:
      queue.append(self.put(batch))
      if len(queue) > size:
        yield queue.popleft()
    while queue:
      yield queue.popleft()


def batch_feed(mesh: Mesh, strategy: Strategy, global_batch: int) -> BatchFeed:
  sharding = batch_sharding(mesh, strategy)
  return BatchFeed(sharding, global_batch, process_rows(sharding, global_batch))


# --- the paper's towers on devices ----------------------------------------------------------


def shard_map_towers(mesh: Mesh, tower_axis: str, data_axis: str) -> model_lib.TowerMap:
  """A tower_map that runs each tower's segment on the devices of its slot on `tower_axis`.

  Inside `shard_map` a device sees the merged input of its data group (replicated over the
  tower axis) and only its own tower's parameters, so nothing crosses the tower axis inside a
  segment; the towers meet when the model merges the (T, N, ...) output, sharded
  (tower_axis, data_axis). GSPMD alone all-gathers tower-sharded operands of a grouped or
  vmapped convolution instead (jax 0.10, CPU).
  """

  def tower_map(segment: Callable) -> Callable:
    per_device = model_lib.unrolled_towers(segment)  # the towers this device holds (1 when T = M)
    return jax.shard_map(per_device, mesh=mesh, in_specs=(P(data_axis), P(tower_axis)),
                         out_specs=P(tower_axis, data_axis))

  return tower_map
