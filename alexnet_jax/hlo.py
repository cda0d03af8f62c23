"""Reading collectives out of a compiled program's HLO text.

`collectives(compiled.as_text())` lists every collective the compiled (SPMD-partitioned) program
runs: its kind (all-reduce, all-gather, reduce-scatter, all-to-all, collective-permute), the
bytes of its result per device, the device groups it talks within, and, per tuple element, the
op name JAX gave the value. The model runs each layer under `jax.named_scope(layer)`, so op
names such as `transpose(jvp(conv3))/shard_map/conv4/psum_invariant` say which layer a
collective serves and whether it is in the forward (`jvp`) or backward (`transpose`) pass.
XLA's combiners merge several collectives into one tuple-shaped op; its op name then lists the
constituents as `(name1:name2:...)`, one per tuple element, in order.

Device ids in replica groups are positions in the compiled device assignment, which for a jit
over a mesh is the mesh's devices in row-major order (`mesh.devices.flat`): `axes_spanned`
turns groups into the mesh axes a collective crosses.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence

import numpy as np

KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")

DTYPE_BYTES = {
    "pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
    "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1,
}

_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*(?P<shape>.+?)\s+"
    r"(?P<op>" + "|".join(KINDS) + r")(?P<start>-start)?\(")
_ARRAY_SHAPE = re.compile(r"\b([a-z]+[0-9]*[a-z0-9]*)\[([0-9,]*)\]")
_LAYER = re.compile(r"\b(conv\d+|fc\d+)\b")


@dataclasses.dataclass(frozen=True)
class Part:
  """One tuple element of a collective (or the whole op when it is not a tuple)."""
  bytes: int
  op_name: str  # JAX's name for the value, e.g. "transpose(jvp(fc7))/dot_general"

  @property
  def layer(self) -> str | None:
    """The innermost layer scope in the op name ('conv4'), None for loss and metrics."""
    found = _LAYER.findall(self.op_name)
    return found[-1] if found else None

  @property
  def backward(self) -> bool:
    return "transpose(" in self.op_name


@dataclasses.dataclass(frozen=True)
class Collective:
  kind: str
  name: str  # the HLO instruction's name
  parts: tuple[Part, ...]
  groups: tuple[tuple[int, ...], ...] | None  # device ids talking together; None: not parsed

  @property
  def bytes(self) -> int:
    return sum(p.bytes for p in self.parts)

  def axes_spanned(self, mesh_shape: Sequence[int], axis_names: Sequence[str]) -> set[str] | None:
    """The mesh axes along which members of a group differ (None when groups are unknown)."""
    if self.groups is None:
      return None
    spanned = set()
    for group in self.groups:
      coords = np.array([np.unravel_index(d, tuple(mesh_shape)) for d in group])
      for i, name in enumerate(axis_names):
        if len(set(coords[:, i])) > 1:
          spanned.add(name)
    return spanned


def shape_bytes(text: str) -> list[int]:
  """Bytes of each array in an HLO shape ('f32[4,3]{1,0}' or a tuple '(f32[2], s32[])')."""
  sizes = []
  for dtype, dims in _ARRAY_SHAPE.findall(text):
    if dtype not in DTYPE_BYTES:
      continue
    count = int(np.prod([int(d) for d in dims.split(",") if d])) if dims else 1
    sizes.append(count * DTYPE_BYTES[dtype])
  return sizes


def _iota(spec: str) -> np.ndarray:
  """'[4,2]T(1,0)' or '[8]' -> the device ids that iota layout describes."""
  m = re.fullmatch(r"\[([0-9,]+)\](?:T\(([0-9,]+)\))?", spec.strip())
  if not m:
    raise ValueError(spec)
  dims = [int(d) for d in m.group(1).split(",")]
  ids = np.arange(int(np.prod(dims))).reshape(dims)
  if m.group(2):
    ids = ids.transpose([int(p) for p in m.group(2).split(",")])
  return ids


def parse_groups(line: str, num_devices: int) -> tuple[tuple[int, ...], ...] | None:
  """Device groups of a collective from any of XLA's replica-group spellings."""
  m = re.search(r"source_target_pairs=\{((?:\{[0-9,]+\},?)*)\}", line)
  if m:  # collective-permute: each (source, target) pair talks
    return tuple(tuple(int(x) for x in pair.split(","))
                 for pair in re.findall(r"\{([0-9,]+)\}", m.group(1)))
  m = re.search(r"replica_groups=mesh\[([^\]]*)\](?:,\s*device_ids=\(([^)]*\)?)\))?\s*\{([^}]*)\}",
                line)
  if m:  # mesh['axis_0'=4,'axis_1'=2], device_ids=([2,4]T(1,0)) {'axis_0'}
    names = re.findall(r"'([^']+)'=(\d+)", m.group(1))
    sizes = [int(s) for _, s in names]
    ids = (_iota(m.group(2)) if m.group(2) else np.arange(int(np.prod(sizes)))).reshape(sizes)
    grouped = [i for i, (n, _) in enumerate(names) if f"'{n}'" in m.group(3)]
    rest = [i for i in range(len(sizes)) if i not in grouped]
    size = int(np.prod([sizes[i] for i in grouped])) if grouped else 1
    return tuple(tuple(int(x) for x in g)
                 for g in ids.transpose(rest + grouped).reshape(-1, size))
  m = re.search(r"replica_groups=\[(\d+),(\d+)\]<=(\[[0-9,]+\](?:T\([0-9,]+\))?)", line)
  if m:  # iota: [4,2]<=[8] or [2,4]<=[4,2]T(1,0)
    ids = _iota(m.group(3)).reshape(int(m.group(1)), int(m.group(2)))
    return tuple(tuple(int(x) for x in g) for g in ids)
  m = re.search(r"replica_groups=\{((?:\{[0-9,]*\},?)*)\}", line)
  if m:
    groups = tuple(tuple(int(x) for x in g.split(",") if x)
                   for g in re.findall(r"\{([0-9,]*)\}", m.group(1)))
    return groups or (tuple(range(num_devices)),)  # {} = every device
  if "replica_groups" not in line:
    return (tuple(range(num_devices)),)
  return None


def _op_names(line: str) -> list[str]:
  m = re.search(r'op_name="([^"]*)"', line)
  if not m:
    return []
  name = re.sub(r"^jit\([^)]*\)/", "", m.group(1))
  if name.startswith("(") and name.endswith(")") and ":" in name:  # a combined collective
    return name[1:-1].split(":")
  return [name]


def collectives(hlo_text: str, num_devices: int) -> list[Collective]:
  """Every collective in the HLO text of a compiled SPMD program that moves data: one whose
  groups all hold a single device (a sum over a mesh axis of size 1) is left out."""
  found = []
  for line in hlo_text.splitlines():
    m = _INSTRUCTION.match(line)
    if not m:
      continue
    sizes = shape_bytes(m.group("shape"))
    if m.group("start"):
      # Async forms (GPU): the result tuple also holds the operands (and, for
      # collective-permute, two u32 context scalars); keep the outputs.
      if m.group("op") == "all-gather":
        sizes = sizes[len(sizes) // 2:]
      elif m.group("op") == "collective-permute":
        sizes = sizes[1:2]
    names = _op_names(line)
    if len(names) != len(sizes):
      names = [names[0] if names else ""] * len(sizes)
    groups = parse_groups(line, num_devices)
    if groups is not None and all(len(set(g)) <= 1 for g in groups):
      continue
    found.append(Collective(
        kind=m.group("op"), name=m.group("name"),
        parts=tuple(Part(b, n) for b, n in zip(sizes, names)), groups=groups))
  return found


@dataclasses.dataclass
class KindSummary:
  count: int = 0
  bytes: int = 0
  layers: dict[str, set[str]] = dataclasses.field(default_factory=dict)  # axes -> layer labels

  def layer_text(self) -> str:
    """'model: conv3 fc6 (bwd); data: conv1 (bwd) loss/metrics' (the axes the devices span)."""
    return "; ".join(f"{axes}: " + " ".join(sorted(labels, key=_layer_order))
                     for axes, labels in sorted(self.layers.items())) or "-"


def _layer_order(label: str):
  layer = label.split()[0]
  m = re.match(r"(conv|fc)(\d+)", layer)
  base = (0 if layer.startswith("conv") else 1, int(m.group(2))) if m else (2, 0)
  return base + (label,)


def part_label(part: Part) -> str:
  """'conv3', 'fc7 (bwd)', 'loss/metrics' (values outside every layer scope)."""
  if part.layer is None:
    return "loss/metrics"
  return part.layer + (" (bwd)" if part.backward else "")


def axes_label(c: Collective, mesh_shape: Sequence[int], axis_names: Sequence[str]) -> str:
  spanned = c.axes_spanned(mesh_shape, axis_names)
  if spanned is None:
    return "?"
  return "+".join(a for a in axis_names if a in spanned) or "none"


def summarize(found: Sequence[Collective], mesh_shape: Sequence[int],
              axis_names: Sequence[str]) -> dict[str, KindSummary]:
  """Per kind: how many collectives, their result bytes per device, and the layers they serve,
  grouped by the mesh axes they talk across."""
  summary = {kind: KindSummary() for kind in KINDS}
  for c in found:
    s = summary[c.kind]
    s.count += 1
    s.bytes += c.bytes
    s.layers.setdefault(axes_label(c, mesh_shape, axis_names), set()).update(
        part_label(p) for p in c.parts)
  return summary
