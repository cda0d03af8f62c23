"""`launch.py gpu-check` (scripts/gpu_check.sh): every figure a GPU host should give, one command.

    scripts/gpu_check.sh [--out gpu_check_out] [--budget 480] [--parts env,bench,...]

Runs each part as its own subprocess under its own time limit (a hang costs that part only), all
under one overall budget, and prints one summary line per figure as it comes, written also to
OUT/summary.md and OUT/summary.json (OUT/logs/ holds every subprocess's output):

  env       devices, versions, XLA flags in force, the CPU-only paths (oneDNN convolutions, the
            host-memory mallopt) and whether each is off, what `auto` picks for pooling, LRN and
            conv1, which optional packages are missing, and that no TensorFlow was imported
  bench     `launch.py bench --json` for each model x batch x dtype: images/s, step time p50 and
            p90, MFU, compile time
  torch     the PyTorch peer (benchmarks/compare_torch.py, torchvision's AlexNet with its best
            settings) against ours on each `owt` row, in turns, in the same run; the ratio
  train     synthetic-data training: images/s with the host feeding; then, under XLA's
            deterministic ops, an uninterrupted run and a run stopped by SIGTERM and run again
            (it resumes from its checkpoint): the resumed run's losses, gradient and parameter
            norms must be bitwise the uninterrupted run's
  profile   a training run with config.profile_steps: the trace files it wrote
  compare   `launch.py compare` over the four sharding strategies on the devices present
  variants  bench figures of the implementation choices on `paper`: pooling (pool_impl), towers
            (tower_impl), conv1 (conv1_impl) and LRN (lrn_impl), every value but the default's,
            each against the bench row of the defaults

Sizes are arguments (and `--config.FIELD=VALUE` changes every config), so the test suite runs
the whole check on a CPU at tiny sizes (tests/test_gpu_check.py). Imports no TensorFlow and
initialises no device itself: every figure comes from a subprocess.

Compiled programs go to OUT/compile_cache: an empty folder on the first run, so the compile
times are cold ones (the env line says how many programs the cache held at the start); later
parts read back what earlier ones compiled (the PyTorch comparison's side of ours, the resumed
training run).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import importlib.util
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time

from alexnet_jax.configlib import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARTS = ("env", "bench", "torch", "train", "profile", "compare", "variants")
# The order they run in: the cheap checks that training works before the PyTorch comparison,
# whose torch.compile rows take longest.
ORDER = ("env", "bench", "train", "profile", "torch", "compare", "variants")
MODELS = ("owt", "paper")
DTYPES = ("float32", "bfloat16")
STRATEGIES = "data,two_tower,weird_trick,fsdp"
# The implementation choices measured on `paper` (field, values); the base row has each field's
# default, and a value equal to what the default resolves to on this machine is the base itself.
VARIANTS = (
    ("pool_impl", ("slices", "reduce_window")),
    ("tower_impl", ("vmap",)),
    ("conv1_impl", ("space_to_depth", "direct")),
    ("lrn_impl", ("reduce_window", "matmul", "slices")),
)
# The resumed run is compared with an uninterrupted one, both under XLA's deterministic ops: on a
# GPU, XLA's convolutions and reductions otherwise add in an order that varies from run to run,
# and two runs drift apart as training amplifies the last bits (by a few percent in the loss and
# norms within 40 steps on an H200). Under the flag the two must be bitwise equal, as they are on
# a CPU without it. The throughput line is measured without the flag.
DETERMINISTIC_FLAG = "--xla_gpu_deterministic_ops=true"
TORCH_VARIANTS = ("eager", "eager_cl", "compile", "compile_cl")  # benchmarks/compare_torch.py's
MIN_PART_SECONDS = 15  # a part is not started with less time left than this
OPTIONAL_PACKAGES = ("tqdm", "tensorboardX", "matplotlib", "torch", "torchvision")


class CheckError(ConfigError):
  """An argument the check cannot use (printed as one line by the command line)."""


# --- arguments ----------------------------------------------------------------------------------


def _csv(kind):
  return lambda text: [kind(x) for x in text.split(",") if x.strip()]


def add_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument("--out", default="gpu_check_out",
                 help="output folder (default gpu_check_out); this check's subfolders in it are "
                      "replaced, its compile_cache/ is kept")
  p.add_argument("--parts", type=_csv(str), default=list(PARTS),
                 help=f"comma-separated parts (default all: {','.join(PARTS)}); env always runs")
  p.add_argument("--budget", type=float, default=480.0,
                 help="seconds for the whole check (default 480); each part also has its own "
                      "limit, and parts that would start with too little time left are skipped")
  g = p.add_argument_group("sizes (defaults: the GPU figures)")
  g.add_argument("--models", type=_csv(str), default=list(MODELS), help="bench models")
  g.add_argument("--batches", type=_csv(int), default=[256, 512], help="bench batches")
  g.add_argument("--dtypes", type=_csv(str), default=list(DTYPES), help="bench dtypes")
  g.add_argument("--steps", type=int, default=20, help="timed steps per bench row (default 20)")
  g.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
  g.add_argument("--rounds", type=int, default=5,
                 help="PyTorch comparison: rounds of --steps//4 (at least 2) steps each")
  g.add_argument("--torch-variants", type=_csv(str), default=["eager", "eager_cl"],
                 help="PyTorch variants on every owt row (benchmarks/compare_torch.py names)")
  g.add_argument("--torch-compile-batches", type=_csv(int), default=[256],
                 help="batches whose rows also run torch.compile with channels_last "
                      "(compiling takes a minute or so each; '' for none)")
  g.add_argument("--train-config", default="configs/owt.py", help="synthetic training's config")
  g.add_argument("--train-batch", type=int, default=128)
  g.add_argument("--train-steps", type=int, default=60,
                 help="steps of the uninterrupted run; the other is stopped after a third")
  g.add_argument("--profile-steps", default="5-7", help="steps traced by the profile part")
  g.add_argument("--focus-batch", type=int, default=None,
                 help="batch of the variants and compare (default: the first of --batches)")
  g.add_argument("--focus-dtype", default="bfloat16", choices=DTYPES,
                 help="dtype of the variants and compare (default bfloat16)")
  g.add_argument("--limit", type=float, default=None,
                 help="one time limit in seconds for every part (default: each part's own)")


def check_arguments(args) -> None:
  unknown = [p for p in args.parts if p not in PARTS]
  if unknown:
    raise CheckError(f"--parts {','.join(unknown)}: choose from {','.join(PARTS)}")
  for name, values, allowed in (("--models", args.models, MODELS),
                                ("--dtypes", args.dtypes, DTYPES)):
    bad = [v for v in values if v not in allowed] or ([] if values else ["(none)"])
    if bad:
      raise CheckError(f"{name} {','.join(bad)}: choose from {','.join(allowed)}")
  bad = [v for v in args.torch_variants if v.split("@")[0] not in TORCH_VARIANTS]
  if bad:
    raise CheckError(f"--torch-variants {','.join(bad)}: choose from {','.join(TORCH_VARIANTS)} "
                     "(NAME@ENV=VALUE sets an environment variable for one)")
  if not args.batches or min(args.batches) < 1 or args.train_batch < 1:
    raise CheckError("--batches and --train-batch must be positive")
  if args.steps < 2 or args.warmup < 1 or args.rounds < 1:
    raise CheckError("need --steps >= 2, --warmup >= 1 and --rounds >= 1")
  first, _, last = args.profile_steps.partition("-")
  if not (first.isdigit() and (last or first).isdigit() and 1 <= int(first) <= int(last or first)):
    raise CheckError(f"--profile-steps {args.profile_steps!r}: write one step (5) or a range (5-7)")
  if args.train_steps < 3:
    raise CheckError("--train-steps must be >= 3 (the stopped run stops after a third of them)")


# --- running parts -------------------------------------------------------------------------------


@dataclasses.dataclass
class Line:
  key: str  # which figure, e.g. "bench owt b256 bfloat16"
  status: str  # ok | FAIL | TIMEOUT | SKIPPED
  text: str
  data: dict = dataclasses.field(default_factory=dict)

  def __str__(self) -> str:
    return f"{self.status:<7} {self.key}: {self.text}"


@dataclasses.dataclass
class Outcome:
  status: str  # ok (exit 0) | FAIL | TIMEOUT | SKIPPED
  returncode: int | None
  log: str  # the subprocess's output file
  seconds: float = 0.0

  def why(self) -> str:
    if self.status == "SKIPPED":
      return "not started: the --budget is spent"
    if self.status == "TIMEOUT":
      return f"killed after its time limit ({self.seconds:.0f} s); see {self.log}"
    return f"exit status {self.returncode}; see {self.log}: {tail(self.log)}"


def tail(path: str, lines: int = 1) -> str:
  """The last non-empty lines of a log (an error is usually the last thing a process says)."""
  try:
    with open(path, errors="replace") as f:
      text = [l.strip() for l in f if l.strip()]
  except OSError:
    return ""
  return " | ".join(text[-lines:])[-300:]


class Check:
  # Each part's own time limit in seconds (before the overall budget's cut).
  LIMITS = {"env": 90, "bench": 150, "torch": 300, "train": 180, "profile": 150,
            "compare": 360, "variants": 150}

  def __init__(self, args, overrides: list[str]):
    self.args = args
    self.overrides = list(overrides)
    self.out = os.path.abspath(args.out)
    self.deadline = time.monotonic() + args.budget
    self.lines: list[Line] = []
    self.bench: dict[tuple, dict] = {}  # (model, batch, dtype) -> bench JSON
    self.env_info: dict = {}
    self.started = datetime.datetime.now().isoformat(timespec="seconds")
    cache = os.path.join(self.out, "compile_cache")
    self.environ = dict(os.environ)
    self.environ.update({
        "ALEXNET_JAX_COMPILE_CACHE": cache,  # this check's own cache, in its folder
        "TORCHINDUCTOR_CACHE_DIR": os.path.join(self.out, "torchinductor_cache"),
        "PYTHONPATH": os.pathsep.join([ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
        "PYTHONUNBUFFERED": "1",
    })
    self.environ.pop("JAX_COMPILATION_CACHE_DIR", None)  # ours, not another one

  # -- bookkeeping --

  def report(self, key: str, status: str, text: str, data: dict | None = None) -> Line:
    line = Line(key, status, text, data or {})
    self.lines.append(line)
    print(line, flush=True)
    self.write_summary()  # after every line: a check killed from outside still leaves its figures
    return line

  def write_summary(self) -> None:
    command = shlex.join(["python"] + sys.argv)
    with open(os.path.join(self.out, "summary.json"), "w") as f:
      json.dump({"started": self.started, "command": command, "out": self.out,
                 "lines": [dataclasses.asdict(l) for l in self.lines]}, f, indent=1)
    with open(os.path.join(self.out, "summary.md"), "w") as f:
      f.write(f"GPU check, started {self.started}: `{command}`\n\n| figure | status | result |\n"
              "|---|---|---|\n")
      for l in self.lines:
        f.write(f"| {l.key} | {l.status} | {l.text.replace('|', '/')} |\n")

  def remaining(self) -> float:
    return self.deadline - time.monotonic()

  def limit(self, part: str) -> float:
    return min(self.args.limit or self.LIMITS[part], self.remaining())

  def python(self, *argv: str) -> list[str]:
    return [sys.executable, *argv]

  def launch(self, *argv: str) -> list[str]:
    return self.python(os.path.join(ROOT, "launch.py"), *argv,
                       *[f"--config.{o}" for o in self.overrides])

  def run(self, part: str, name: str, argv: list[str], *, env: dict | None = None,
          stop_when=None, stop_signal=signal.SIGTERM) -> Outcome:
    """Run `argv` from the repository root with output to OUT/logs/NAME.log, killed (with its
    children) at the part's time limit. `stop_when()`, polled, sends `stop_signal` once true;
    `env` adds environment variables."""
    log = os.path.join(self.out, "logs", f"{name}.log")
    if self.remaining() < MIN_PART_SECONDS:
      return Outcome("SKIPPED", None, log)
    limit = self.limit(part)
    start = time.monotonic()
    with open(log, "w") as f:
      f.write(f"$ {shlex.join(argv)}\n")
      f.flush()
      process = subprocess.Popen(argv, cwd=ROOT, env={**self.environ, **(env or {})}, stdout=f,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True)  # its own group: killed with children
    try:
      while True:
        try:
          process.wait(timeout=0.05 if stop_when else 1.0)
          break
        except subprocess.TimeoutExpired:
          if time.monotonic() - start > limit:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return Outcome("TIMEOUT", None, log, time.monotonic() - start)
          if stop_when and stop_when():
            process.send_signal(stop_signal)
            stop_when = None
    except BaseException:  # Ctrl-C or an error here: leave nothing running
      os.killpg(process.pid, signal.SIGKILL)
      process.wait()
      raise
    seconds = time.monotonic() - start
    return Outcome("ok" if process.returncode == 0 else "FAIL", process.returncode, log, seconds)

  def failed(self, key: str, outcome: Outcome) -> Line:
    return self.report(key, outcome.status, outcome.why())

  # -- the parts --

  def part_env(self) -> None:
    path = os.path.join(self.out, "env.json")
    outcome = self.run("env", "env", self.python("-m", "alexnet_jax.gpu_check", "env", path))
    if outcome.status != "ok":
      self.failed("env", outcome)
      return
    with open(path) as f:
      e = self.env_info = json.load(f)
    kinds = sorted(set(e["device_kinds"]))
    self.report("env devices", "ok",
                f"{e['device_count']} x {', '.join(kinds)} ({e['platform']}); "
                f"{e['process_count']} process; host {e['host_cpus']} CPUs"
                + (f"; nvidia-smi: {e['nvidia_smi']}" if e.get("nvidia_smi") else ""), e)
    versions = ", ".join(f"{k} {v}" for k, v in e["versions"].items() if v)
    self.report("env versions", "ok", versions)
    self.report("env xla_flags", "ok",
                f"XLA_FLAGS in force: {e['xla_flags'] or '(none)'}; alexnet_jax's defaults "
                f"here: {' '.join(e['xla_flags_defaults']) or 'none'}; compile cache "
                f"{e['compile_cache']} "
                f"({e['compile_cache_entries']} entries at the start)")
    paths = e["cpu_only_paths"]
    self.report("env cpu_only_paths", "ok", "; ".join(
        f"{name}: {'ON' if on else 'off'} ({how})" for name, (on, how) in paths.items())
        + "; the layers' auto choices here: " + ", ".join(
            f"{field} -> {e['base_impls'][field]}" for field in ("pool_impl", "lrn_impl",
                                                                  "conv1_impl")))
    clean = not e["tensorflow_imported"]
    self.report("env packages", "ok" if clean else "FAIL",
                f"TensorFlow imported: {'no' if clean else 'YES'}; missing optional packages: "
                f"{', '.join(e['missing']) or 'none'}")

  def bench_row(self, model: str, batch: int, dtype: str, key: str | None = None,
                extra: tuple[str, ...] = ()) -> dict | None:
    slug = "_".join([model, f"b{batch}", dtype] + [x.replace("=", "-") for x in extra])
    path = os.path.join(self.out, "bench", f"{slug}.json")
    key = key or f"bench {model} b{batch} {dtype}"
    outcome = self.run("variants" if extra else "bench", f"bench_{slug}", self.launch(
        "bench", "--config", f"configs/{model}.py", "--batch", str(batch), "--dtype", dtype,
        "--steps", str(self.args.steps), "--warmup", str(self.args.warmup), "--json", path,
        *[f"--config.model.{x}" for x in extra]))
    if outcome.status != "ok":
      self.failed(key, outcome)
      return None
    with open(path) as f:
      r = json.load(f)
    if not extra:
      self.bench[model, batch, dtype] = r
      mfu = f"MFU {100 * r['mfu']:.1f}%" if r["mfu"] is not None else "MFU n/a"
      self.report(key, "ok",
                  f"{r['images_per_second']:,.0f} images/s, step p50 "
                  f"{1000 * r['median_step_seconds']:.2f} ms, p90 "
                  f"{1000 * r['p90_step_seconds']:.2f} ms, {mfu} ({r['peak_source']}), compile "
                  f"{r['compile_seconds']:.1f} s", r)
    return r

  def part_bench(self) -> None:
    for model in self.args.models:
      for batch in self.args.batches:
        for dtype in self.args.dtypes:
          self.bench_row(model, batch, dtype)

  def part_torch(self) -> None:
    if importlib.util.find_spec("torch") is None:
      for batch in self.args.batches:
        for dtype in self.args.dtypes:
          self.report(f"torch owt b{batch} {dtype}", "SKIPPED", "no PyTorch installed here")
      return
    steps = max(2, self.args.steps // 4)
    # PyTorch's side runs on one GPU: so does ours here, whatever the bench rows spanned.
    one_gpu = {}
    if self.env_info.get("platform") == "gpu" and self.env_info.get("device_count", 1) > 1:
      one_gpu["CUDA_VISIBLE_DEVICES"] = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
    for batch in self.args.batches:
      for dtype in self.args.dtypes:
        key = f"torch owt b{batch} {dtype}"
        variants = list(self.args.torch_variants)
        if batch in self.args.torch_compile_batches:
          variants.append("compile_cl")
        path = os.path.join(self.out, "torch", f"owt_b{batch}_{dtype}.json")
        outcome = self.run("torch", f"torch_owt_b{batch}_{dtype}", self.python(
            os.path.join(ROOT, "benchmarks", "compare_torch.py"), "--config", "configs/owt.py",
            "--batch", str(batch), "--dtype", dtype, "--rounds", str(self.args.rounds),
            "--steps", str(steps), "--torch", ",".join(variants), "--json", path,
            *[f"--override={o}" for o in self.overrides]), env=one_gpu)
        if outcome.status != "ok":
          self.failed(key, outcome)
          continue
        with open(path) as f:
          result = json.load(f)
        rows, left_out = result["rows"], result.get("left_out", [])
        ours, theirs = rows[0], rows[1:]
        if not theirs:
          self.report(key, "FAIL", f"no PyTorch variant started ({', '.join(left_out)}); see "
                                   f"{outcome.log}")
          continue
        best = max(theirs, key=lambda r: r["images_per_s"])
        mfu = self.mfu_of(("owt", batch, dtype))
        settings = best["ready"].get("settings") or "none apply on CPUs"
        self.report(key, "FAIL" if left_out else "ok", "; ".join(
            [f"ours {ours['images_per_s']:,.0f} images/s{mfu(ours['images_per_s'])}"]
            + [f"{r['label']} {r['images_per_s']:,.0f} images/s{mfu(r['images_per_s'])} "
               f"(ours/it {r['ours_over_it']:.2f}x)" for r in theirs]
            + [f"ours / best PyTorch ({best['label']}) {best['ours_over_it']:.2f}x, measured in "
               f"turns; PyTorch: {best['ready'].get('model')}, settings {settings}, fused SGD "
               f"{best['ready'].get('fused_sgd')}"]
            + [f"{label}: FAILED to start, see {outcome.log}" for label in left_out]
            + [f"both on GPU {v} alone" for v in one_gpu.values()]), result)

  def mfu_of(self, row: tuple):
    """images/s on one device -> ', MFU x%' by the bench row's FLOP count and peak per device
    ('' without them)."""
    r = self.bench.get(row)
    if not r or not r.get("peak_tflops"):
      return lambda ips: ""
    per_second = r["peak_tflops"] * 1e12
    return lambda ips: f", MFU {100 * ips * r['flops_per_image'] / per_second:.1f}%"

  def train_argv(self, workdir: str, steps: int, *extra: str, log_every: int = 1) -> list[str]:
    b = self.args.train_batch
    return self.launch(
        "train", "--config", self.args.train_config, "--workdir", workdir,
        "--config.data.name=synthetic", f"--config.batch_size={b}",
        f"--config.eval_batch_size={b}", f"--config.data.synthetic_train_size={b * steps}",
        f"--config.data.synthetic_eval_size={2 * b}", "--config.num_epochs=1",
        "--config.eval_every_epochs=1", f"--config.log_every_steps={log_every}",
        f"--config.checkpoint_every_steps={max(1, steps // 4)}", "--config.progress=false",
        *extra)

  def part_train(self) -> None:
    steps, stop_after = self.args.train_steps, max(1, self.args.train_steps // 3)
    root = os.path.join(self.out, "train")
    whole, reference, stopped = (os.path.join(root, name)
                                 for name in ("uninterrupted", "reference", "stopped"))
    key = "train resume"
    # Logged every few steps, as a training run is: a log line waits for its step to finish,
    # and logged every step the device would idle while the host logs and feeds the next batch.
    log_every = max(1, steps // 6)
    outcome = self.run("train", "train_uninterrupted",
                       self.train_argv(whole, steps, log_every=log_every))
    if outcome.status != "ok":
      self.failed("train throughput", outcome)
      self.failed(key, outcome)
      return
    rates = [r["img_per_s"] for (s, split), r in sorted(records(whole).items())
             if split == "train" and s > log_every]  # the first interval holds the compile
    self.report("train throughput", "ok",
                f"{self.args.train_config} batch {self.args.train_batch}, synthetic data fed from "
                f"the host: {statistics.median(rates):,.0f} images/s (median of the rates over "
                f"steps {log_every + 1}-{steps}, logged every {log_every})", {"img_per_s": rates})

    flags = " ".join(f for f in (self.environ.get("XLA_FLAGS", ""), DETERMINISTIC_FLAG) if f)
    deterministic = {"XLA_FLAGS": flags}
    outcome = self.run("train", "train_reference", self.train_argv(reference, steps),
                       env=deterministic)
    if outcome.status != "ok":
      self.failed(key, outcome)
      return
    want = records(reference)

    def logged_step() -> bool:
      return any(s >= stop_after for s, split in records(stopped) if split == "train")

    first = self.run("train", "train_stopped", self.train_argv(stopped, steps),
                     env=deterministic, stop_when=logged_step)
    if first.status == "ok":  # it finished before the signal landed
      self.report(key, "FAIL", f"the run finished before SIGTERM reached it; raise --train-steps "
                               f"(see {first.log})")
      return
    if first.returncode != 128 + signal.SIGTERM:
      self.failed(key, first)
      return
    second = self.run("train", "train_resumed", self.train_argv(stopped, steps),
                      env=deterministic)
    if second.status != "ok":
      self.failed(key, second)
      return
    stopped_at = find_int(first.log, "stopped by SIGTERM after step ")
    resumed_at = find_int(second.log, "resuming at step ")
    got = records(stopped)
    compared = {"train": ("loss", "grad_norm", "param_norm"), "eval": ("loss",)}
    diffs = [relative(got[k][m], want[k][m]) for k in want if k in got for m in compared[k[1]]]
    missing = [k for k in want if k not in got]
    worst = max(diffs) if diffs else float("inf")
    top1 = [r.get((steps, "eval"), {}).get("top1_err") for r in (got, want)]
    ok = resumed_at is not None and resumed_at == stopped_at and not missing and worst == 0
    how = ("bitwise equal" if worst == 0
           else f"NOT bitwise equal: max relative difference {worst:.2g}")
    self.report(key, "ok" if ok else "FAIL",
                f"stopped by SIGTERM after step {stopped_at} (exit 143), run again: resumed from "
                f"step {resumed_at}; the loss, gradient and parameter norms of steps 1-{steps} "
                f"and the final evaluation's loss against an uninterrupted run's, all with "
                f"{DETERMINISTIC_FLAG}: {how}"
                + (f"; missing records {missing[:3]}" if missing else "")
                + f"; final top-1 error {top1[0]} (uninterrupted {top1[1]})",
                {"stopped_at": stopped_at, "resumed_at": resumed_at,
                 "max_relative_difference": worst})

  def part_profile(self) -> None:
    spec = self.args.profile_steps
    last = int(spec.split("-")[-1])
    workdir = os.path.join(self.out, "profile")
    outcome = self.run("profile", "profile", self.train_argv(
        workdir, last + 1, f"--config.profile_steps={spec}"))
    if outcome.status != "ok":
      self.failed("profile", outcome)
      return
    found = {}
    for folder, _, files in os.walk(os.path.join(workdir, "profile")):
      for name in files:
        for suffix in (".xplane.pb", "perfetto_trace.json.gz"):
          if name.endswith(suffix):
            found[suffix] = os.path.join(folder, name)
    ok = len(found) == 2
    self.report("profile", "ok" if ok else "FAIL",
                f"steps {spec} of {self.args.train_config}: " + ", ".join(
                    f"{os.path.relpath(p, self.out)} ({os.path.getsize(p) / 2**20:.1f} MiB)"
                    for p in found.values())
                + ("" if ok else "; a trace file is missing")
                + f"; view: xprof {os.path.relpath(workdir, self.out)}/profile, or the .json.gz in "
                  "ui.perfetto.dev", {"files": found})

  def focus(self) -> tuple[int, str]:
    return self.args.focus_batch or self.args.batches[0], self.args.focus_dtype

  def part_compare(self) -> None:
    batch, dtype = self.focus()
    workdir = os.path.join(self.out, "compare")
    outcome = self.run("compare", "compare", self.launch(
        "compare", "--config", "configs/paper.py", "--strategies", STRATEGIES,
        "--steps", str(self.args.steps), "--warmup", str(self.args.warmup), "--workdir", workdir,
        f"--config.batch_size={batch}", f"--config.model.dtype={dtype}"))
    names = STRATEGIES.split(",")
    if outcome.status != "ok":
      for name in names:
        self.failed(f"compare paper b{batch} {dtype} {name}", outcome)
      return
    import csv
    with open(os.path.join(workdir, "compare.csv")) as f:
      rows = {r["strategy"]: r for r in csv.DictReader(f)}
    for name in names:
      r = rows[name]
      peak = (f"{int(r['peak_bytes_per_device']) / 2**30:.2f} GiB"
              if r["peak_bytes_per_device"] else "n/a")
      self.report(f"compare paper b{batch} {dtype} {name}", "ok",
                  f"mesh {r['mesh']}: step p50 {float(r['step_ms_median']):.2f} ms (p10 "
                  f"{float(r['step_ms_p10']):.2f}, p90 {float(r['step_ms_p90']):.2f}), "
                  f"{float(r['images_per_s']):,.0f} images/s, peak {peak} per device, "
                  f"collectives {int(r['collective_bytes_total']) / 2**20:.1f} MiB per device, "
                  f"compile {float(r['compile_s']):.1f} s", r)

  def part_variants(self) -> None:
    batch, dtype = self.focus()
    base = self.bench.get(("paper", batch, dtype)) or self.bench_row("paper", batch, dtype)
    auto = self.env_info.get("base_impls", {})
    for field, values in VARIANTS:
      for value in values:
        if value == auto.get(field):
          continue  # what the base row already runs
        key = f"variant paper b{batch} {dtype} {field}={value}"
        r = self.bench_row("paper", batch, dtype, key, (f"{field}={value}",))
        if r is None:
          continue
        against = (f"{r['images_per_second'] / base['images_per_second']:.2f}x the base row "
                   f"({base['images_per_second']:,.0f} images/s, {field}="
                   f"{auto.get(field, 'default')})" if base else "no base row to compare with")
        self.report(key, "ok", f"{r['images_per_second']:,.0f} images/s, step p50 "
                               f"{1000 * r['median_step_seconds']:.2f} ms, compile "
                               f"{r['compile_seconds']:.1f} s; {against}", r)

  def run_all(self) -> int:
    for sub in ("logs", "bench", "torch", "train", "profile", "compare"):
      shutil.rmtree(os.path.join(self.out, sub), ignore_errors=True)  # this check's, from before
    for sub in ("logs", "bench", "torch", "train"):
      os.makedirs(os.path.join(self.out, sub), exist_ok=True)
    print(f"GPU check: output in {self.out}, budget {self.args.budget:.0f} s", flush=True)
    for part in ORDER:
      if part == "env" or part in self.args.parts:
        getattr(self, f"part_{part}")()
    counts = {s: sum(l.status == s for l in self.lines) for s in ("ok", "FAIL", "TIMEOUT",
                                                                  "SKIPPED")}
    print(f"GPU check done: {len(self.lines)} figures, " + ", ".join(
        f"{n} {s}" for s, n in counts.items() if n) + f"; {os.path.join(self.out, 'summary.md')}",
          flush=True)
    return 0 if counts["ok"] == len(self.lines) else 1


def records(workdir: str) -> dict[tuple[int, str], dict]:
  """The last record of each (step, split) in a work directory's metrics.jsonl."""
  out = {}
  try:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      for line in f:
        if line.endswith("\n"):  # a line being written is not read half
          r = json.loads(line)
          out[r["step"], r["split"]] = r
  except FileNotFoundError:
    pass
  return out


def find_int(path: str, prefix: str) -> int | None:
  """The number after `prefix` on the first log line that has it."""
  with open(path, errors="replace") as f:
    for line in f:
      if prefix in line:
        digits = line.split(prefix, 1)[1].split()[0].rstrip(";,.")
        return int(digits) if digits.isdigit() else None
  return None


def relative(a: float, b: float) -> float:
  return 0.0 if a == b else abs(a - b) / max(abs(a), abs(b), 1e-30)


def cmd(args, overrides: list[str]) -> int:
  check_arguments(args)
  os.makedirs(args.out, exist_ok=True)
  return Check(args, overrides).run_all()


# --- the env part's worker: runs in its own process, as `launch.py` starts --------------------


def environment() -> dict:
  """This machine as the commands see it: start-up settings made as launch.py makes them."""
  from alexnet_jax import backend, compile_cache
  from alexnet_jax.backend import xla_flags
  mallopt = backend.keep_host_memory()
  backend.start_up()
  cache = compile_cache.enable()
  entries = len(os.listdir(cache)) if cache and os.path.isdir(cache) else 0
  import jax

  from alexnet_jax import bench, compare, train  # noqa: F401 (what the parts import)
  from alexnet_jax.backend import ops
  from alexnet_jax.data import synthetic  # noqa: F401

  devices = jax.devices()
  conv = ops.resolve_conv_impl("auto")
  pool = ops.resolve_pool_impl("auto")
  versions = {}
  for package in ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "flax", "optax",
                  "orbax-checkpoint", "numpy", "ml_collections", "tqdm", "torch", "torchvision"):
    try:
      versions[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      versions[package] = None
  versions["python"] = sys.version.split()[0]
  smi = shutil.which("nvidia-smi")
  smi_text = ""
  if smi:
    try:
      smi_text = subprocess.run(
          [smi, "--query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit",
           "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
      pass
  return {
      "platform": jax.default_backend(), "device_count": jax.device_count(),
      "process_count": jax.process_count(),
      "device_kinds": [getattr(d, "device_kind", str(d)) for d in devices],
      "host_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
      else os.cpu_count(),
      "nvidia_smi": smi_text.replace("\n", "; "),
      "versions": versions,
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      # (the check's own command line set them already, so none is added here)
      "xla_flags_defaults": list(xla_flags.default_flags()),
      "compile_cache": cache, "compile_cache_entries": entries,
      "cpu_only_paths": {
          "oneDNN convolutions": (conv == "onednn", f"conv_impl auto -> {conv}"),
          "host-memory mallopt": (mallopt, "glibc keeps freed memory" if mallopt
                                  else "glibc defaults"),
      },
      # What the variants' base row runs: each field's default, `auto` resolved here.
      "base_impls": {"pool_impl": pool, "lrn_impl": ops.resolve_lrn_impl("auto"),
                     "tower_impl": "unrolled", "conv1_impl": ops.resolve_conv1_impl("auto")},
      "tensorflow_imported": "tensorflow" in sys.modules,
      "missing": [m for m in OPTIONAL_PACKAGES if importlib.util.find_spec(m) is None],
  }


if __name__ == "__main__":  # python -m alexnet_jax.gpu_check env OUT.json (the env part)
  if sys.argv[1:2] != ["env"] or len(sys.argv) != 3:
    sys.exit("usage: python -m alexnet_jax.gpu_check env OUT.json (the check itself: "
             "scripts/gpu_check.sh or python launch.py gpu-check)")
  with open(sys.argv[2], "w") as f:
    json.dump(environment(), f, indent=1)
