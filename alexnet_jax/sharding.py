"""Meshes, sharding strategies, and putting host batches onto devices.

A strategy is data: the names of its mesh axes, a table from parameter-path regexes to
PartitionSpecs (first match wins; unmatched parameters are replicated), the PartitionSpec of the
batch, and how the model maps its towers. Adding a strategy is adding a table entry.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re
from typing import Callable, Iterator, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from alexnet_jax import model as model_lib
from alexnet_jax.optim import path_str


@dataclasses.dataclass(frozen=True)
class Strategy:
  name: str
  axes: tuple[str, ...]  # mesh axis names, outermost first
  rules: tuple[tuple[str, P], ...] = ()  # (regex over 'conv1/kernel', spec); first match wins
  batch_spec: P = P("data")
  description: str = ""

  def default_mesh_shape(self, num_devices: int) -> tuple[int, ...]:
    return (num_devices,) + (1,) * (len(self.axes) - 1)

  def tower_map(self, mesh: Mesh) -> model_lib.TowerMap | None:
    """How the model maps its towers under this strategy; None: the model's own choice."""
    del mesh
    return None


STRATEGIES: dict[str, Strategy] = {
    "data": Strategy("data", ("data",),
                     description="parameters replicated, the batch split over every device"),
}


def get_strategy(name: str) -> Strategy:
  if name not in STRATEGIES:
    raise ValueError(f"config.sharding.strategy={name!r}: choose one of {', '.join(STRATEGIES)}")
  return STRATEGIES[name]


def parse_mesh_shape(text: str, strategy: Strategy, num_devices: int) -> tuple[int, ...]:
  """'4x2' -> (4, 2); '' -> the strategy's default. Raises ValueError naming the field."""
  if not text:
    return strategy.default_mesh_shape(num_devices)
  try:
    shape = tuple(int(s) for s in text.lower().split("x"))
  except ValueError:
    raise ValueError(f"config.sharding.mesh={text!r}: write sizes like '8' or '4x2'") from None
  if len(shape) != len(strategy.axes):
    raise ValueError(f"config.sharding.mesh={text!r}: strategy {strategy.name!r} has axes "
                     f"{' x '.join(strategy.axes)}; give {len(strategy.axes)} sizes")
  if math.prod(shape) != num_devices:
    raise ValueError(f"config.sharding.mesh={text!r} needs {math.prod(shape)} devices but "
                     f"{num_devices} are present; the sizes must multiply to {num_devices}")
  return shape


def make_mesh(strategy: Strategy, shape: Sequence[int],
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  devices = jax.devices() if devices is None else list(devices)
  grid = np.asarray(devices).reshape(tuple(shape))
  # Auto axes: GSPMD propagates shardings through ops we do not annotate.
  return Mesh(grid, strategy.axes, axis_types=(AxisType.Auto,) * len(strategy.axes))


def spec_for(path: str, strategy: Strategy) -> P:
  for pattern, spec in strategy.rules:
    if re.search(pattern, path):
      return spec
  return P()


def tree_shardings(tree, mesh: Mesh, strategy: Strategy):
  """NamedShardings for a tree of arrays (or shapes) by the strategy's path rules."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: NamedSharding(mesh, spec_for(path_str(path), strategy)), tree)


def data_axis_size(mesh: Mesh, strategy: Strategy) -> int:
  """How many ways the batch is split."""
  names = strategy.batch_spec[0] if len(strategy.batch_spec) else ()
  names = (names,) if isinstance(names, str) else tuple(names or ())
  return math.prod(mesh.shape[n] for n in names)


def batch_sharding(mesh: Mesh, strategy: Strategy) -> NamedSharding:
  return NamedSharding(mesh, strategy.batch_spec)


def put_batch(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """Per-process numpy batch -> global jax.Arrays, each process contributing its rows."""
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def prefetch_to_device(batches: Iterator[dict[str, np.ndarray]], size: int,
                       sharding: NamedSharding) -> Iterator[dict[str, jax.Array]]:
  """Keep `size` batches in flight to the devices (transfers are asynchronous), so the copy of
  the next batch overlaps the current step."""
  queue: collections.deque = collections.deque()
  for batch in batches:
    queue.append(put_batch(batch, sharding))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()
