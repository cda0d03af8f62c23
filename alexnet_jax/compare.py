"""`launch.py compare`: the sharding strategies side by side on the devices present.

For each strategy this compiles the program `train` runs (alexnet_jax.program.build: the
strategy's shardings, tower map and activation constraints, state donated) on a synthetic global
batch of the config's shape, each process holding the rows its devices hold, then measures and
reads off:

  - step time (median, 10th and 90th percentile over --steps after --warmup) and images/s;
  - per-device bytes of the parameters and of the optimizer state (from their shardings), and
    the per-device peak from the compiled program's memory analysis;
  - every collective in the compiled HLO (alexnet_jax.hlo): count and result bytes per kind, and
    the layers they serve (from the op names);
  - the communication volume per step worked out by hand from the layer shapes (below), in the
    same unit as the measured bytes, so one can be checked against the other;
  - compile time.

Writes compare.md, compare.csv and compare.png into the work directory (the chart only where
matplotlib is installed: the tables are the record, and GPU hosts may have no matplotlib).
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import logging
import math
import os
import time
from typing import Sequence

import jax
import numpy as np
from jax.sharding import PartitionSpec as P

from alexnet_jax import configlib
from alexnet_jax import hlo
from alexnet_jax import model as model_lib
from alexnet_jax import optim
from alexnet_jax import program as program_lib
from alexnet_jax import sharding as shard_lib
from alexnet_jax.data import synthetic

log = logging.getLogger("alexnet_jax.compare")


# --- building one strategy's train step -----------------------------------------------------


@dataclasses.dataclass
class Built:
  """One strategy's compiled train step and everything needed to run and describe it."""
  cfg: object
  program: program_lib.Program
  compiled: object  # jax.stages.Compiled
  state: program_lib.TrainState
  batch: dict
  compile_s: float

  @property
  def strategy(self) -> shard_lib.Strategy:
    return self.program.strategy

  @property
  def mesh(self) -> jax.sharding.Mesh:
    return self.program.mesh

  @property
  def shapes(self) -> program_lib.TrainState:  # ShapeDtypeStructs of the state
    return self.program.state_shapes

  @property
  def shardings(self) -> program_lib.TrainState:
    return self.program.state_shardings


def strategy_config(cfg, strategy: str, mesh: str):
  out = copy.deepcopy(cfg)
  with out.unlocked():
    out.sharding.strategy = strategy
    out.sharding.mesh = mesh
  return out


def synthetic_batch(cfg, seed: int = 0) -> dict[str, np.ndarray]:
  """A global batch shaped like the input pipeline's (uint8 images, labels, mask, lighting)."""
  return synthetic.synthetic_batch(cfg, cfg.batch_size, seed)


def build(cfg, devices: Sequence[jax.Device] | None = None,
          compiler_options: dict | None = None, initial_state=None) -> Built:
  """The program `train` runs for `cfg` (alexnet_jax.program.build), its state, and its train
  step lowered and compiled on a synthetic batch.

  `initial_state` (a host copy of a TrainState) is placed instead of initialising, so that
  several strategies can start from the very same numbers. Raises ConfigError for a config the
  strategy cannot run.
  """
  program = program_lib.build(cfg, devices, compiler_options=compiler_options)
  state = program.create_state() if initial_state is None else program.place_state(initial_state)
  feed = program.train_feed
  batch = feed.put(synthetic.block(synthetic_batch(cfg), feed.rows.index, feed.rows.count))
  start = time.perf_counter()
  compiled = program.train_step.compile(state, batch)
  compile_s = time.perf_counter() - start
  return Built(cfg, program, compiled, state, batch, compile_s)


# --- what the compiled program says -----------------------------------------------------------


def per_device_bytes(shapes, shardings) -> int:
  """Bytes one device holds of a tree (the largest shard, for uneven layouts)."""
  total = 0
  for shape, sharding in zip(jax.tree.leaves(shapes), jax.tree.leaves(shardings)):
    shard = sharding.shard_shape(shape.shape)
    total += math.prod(shard) * np.dtype(shape.dtype).itemsize
  return total


def peak_bytes(compiled) -> int | None:
  """Per-device bytes the compiled step needs, from XLA's memory analysis: arguments + outputs
  - donated (aliased) + the temporary buffer (XLA allocates it whole for the step).

  (XLA:CPU's own `peak_memory_in_bytes` leaves the temporaries out, so it is not used.)
  """
  stats = compiled.memory_analysis()
  if stats is None:
    return None
  return int(stats.argument_size_in_bytes + stats.output_size_in_bytes
             - stats.alias_size_in_bytes + stats.temp_size_in_bytes)


def activation_shapes(cfg, built: Built) -> dict[str, jax.ShapeDtypeStruct]:
  """The merged activations at every constraint point of the model, for the global batch."""
  seen: dict[str, jax.ShapeDtypeStruct] = {}

  def record(point, x):
    seen.setdefault(point, jax.ShapeDtypeStruct(x.shape, x.dtype))
    return x

  fns = program_lib.model_fns(cfg, model_lib.Placement(constrain=record))

  images = jax.ShapeDtypeStruct((cfg.batch_size, cfg.data.crop_size, cfg.data.crop_size, 3),
                                model_lib.DTYPES[cfg.model.dtype])
  jax.eval_shape(lambda p, s, x: fns.apply(p, s, x, train=False)[0],
                 built.shapes.params, built.shapes.model_state, images)
  return seen


# --- communication by hand ------------------------------------------------------------------
#
# Per device and per step, in the unit the HLO gives: the bytes of each collective's result
# buffer. d = size of the data axis, m = size of the second axis, n = d * m devices;
# act(p) = bytes of the merged activation entering layer p for the global batch, so one data
# group's share is act(p) / d.


@dataclasses.dataclass
class Traffic:
  gradients: int = 0  # summing gradients over the devices that saw other examples
  weights: int = 0  # gathering sharded weights for the compute (fsdp)
  activations: int = 0  # moving activations between devices (towers, model-parallel FC)

  @property
  def total(self) -> int:
    return self.gradients + self.weights + self.activations


def _nbytes(x) -> int:
  return math.prod(x.shape) * np.dtype(x.dtype).itemsize


def _param_leaves(built: Built):
  """(path, global bytes, per-device bytes, spec) of every parameter."""
  out = []
  flat, _ = jax.tree_util.tree_flatten_with_path(built.shapes.params)
  for (path, shape), sharding in zip(flat, jax.tree.leaves(built.shardings.params)):
    shard = math.prod(sharding.shard_shape(shape.shape)) * np.dtype(shape.dtype).itemsize
    out.append((optim.path_str(path), _nbytes(shape), shard, sharding.spec))
  return out


def _axes_of(spec: P) -> set[str]:
  names = set()
  for entry in spec:
    if entry is not None:
      names.update((entry,) if isinstance(entry, str) else entry)
  return names


def hand_traffic(built: Built, acts: dict[str, jax.ShapeDtypeStruct]) -> Traffic | None:
  """The communication each strategy needs, from the layer shapes alone."""
  d, m = (built.mesh.shape[a] for a in built.strategy.axes)
  n = d * m
  name = built.strategy.name
  act = lambda p: _nbytes(acts[p]) // d if p in acts else 0
  params = _param_leaves(built)
  t = Traffic()
  if name == "data":
    # One all-reduce of every gradient over all n devices.
    t.gradients = sum(full for _, full, _, _ in params) if n > 1 else 0
  elif name == "two_tower":
    # Each device sums its own tower's gradients (full / m) and the untowered fc8's over data.
    t.gradients = sum(shard for _, _, shard, _ in params) if d > 1 else 0
    if m > 1:
      # Forward: each merge point assembles the data group's merged input on both towers.
      # Backward: the gradient of a merged input read by both towers is summed over the
      # towers (conv3, fc6, fc7; fc8's kernel is not towered, so its input gradient is whole).
      t.activations = sum(act(p) for p in ("conv3", "fc6", "fc7", "fc8"))
      t.activations += sum(act(p) for p in ("conv3", "fc6", "fc7"))
  elif name == "weird_trick":
    split = {path.split("/")[0] for path, _, _, spec in params if "model" in _axes_of(spec)}
    for path, full, shard, spec in params:
      if "model" in _axes_of(spec):
        t.gradients += shard if d > 1 else 0  # split FC kernels: summed over data only
      else:
        t.gradients += full if n > 1 else 0  # replicated (conv) kernels: over every device
    if m > 1:
      # Forward: fc6's input gathered once from every model device, then each split layer's
      # output gathered for the next layer (fc7, fc8, the logits). Backward: each split layer's
      # input gradient is a sum of the model devices' partial products.
      fc = [p for p in ("fc6", "fc7", "fc8") if p in split]
      nxt = {"fc6": "fc7", "fc7": "fc8", "fc8": "logits"}
      t.activations = act("fc6") + sum(act(nxt[p]) for p in fc) + sum(act(p) for p in fc)
  elif name == "fsdp":
    for path, full, shard, spec in params:
      if "fsdp" in _axes_of(spec):
        t.weights += full  # gathered once for the forward pass (kept for the backward pass)
        t.gradients += shard  # reduce-scatter onto the shards
        t.gradients += shard if d > 1 else 0  # and summed over the data replicas
      else:
        t.gradients += full if n > 1 else 0  # too small to split: plain all-reduce
  else:
    return None
  return t


# --- measuring --------------------------------------------------------------------------------


@dataclasses.dataclass
class Result:
  strategy: str
  mesh: str
  devices: int
  batch: int
  compile_s: float
  step_ms: list[float]
  params_bytes: int
  opt_state_bytes: int
  peak_bytes: int | None
  collectives: dict[str, hlo.KindSummary]
  hand: Traffic | None

  @property
  def step_ms_median(self) -> float:
    return float(np.median(self.step_ms))

  @property
  def images_per_s(self) -> float:
    return self.batch / (self.step_ms_median / 1000.0)

  @property
  def measured_bytes(self) -> int:
    return sum(s.bytes for s in self.collectives.values())


def time_steps(built: Built, warmup: int, steps: int) -> list[float]:
  state, batch, step = built.state, built.batch, built.compiled
  for _ in range(warmup):
    state, metrics = step(state, batch)
  jax.block_until_ready(state)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready((state, metrics))
    times.append(1000.0 * (time.perf_counter() - start))
  built.state = state  # the old buffers were donated
  return times


def measure(built: Built, *, warmup: int, steps: int) -> Result:
  cfg = built.cfg
  found = hlo.collectives(built.compiled.as_text(), built.mesh.size)
  return Result(
      strategy=built.strategy.name,
      mesh="x".join(str(built.mesh.shape[a]) for a in built.strategy.axes),
      devices=built.mesh.size, batch=cfg.batch_size, compile_s=built.compile_s,
      step_ms=time_steps(built, warmup, steps),
      params_bytes=per_device_bytes(built.shapes.params, built.shardings.params),
      opt_state_bytes=per_device_bytes(built.shapes.opt_state, built.shardings.opt_state),
      peak_bytes=peak_bytes(built.compiled),
      collectives=hlo.summarize(found, built.mesh.devices.shape, built.mesh.axis_names),
      hand=hand_traffic(built, activation_shapes(cfg, built)))


# --- reporting --------------------------------------------------------------------------------


def human(n: float | None) -> str:
  if n is None:
    return "n/a"
  for unit in ("B", "KiB", "MiB", "GiB"):
    if abs(n) < 1024 or unit == "GiB":
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
    n /= 1024
  return str(n)


def csv_rows(results: Sequence[Result]) -> list[dict]:
  rows = []
  for r in results:
    row = {
        "strategy": r.strategy, "mesh": r.mesh, "devices": r.devices, "batch": r.batch,
        "compile_s": round(r.compile_s, 3),
        "step_ms_median": round(r.step_ms_median, 3),
        "step_ms_p10": round(float(np.percentile(r.step_ms, 10)), 3),
        "step_ms_p90": round(float(np.percentile(r.step_ms, 90)), 3),
        "images_per_s": round(r.images_per_s, 2),
        "params_bytes_per_device": r.params_bytes,
        "opt_state_bytes_per_device": r.opt_state_bytes,
        "peak_bytes_per_device": r.peak_bytes if r.peak_bytes is not None else "",
    }
    for kind in hlo.KINDS:
      s = r.collectives[kind]
      row[f"{kind}_count"] = s.count
      row[f"{kind}_bytes"] = s.bytes
      row[f"{kind}_layers"] = s.layer_text()
    row["collective_bytes_total"] = r.measured_bytes
    for key in ("total", "gradients", "weights", "activations"):
      row[f"hand_bytes_{key}"] = getattr(r.hand, key) if r.hand else ""
    rows.append(row)
  return rows


def write_csv(results: Sequence[Result], path: str) -> None:
  rows = csv_rows(results)
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)


def markdown(results: Sequence[Result], title: str) -> str:
  out = io.StringIO()
  out.write(f"{title}\n\n")
  out.write("| strategy | mesh | step ms (median, p10-p90) | images/s | params / device | "
            "opt state / device | peak / device | collective bytes (HLO) | by hand | compile s |\n")
  out.write("|---|---|---|---|---|---|---|---|---|---|\n")
  for r in results:
    hand = (f"{human(r.hand.total)} (grads {human(r.hand.gradients)}, weights "
            f"{human(r.hand.weights)}, activations {human(r.hand.activations)})"
            if r.hand else "n/a")
    out.write(f"| {r.strategy} | {r.mesh} | {r.step_ms_median:.1f} "
              f"({np.percentile(r.step_ms, 10):.1f}-{np.percentile(r.step_ms, 90):.1f}) | "
              f"{r.images_per_s:.1f} | {human(r.params_bytes)} | {human(r.opt_state_bytes)} | "
              f"{human(r.peak_bytes)} | {human(r.measured_bytes)} | {hand} | "
              f"{r.compile_s:.1f} |\n")
  out.write("\nCollectives in the compiled train step: count / result bytes per device, then "
            "the layers they serve, by the mesh axes the devices talk across (`(bwd)`: backward "
            "pass; `loss/metrics`: outside every layer):\n\n")
  out.write("| strategy | " + " | ".join(hlo.KINDS) + " |\n")
  out.write("|---|" + "---|" * len(hlo.KINDS) + "\n")
  for r in results:
    cells = []
    for kind in hlo.KINDS:
      s = r.collectives[kind]
      cells.append(f"{s.count} / {human(s.bytes)}: {s.layer_text()}" if s.count else "-")
    out.write(f"| {r.strategy} ({r.mesh}) | " + " | ".join(cells) + " |\n")
  return out.getvalue()


CPU_CAVEAT = ("CPU devices: the step times are not speeds (the devices are threads sharing the "
              "host's cores); compare memory and communication")


def plot(results: Sequence[Result], path: str, title: str, *, cpu: bool | None = None) -> None:
  """The chart; `cpu` (default: JAX's backend is the CPU) marks the step times as not speeds."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  if cpu is None:
    cpu = jax.default_backend() == "cpu"
  names = [f"{r.strategy}\n{r.mesh}" for r in results]
  x = np.arange(len(results))
  fig, axes = plt.subplots(1, 3, figsize=(4 + 3.2 * len(results), 4.2))
  med = np.array([r.step_ms_median for r in results])
  lo = med - np.array([np.percentile(r.step_ms, 10) for r in results])
  hi = np.array([np.percentile(r.step_ms, 90) for r in results]) - med
  axes[0].bar(x, med, yerr=[lo, hi], capsize=4, color="tab:blue")
  axes[0].set_title("step time (ms; median, p10-p90)" + ("\nCPU: not a speed" if cpu else ""),
                    color="tab:red" if cpu else "black")
  mib = 1024 ** 2
  w = 0.27
  axes[1].bar(x - w, [r.params_bytes / mib for r in results], w, label="params")
  axes[1].bar(x, [r.opt_state_bytes / mib for r in results], w, label="optimizer state")
  axes[1].bar(x + w, [(r.peak_bytes or 0) / mib for r in results], w, label="peak (XLA)")
  axes[1].set_title("per device (MiB)")
  axes[1].legend(fontsize=8)
  axes[2].bar(x - 0.2, [r.measured_bytes / mib for r in results], 0.4, label="HLO collectives")
  axes[2].bar(x + 0.2, [(r.hand.total if r.hand else 0) / mib for r in results], 0.4,
              label="by hand")
  axes[2].set_title("communication per step per device (MiB)")
  axes[2].legend(fontsize=8)
  for ax in axes:
    ax.set_xticks(x, names, fontsize=8)
  fig.suptitle(title, fontsize=10)
  if cpu:
    fig.text(0.5, 0.005, CPU_CAVEAT, ha="center", va="bottom", fontsize=8, color="tab:red")
  fig.tight_layout(rect=(0, 0.04 if cpu else 0, 1, 1))
  fig.savefig(path, dpi=110)
  plt.close(fig)


# --- the command ------------------------------------------------------------------------------


def parse_meshes(text: str, strategies: Sequence[str]) -> dict[str, str]:
  """'' -> each strategy's default; '4x2' -> the same mesh for all; 'fsdp=1x8,two_tower=4x2'."""
  if not text:
    return {s: "" for s in strategies}
  if "=" not in text:
    return {s: text for s in strategies}
  meshes = {s: "" for s in strategies}
  for item in text.split(","):
    name, sep, shape = item.partition("=")
    if not sep or name not in meshes:
      raise configlib.ConfigError(
          f"--mesh {text!r}: write one shape ('4x2') or name=shape pairs for the strategies "
          f"compared ({', '.join(strategies)})")
    meshes[name] = shape
  return meshes


def run_compare(cfg, strategies: Sequence[str], meshes: dict[str, str], workdir: str, *,
                warmup: int, steps: int, title: str = "",
                devices: Sequence[jax.Device] | None = None,
                compiler_options: dict | None = None) -> list[Result]:
  """Compile and measure each strategy; write compare.{md,csv,png} into `workdir`."""
  configs = []
  for name in strategies:  # check every strategy against the config before compiling any
    c = strategy_config(cfg, name, meshes.get(name, ""))
    try:
      program_lib.validate(c, devices)
    except configlib.ConfigError as e:
      raise configlib.ConfigError(f"compare {name}: {e}") from None
    configs.append(c)
  results = []
  for name, c in zip(strategies, configs):
    log.info("compiling %s", name)
    built = build(c, devices, compiler_options)
    result = measure(built, warmup=warmup, steps=steps)
    log.info("%s (mesh %s): %.1f ms/step, compile %.1f s, collectives %s", name, result.mesh,
             result.step_ms_median, result.compile_s, human(result.measured_bytes))
    results.append(result)
    del built
  if jax.process_index() != 0:  # one writer; every process measured the same global program
    return results
  os.makedirs(workdir, exist_ok=True)
  processes = f" in {jax.process_count()} processes" if jax.process_count() > 1 else ""
  title = title or (f"model {cfg.model.name}, batch {cfg.batch_size}, {cfg.data.crop_size} px, "
                    f"{len(devices or jax.devices())} x {jax.devices()[0].device_kind}{processes}")
  with open(os.path.join(workdir, "compare.md"), "w") as f:
    f.write(markdown(results, title))
  write_csv(results, os.path.join(workdir, "compare.csv"))
  try:
    plot(results, os.path.join(workdir, "compare.png"), title)
  except ImportError as e:
    log.warning("no compare.png: %s (pip install matplotlib for the chart)", e)
  return results


def cmd_compare(args, overrides: list[str]) -> int:
  cfg = configlib.load(args.config, overrides)
  strategies = [s for s in args.strategies.split(",") if s]
  for name in strategies:
    shard_lib.get_strategy(name)
  if args.steps < 1 or args.warmup < 0:
    raise configlib.ConfigError("--steps must be >= 1 and --warmup >= 0")
  results = run_compare(cfg, strategies, parse_meshes(args.mesh, strategies), args.workdir,
                        warmup=args.warmup, steps=args.steps)
  if jax.process_index() != 0:
    return 0
  with open(os.path.join(args.workdir, "compare.md")) as f:
    print(f.read())
  written = "compare.md, compare.csv" + (
      ", compare.png" if os.path.exists(os.path.join(args.workdir, "compare.png")) else "")
  print(f"wrote {written} to {args.workdir} "
        f"({len(results)} strategies)")
  return 0
