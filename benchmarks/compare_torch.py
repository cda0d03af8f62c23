"""Ours against PyTorch on the same machine, in the same run, in turns.

    python benchmarks/compare_torch.py --config configs/owt.py --batch 32 --rounds 5 --steps 4

Starts one worker process per contestant: ours (the step `launch.py bench` times, with the
XLA flags, malloc settings and compilation cache the command line sets) and PyTorch's
(benchmarks/torch_alexnet.py: eager, channels_last, torch.compile; on a GPU with cuDNN's
autotuning, TF32 and fused SGD). Each compiles and warms up, then the workers take turns: every
round each runs `--steps` timed steps while the others wait, the order rotating from round to
round. Load from other programs on a shared machine then hits every contestant alike; the ratio
is taken within each round (ours / theirs in images/s) and the median over rounds is reported.
PyTorch's network is the config's: its input size, class count and width (torchvision's layout,
so the config must be an `owt` one). On a GPU the workers share the device; ours allocates as it
goes rather than taking most of the memory up front, so PyTorch's has room.

`--override FIELD=VALUE` changes a field of the config for every contestant (as
`--config.FIELD=VALUE` does for `launch.py`).

`--variant LABEL:SETTINGS` adds another of ours, where SETTINGS are `--config.x=y` overrides
and `ENV=value` pairs separated by spaces, e.g. to see what a change is worth:
  --variant "reduce_window pooling:--config.model.pool_impl=reduce_window"
  --variant "YNNPACK convolutions:ALEXNET_JAX_XLA_DEFAULTS=0"
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_VARIANTS = {  # name -> (compile, channels_last)
    "eager": (False, False),
    "eager_cl": (False, True),
    "compile": (True, False),
    "compile_cl": (True, True),
}


# --- workers: one contestant each, driven over stdin/stdout -------------------------------------


def serve(run_steps, ready: dict) -> None:
  """Print `ready` as JSON, then for each line "N" on stdin run N steps and print their times."""
  print(json.dumps(ready), flush=True)
  for line in sys.stdin:
    count = int(line)
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    times = run_steps(count)
    print(json.dumps({"times": times, "cpu": time.process_time() - cpu_start,
                      "wall": time.perf_counter() - wall_start}), flush=True)


def serve_ours(args) -> None:
  sys.path.insert(0, ROOT)
  from alexnet_jax import backend, compile_cache
  backend.keep_host_memory()  # as launch.py does, before JAX starts
  backend.start_up()
  compile_cache.enable()  # a program `launch.py bench` compiled is read back, not compiled again
  from alexnet_jax import bench, configlib

  cfg = configlib.load(args.config, [f"batch_size={args.batch}", f"model.dtype={args.dtype}"]
                       + args.override)
  setup = bench.build(cfg)
  start = time.perf_counter()
  bench.run_steps(setup, 2)
  import jax
  serve(lambda n: bench.run_steps(setup, n),
        {"compile_seconds": setup.compile_seconds,
         "warmup_seconds": time.perf_counter() - start,
         "versions": {"jax": jax.__version__, "jaxlib": _version("jaxlib"),
                      "flax": _version("flax"), "optax": _version("optax")},
         "xla_flags": os.environ.get("XLA_FLAGS", ""),
         "device": str(jax.devices()[0].device_kind), "devices": jax.device_count()})


def serve_torch(args) -> None:
  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  import torch
  import torch_alexnet

  compile_, channels_last = TORCH_VARIANTS[args.torch[0]]
  bench = torch_alexnet.TorchBench(
      args.batch, torch_alexnet.Variant(compile_, channels_last, args.dtype),
      image_size=args.image_size, num_classes=args.num_classes, width=args.width)
  serve(bench.run, {"compile_seconds": bench.warmup_seconds, "warmup_seconds": 0.0,
                    "versions": {"torch": torch.__version__}, **torch_alexnet.describe(bench)})


def _version(package: str) -> str:
  import importlib.metadata
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return "?"


# --- the orchestrator -----------------------------------------------------------------------------


class Contestant:
  def __init__(self, label: str, argv: list[str], env: dict[str, str]):
    self.label = label
    self.process = subprocess.Popen([sys.executable, os.path.abspath(__file__)] + argv,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                    env={**os.environ, **env}, cwd=ROOT)
    line = self.process.stdout.readline()
    if not line:
      raise RuntimeError(f"{label}: the worker exited before it was ready (see its error above)")
    self.ready = json.loads(line)
    self.rounds: list[dict] = []

  def run(self, steps: int) -> dict:
    self.process.stdin.write(f"{steps}\n")
    self.process.stdin.flush()
    result = json.loads(self.process.stdout.readline())
    self.rounds.append(result)
    return result

  def close(self) -> None:
    self.process.stdin.close()
    self.process.wait()

  @property
  def times(self) -> list[float]:
    return [t for r in self.rounds for t in r["times"]]

  def round_median(self, i: int) -> float:
    return statistics.median(self.rounds[i]["times"])


def parse_variant(text: str) -> tuple[str, list[str], dict[str, str]]:
  label, _, settings = text.partition(":")
  overrides, env = [], {}
  for item in shlex.split(settings):
    if item.startswith("--config."):
      overrides.append(item[len("--config."):])
    elif "=" in item:
      key, value = item.split("=", 1)
      env[key] = value
    else:
      raise SystemExit(f"--variant {text!r}: {item!r} is neither --config.FIELD=VALUE nor ENV=VALUE")
  return label, overrides, env


def machine_description() -> str:
  model = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          model = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
  return (f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"load average at start {load:.1f}")


def network(args) -> dict:
  """The network of `--config` with `--override`s, as PyTorch's side builds it."""
  sys.path.insert(0, ROOT)
  from alexnet_jax import configlib

  cfg = configlib.load(args.config, args.override)
  if cfg.model.name != "owt":
    raise SystemExit(f"--config {args.config}: its model is {cfg.model.name!r}, but the PyTorch "
                     "peer is torchvision's layout; compare against an owt config "
                     "(configs/owt.py)")
  return {"image_size": cfg.data.crop_size, "num_classes": cfg.model.num_classes,
          "width": cfg.model.width}


# Ours allocates GPU memory as it goes (JAX takes 75% up front otherwise): PyTorch's worker shares
# the device. Without effect on CPUs.
OURS_ENV = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}


def compare(args) -> tuple[list[dict], list[str]]:
  """Rows of figures (ours first), and the labels of contestants that failed to start."""
  net = network(args)
  ours_argv = ["--worker", "ours", "--config", args.config, "--batch", str(args.batch),
               "--dtype", args.dtype] + [f"--override={o}" for o in args.override]
  torch_argv = ["--batch", str(args.batch), "--dtype", args.dtype,
                "--image-size", str(net["image_size"]), "--num-classes", str(net["num_classes"]),
                "--width", str(net["width"])]
  specs = [("ours (alexnet_jax)", ours_argv, OURS_ENV)]
  for text in args.variant:
    label, overrides, env = parse_variant(text)
    specs.append((f"ours, {label}", ours_argv + [f"--override={o}" for o in overrides],
                  {**OURS_ENV, **env}))
  for text in args.torch:
    name, *env_items = text.split("@")
    if name not in TORCH_VARIANTS or not all("=" in e for e in env_items):
      raise SystemExit(f"--torch {text}: write NAME or NAME@ENV=VALUE, NAME one of "
                       f"{', '.join(TORCH_VARIANTS)}")
    compile_, channels_last = TORCH_VARIANTS[name]
    label = ("torch " + ("compile" if compile_ else "eager")
             + (" channels_last" if channels_last else "") + "".join(f", {e}" for e in env_items))
    specs.append((label, ["--worker", "torch", "--torch", name] + torch_argv,
                  dict(e.split("=", 1) for e in env_items)))
  print(f"# {datetime.datetime.now().isoformat(timespec='minutes')}; {machine_description()}",
        flush=True)
  print(f"# command: python benchmarks/compare_torch.py {' '.join(map(shlex.quote, sys.argv[1:]))}",
        flush=True)
  contestants, left_out = [], []
  try:
    for label, argv, env in specs:  # one at a time: compiling is not part of the race
      try:
        contestants.append(Contestant(label, argv, env))
      except RuntimeError as e:
        if not contestants:  # ours: nothing to compare with
          raise
        # Another may still run (torch.compile needs a C compiler and Triton; eager does not).
        print(f"# {e}; left out", flush=True)
        left_out.append(label)
        continue
      ready = contestants[-1].ready
      print(f"# {label}: ready (compile {ready['compile_seconds']:.1f} s; "
            f"{ready.get('versions')}; {ready.get('device')})", flush=True)
    for r in range(args.rounds):
      shift = r % len(contestants)
      for c in contestants[shift:] + contestants[:shift]:
        c.run(args.steps)
      print(f"# round {r + 1}: " + ", ".join(
          f"{c.label} {1000 * c.round_median(r):.0f} ms" for c in contestants), flush=True)
  finally:
    for c in contestants:
      c.close()

  ours = contestants[0]
  rows = []
  print(f"\n{'contestant':40s} {'median step':>12s} {'images/s':>10s} {'CPU s/step':>10s} "
        f"{'ours / it':>10s}")
  for c in contestants:
    median = statistics.median(c.times)
    ratios = [c.round_median(r) / ours.round_median(r) for r in range(args.rounds)]
    cpu = statistics.median(r["cpu"] / len(r["times"]) for r in c.rounds)
    row = {"label": c.label, "median_step_s": median, "images_per_s": args.batch / median,
           "p90_step_s": (statistics.quantiles(c.times, n=10, method="inclusive")[-1]
                          if len(c.times) > 1 else median),
           "cpu_s_per_step": cpu, "ours_over_it": statistics.median(ratios),
           "round_ratios": ratios, "ready": c.ready}
    rows.append(row)
    ratio = "" if c is ours else f"{row['ours_over_it']:.2f}x"
    print(f"{c.label:40s} {1000 * median:10.0f} ms {row['images_per_s']:10.1f} {cpu:10.2f} "
          f"{ratio:>10s}")
  return rows, left_out


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="configs/owt.py")
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--steps", type=int, default=4, help="timed steps per contestant per round")
  p.add_argument("--torch", type=lambda s: [x for x in s.split(",") if x],
                 default=["eager", "eager_cl"],
                 help=f"PyTorch variants, comma-separated: {', '.join(TORCH_VARIANTS)}; "
                      "NAME@ENV=VALUE runs one with an environment variable set, e.g. "
                      "eager@OMP_WAIT_POLICY=PASSIVE")
  p.add_argument("--variant", action="append", default=[],
                 help="another of ours: 'LABEL:--config.x=y ENV=value ...'")
  p.add_argument("--json", default="", help="also write the results here")
  p.add_argument("--override", action="append", default=[], metavar="FIELD=VALUE",
                 help="a config field for every contestant, e.g. data.crop_size=67")
  # Worker mode (started by the orchestrator).
  p.add_argument("--worker", choices=("ours", "torch"), help=argparse.SUPPRESS)
  for flag, kind in (("--image-size", int), ("--num-classes", int), ("--width", float)):
    p.add_argument(flag, type=kind, help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.worker == "ours":
    return serve_ours(args)
  if args.worker == "torch":
    return serve_torch(args)
  if args.rounds < 1 or args.steps < 1:
    raise SystemExit("--rounds and --steps must be >= 1")
  rows, left_out = compare(args)
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"argv": sys.argv[1:], "machine": machine_description(), "rows": rows,
                 "left_out": left_out}, f, indent=1)


if __name__ == "__main__":
  main()
