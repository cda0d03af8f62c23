"""`launch.py bench`: the speed of the real train step on synthetic data.

    python launch.py bench --config configs/owt.py --batch 256 --dtype bfloat16 --steps 50

Times the program `train` runs, built by the same function (alexnet_jax.program.build: the
config's strategy and mesh, its tower map and activation constraints, parameters created
shapes-first with their shardings, the train step jitted with the state donated), and feeds it
one synthetic global batch (random uint8 images and labels) that stays on the devices, so the
figures are the step alone: no input pipeline (benchmarked on its own, benchmarks/input_pipeline.py)
and no host-to-device copies. Prints the compile time, the step time (median and spread over
`--steps` steps after `--warmup` steps), images/s, and the model FLOP utilisation (MFU): FLOPs per
image counted from the layer table (alexnet_jax/flops.py) over the device's peak.

Under several processes (`--coordinator_address ...`, or a cluster launcher) each process holds
the rows of the batch its devices hold, and the figures are for the global batch.

Never imports TensorFlow: runs on machines that have none.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import statistics
import time
from typing import Any, Callable

import numpy as np

DTYPES = ("float32", "bfloat16")

# Dense peaks from the vendors' datasheets, TFLOP/s per device: (16-bit tensor cores, float32).
# float32 counts TF32 tensor cores where the GPU has them: XLA's default precision uses them for
# float32 convolutions and matrix products. Matched against jax's device_kind, first match wins.
GPU_PEAK_TFLOPS: tuple[tuple[str, float, float], ...] = (
    ("H200", 989.4, 494.7),
    ("H100 PCIe", 756.0, 378.0),
    ("H100 NVL", 835.0, 417.5),
    ("H100", 989.4, 494.7),  # SXM
    ("GH200", 989.4, 494.7),
    ("B200", 2250.0, 1100.0),
    ("A100", 312.0, 156.0),
    ("L40S", 362.0, 183.0),
    ("L4", 121.0, 60.0),
    ("A10", 125.0, 62.5),
    ("V100", 125.0, 15.7),  # no TF32: float32 runs on the CUDA cores
)


@dataclasses.dataclass
class Peak:
  tflops: float | None  # None: unknown, MFU not given
  source: str  # where the figure comes from, printed next to the MFU


def cpu_peak(dtype: str) -> Peak:
  """An *assumed* peak for this CPU: cores x clock x FLOPs per cycle of its FMA units."""
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  mhz, flags = None, set()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "cpu MHz" and mhz is None:
          mhz = float(value)
        elif key == "flags" and not flags:
          flags = set(value.split())
  except OSError:
    pass
  if not mhz or not cores:
    return Peak(None, "no peak known for this CPU; pass --peak-tflops")
  if "avx512f" in flags:
    per_cycle, isa = 64, "AVX-512, two FMA units"
  elif "fma" in flags:
    per_cycle, isa = 32, "AVX2, two FMA units"
  else:
    per_cycle, isa = 8, "SSE"
  del dtype  # the same vector units; bfloat16 is converted to float32 for arithmetic here
  tflops = cores * mhz * 1e6 * per_cycle / 1e12
  return Peak(tflops, f"assumed: {cores} cores x {mhz / 1000:.2f} GHz x {per_cycle} float32 "
                      f"FLOP/cycle ({isa})")


def device_peak(device, dtype: str) -> Peak:
  """The peak of one device for `dtype`, from the table above (GPUs) or assumed (CPUs)."""
  kind = getattr(device, "device_kind", "") or ""
  if device.platform == "cpu":
    return cpu_peak(dtype)
  for name, half, single in GPU_PEAK_TFLOPS:
    if name.lower() in kind.lower():
      value = half if dtype == "bfloat16" else single
      return Peak(value, f"{kind} datasheet dense {'bf16' if dtype == 'bfloat16' else 'tf32'}")
  return Peak(None, f"no peak known for {kind!r}; pass --peak-tflops")


# --- building the real step ---------------------------------------------------------------------


@dataclasses.dataclass
class Setup:
  cfg: Any
  program: Any  # alexnet_jax.program.Program
  step: Callable  # compiled (state, batch) -> (state, metrics)
  state: Any
  batch: dict
  compile_seconds: float
  devices: list
  mesh_shape: dict


def build(cfg, devices=None, compiler_options: dict | None = None) -> Setup:
  """The train step of `cfg` as `train` runs it (alexnet_jax.program.build), compiled, with its
  state and one synthetic global batch, each process holding the rows its devices hold.

  `devices`: the devices its mesh spans (default: all of them, in every process).
  """
  from alexnet_jax import program as program_lib
  from alexnet_jax.data import synthetic

  program = program_lib.build(cfg, devices, compiler_options=compiler_options)
  state = program.create_state()
  feed = program.train_feed
  batch = feed.put(synthetic.block(synthetic.synthetic_batch(cfg, cfg.batch_size),
                                   feed.rows.index, feed.rows.count))
  start = time.perf_counter()
  compiled = program.train_step.compile(state, batch)
  compile_seconds = time.perf_counter() - start
  return Setup(cfg, program, compiled, state, batch, compile_seconds,
               list(program.mesh.devices.flat), dict(program.mesh.shape))


def run_steps(setup: Setup, count: int) -> list[float]:
  """Run `count` steps, each waited for; return their durations in seconds."""
  import jax

  times = []
  state = setup.state
  for _ in range(count):
    start = time.perf_counter()
    state, metrics = setup.step(state, setup.batch)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - start)
  setup.state = state  # the old one was donated
  return times


# --- figures ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Result:
  config: str
  model: str
  batch: int
  dtype: str
  platform: str
  device_kind: str
  devices: int
  mesh: dict
  compile_seconds: float
  step_times: list[float]
  flops_per_image: int
  peak_tflops: float | None
  peak_source: str
  xla_flags: str = ""

  @property
  def median(self) -> float:
    return statistics.median(self.step_times)

  def quantile(self, q: float) -> float:
    return float(np.quantile(self.step_times, q))

  @property
  def images_per_second(self) -> float:
    return self.batch / self.median

  @property
  def achieved_tflops(self) -> float:
    return self.flops_per_image * self.images_per_second / 1e12

  @property
  def mfu(self) -> float | None:
    if not self.peak_tflops:
      return None
    return self.achieved_tflops / (self.peak_tflops * self.devices)

  def as_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d.update(median_step_seconds=self.median, images_per_second=self.images_per_second,
             achieved_tflops=self.achieved_tflops, mfu=self.mfu,
             p10_step_seconds=self.quantile(0.1), p90_step_seconds=self.quantile(0.9))
    return d

  def report(self) -> str:
    ms = lambda s: f"{1000 * s:.1f}"
    per_device = self.batch // max(1, self.devices)
    kind = f", {self.device_kind}" if self.device_kind not in ("", self.platform) else ""
    mfu = (f"MFU {100 * self.mfu:.1f}% of {self.peak_tflops:.3g} TFLOP/s per device "
           f"({self.peak_source})" if self.mfu is not None else f"MFU not given ({self.peak_source})")
    return "\n".join([
        f"bench: {self.model} ({self.config}), batch {self.batch} ({per_device} per device x "
        f"{self.devices} {self.platform} device{'s' if self.devices > 1 else ''}{kind}), "
        f"{self.dtype}, mesh {self.mesh}",
        f"XLA flags: {self.xla_flags or '(none)'}",
        f"compile: {self.compile_seconds:.1f} s",
        f"step: median {ms(self.median)} ms (p10 {ms(self.quantile(0.1))}, "
        f"p90 {ms(self.quantile(0.9))}, min {ms(min(self.step_times))}, "
        f"max {ms(max(self.step_times))}; {len(self.step_times)} steps after warm-up)",
        f"throughput: {self.images_per_second:,.1f} images/s",
        f"FLOPs: {self.flops_per_image / 1e9:.3f} GFLOP per training image "
        "(forward + weight gradients + input gradients but conv1's; 2 FLOPs per multiply-add)",
        f"achieved: {self.achieved_tflops:.4g} TFLOP/s; {mfu}",
    ])


def benchmark(cfg, *, steps: int = 20, warmup: int = 2, config_name: str = "",
              peak_tflops: float | None = None) -> Result:
  from alexnet_jax import flops as flops_lib

  setup = build(cfg)
  run_steps(setup, warmup)
  times = run_steps(setup, steps)
  device = setup.devices[0]
  peak = (Peak(peak_tflops, "given with --peak-tflops") if peak_tflops
          else device_peak(device, cfg.model.dtype))
  return Result(
      config=config_name, model=cfg.model.name, batch=cfg.batch_size, dtype=cfg.model.dtype,
      platform=device.platform, device_kind=getattr(device, "device_kind", "") or "",
      devices=len(setup.devices), mesh=setup.mesh_shape, compile_seconds=setup.compile_seconds,
      step_times=times, flops_per_image=flops_lib.train_flops_per_image(cfg.model,
                                                                        cfg.data.crop_size),
      peak_tflops=peak.tflops, peak_source=peak.source, xla_flags=os.environ.get("XLA_FLAGS", ""))


# --- the command --------------------------------------------------------------------------------


def add_arguments(p) -> None:
  p.add_argument("--batch", type=int, default=None, help="global batch (default: the config's)")
  p.add_argument("--dtype", choices=DTYPES, default=None,
                 help="compute dtype; parameters stay float32 (default: the config's)")
  p.add_argument("--steps", type=int, default=20, help="timed steps after warm-up (default 20)")
  p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
  p.add_argument("--peak-tflops", type=float, default=None,
                 help="the device's peak for the MFU (default: a table of GPUs; assumed for CPUs)")
  p.add_argument("--json", default="", help="also write the figures to this JSON file")
  p.add_argument("--layers", action="store_true", help="print the layer table and its FLOPs")


def apply_arguments(cfg, args) -> None:
  """--batch and --dtype become config fields, so validation names them as usual."""
  from alexnet_jax import configlib

  if args.steps < 2:
    raise configlib.ConfigError(f"--steps {args.steps}: need at least 2 timed steps for a spread")
  if args.warmup < 1:
    raise configlib.ConfigError(f"--warmup {args.warmup}: need at least 1 warm-up step")
  with cfg.unlocked():
    if args.batch is not None:
      cfg.batch_size = args.batch
    if args.dtype is not None:
      cfg.model.dtype = args.dtype


def run(cfg, args, config_name: str) -> int:
  from alexnet_jax import flops as flops_lib

  apply_arguments(cfg, args)
  if args.layers:
    print(flops_lib.format_table(flops_lib.layer_table(cfg.model, cfg.data.crop_size)))
  result = benchmark(cfg, steps=args.steps, warmup=args.warmup, config_name=config_name,
                     peak_tflops=args.peak_tflops)
  import jax
  if jax.process_index() != 0:  # every process timed the same global step: one report
    return 0
  print(result.report())
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result.as_dict(), f, indent=1)
  return 0


def config_label(name: str) -> str:
  return re.sub(r"\.py$", "", os.path.basename(name.partition(":")[0]))
