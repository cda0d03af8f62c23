"""The command line: `python launch.py COMMAND ...` or the `alexnet-jax` console script.

Every command that reads a config takes `--config configs/X.py` (or just `X`) and any number of
`--config.field=value` overrides.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Callable

from alexnet_jax import configlib, gpu_check, params_cli

log = logging.getLogger("alexnet_jax")

DEFAULT_CONFIG = "default"
REPO_CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def resolve_config_path(name: str) -> str:
  """A config file path, or a bare name looked up in the repository's (or installed) configs/."""
  path, sep, arg = name.partition(":")
  candidates = [Path(path), REPO_CONFIGS / path, REPO_CONFIGS / f"{path}.py"]
  try:
    import configs as installed_configs  # present when the package was installed
    base = Path(installed_configs.__file__).parent
    candidates += [base / Path(path).name, base / f"{Path(path).name}.py"]
  except ImportError:
    pass
  for candidate in candidates:
    if candidate.is_file():
      return str(candidate) + sep + arg
  raise configlib.ConfigError(
      f"--config {name}: no such config; pass a file such as configs/default.py or one of: "
      + ", ".join(sorted(p.stem for p in REPO_CONFIGS.glob("*.py") if p.stem != "__init__")))


def load_config(name: str, overrides: list[str]):
  cfg = configlib.load_config(resolve_config_path(name))
  configlib.apply_overrides(cfg, overrides)
  return cfg


def default_workdir(config_name: str) -> str:
  return os.path.join("workdirs", Path(config_name.partition(":")[0]).stem)


# --- commands -------------------------------------------------------------------------------


def cmd_train(args, overrides: list[str]) -> int:
  from alexnet_jax import distributed

  distributed.initialize(args)  # before any other JAX call

  import jax

  from alexnet_jax import checkpoint, train

  cfg = load_config(args.config, overrides)
  workdir = args.workdir or default_workdir(args.config)
  check_workdir(workdir, cfg)
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    # Written whole and renamed: another process checking the directory never reads half a file.
    with open(os.path.join(workdir, "config.json.tmp"), "w") as f:
      f.write(configlib.to_json(cfg))
    os.replace(os.path.join(workdir, "config.json.tmp"), os.path.join(workdir, "config.json"))
  try:
    result = train.train_and_evaluate(cfg, workdir)
  except checkpoint.Interrupted as e:
    print(f"{e}. To resume, run the same command again: {_command_line()}", file=sys.stderr)
    return 128 + (e.signum or signal.SIGTERM)  # what a shell reports for a signal: not success
  except (train.NonFiniteLoss, checkpoint.CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  if result:
    print(f"held-out ({cfg.data.eval_split}, {int(result['count'])} examples): "
          f"top-1 error {100 * result['top1_err']:.2f}% (accuracy "
          f"{100 * (1 - result['top1_err']):.2f}%), top-5 error {100 * result['top5_err']:.2f}%, "
          f"loss {result['loss']:.4f}. Work directory: {workdir}")
  return 0


def _command_line() -> str:
  argv = list(sys.argv) or ["launch.py"]
  argv = (["python"] + argv) if argv[0].endswith(".py") else [os.path.basename(argv[0])] + argv[1:]
  return shlex.join(argv)


def check_workdir(workdir: str, cfg) -> None:
  """Resuming a different run into the same directory would mix two experiments: refuse."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  with open(path) as f:
    old = configlib.from_json(f.read())
  for field in ("model", "data.name", "data.crop_size", "seed"):
    a = old
    b = cfg
    for part in field.split("."):
      a, b = a[part], b[part]
    a = a.to_dict() if hasattr(a, "to_dict") else a
    b = b.to_dict() if hasattr(b, "to_dict") else b
    if a != b:
      raise configlib.ConfigError(
          f"work directory {workdir} holds a run with a different config.{field} "
          f"({a!r} there, {b!r} now); pass another --workdir to start a new run")


def add_config_args(p: argparse.ArgumentParser) -> None:
  p.add_argument("--config", default=DEFAULT_CONFIG,
                 help="config file or name (default: configs/default.py, the offline demo); "
                      "add --config.FIELD=VALUE to override any field")


def add_train_args(p: argparse.ArgumentParser) -> None:
  add_config_args(p)
  p.add_argument("--workdir", default="",
                 help="where this run lives; the same directory again resumes "
                      "(default: workdirs/<config name>)")
  _add_distributed_args(p)


def cmd_compare(args, overrides: list[str]) -> int:
  from alexnet_jax import compare, distributed

  distributed.initialize(args)  # before any other JAX call
  return compare.cmd_compare(args, overrides)


def add_compare_args(p: argparse.ArgumentParser) -> None:
  add_config_args(p)
  p.add_argument("--strategies", default="data,two_tower,weird_trick,fsdp",
                 help="comma-separated strategy names (default: all four)")
  p.add_argument("--mesh", default="",
                 help="one mesh for every strategy ('4x2' = data x second axis), or "
                      "name=shape pairs ('two_tower=4x2,fsdp=1x8'); default: each strategy's own")
  p.add_argument("--steps", type=int, default=10, help="timed steps per strategy (default 10)")
  p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
  p.add_argument("--workdir", default="workdirs/compare",
                 help="where compare.md, compare.csv and compare.png are written")
  _add_distributed_args(p)


def cmd_bench(args, overrides: list[str]) -> int:
  from alexnet_jax import bench, distributed

  distributed.initialize(args)  # before any other JAX call
  cfg = load_config(args.config, overrides)
  return bench.run(cfg, args, bench.config_label(args.config))


def add_bench_args(p: argparse.ArgumentParser) -> None:
  from alexnet_jax import bench

  add_config_args(p)
  bench.add_arguments(p)
  _add_distributed_args(p)


def _add_distributed_args(p: argparse.ArgumentParser) -> None:
  from alexnet_jax import distributed

  distributed.add_arguments(p)


def cmd_prepare(args, overrides: list[str]) -> int:
  from alexnet_jax import prepare

  if overrides:
    raise configlib.ConfigError("prepare takes no --config overrides")
  try:
    return prepare.run(args)
  except prepare.PrepareError as e:
    raise configlib.ConfigError(str(e)) from None


def add_prepare_args(p: argparse.ArgumentParser) -> None:
  from alexnet_jax import prepare

  prepare.add_arguments(p)


# name -> (function(args, overrides) -> exit code, help, function adding the arguments)
COMMANDS: dict[str, tuple[Callable, str, Callable]] = {
    "train": (cmd_train, "train a config (resumes from the work directory's last checkpoint)",
              add_train_args),
    "compare": (cmd_compare, "compile and time each sharding strategy's train step; tables "
                             "and a chart of time, memory and collectives", add_compare_args),
    "export": (params_cli.cmd_export, "write a run's parameters to a safetensors file",
               params_cli.add_export_args),
    "evaluate": (params_cli.cmd_evaluate, "top-1/top-5 error of parameter files (an ensemble if "
                 "several), centre crop or 10 views", params_cli.add_evaluate_args),
    "predict": (params_cli.cmd_predict, "top-5 classes of image files",
                params_cli.add_predict_args),
    "bench": (cmd_bench, "time the train step on synthetic data: step time, images/s, MFU",
              add_bench_args),
    "prepare": (cmd_prepare, "rewrite an image dataset with the shorter side at 256 px",
                add_prepare_args),
    "gpu-check": (gpu_check.cmd, "every GPU figure from one command, each part under a time "
                  "limit; a summary line per figure (scripts/gpu_check.sh)", gpu_check.add_arguments),
}
# The paper's experiments and figures (relu-tanh, ablate, kernels, features, neighbours, ...).
from alexnet_jax.experiments.commands import COMMANDS as _EXPERIMENT_COMMANDS  # noqa: E402
COMMANDS.update(_EXPERIMENT_COMMANDS)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="launch.py", description="AlexNet in JAX: train, evaluate, export, compare, bench.",
      epilog="With no command, runs `train` on the offline default (configs/default.py).")
  sub = parser.add_subparsers(dest="command", metavar="COMMAND")
  for name, (_, help_text, add_args) in COMMANDS.items():
    add_args(sub.add_parser(name, help=help_text, description=help_text))
  return parser


def setup_logging() -> None:
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                      datefmt="%H:%M:%S", stream=sys.stderr)
  for noisy in ("absl", "jax", "orbax", "tensorflow", "etils"):
    logging.getLogger(noisy).setLevel(logging.WARNING)


def entry_point() -> int:
  """The program (launch.py, the `alexnet-jax` script): process-wide host settings, then `main`.

  Tests call `main` directly and so leave their own process's malloc alone.
  """
  from alexnet_jax import host_memory
  host_memory.keep_freed_memory()  # before JAX starts its threads
  return main()


def main(argv: list[str] | None = None) -> int:
  from alexnet_jax import compile_cache, xla_flags
  xla_flags.apply_defaults()  # before JAX starts: XLA reads XLA_FLAGS once
  compile_cache.enable()  # before anything compiles
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
    argv = ["train"] + argv  # `python launch.py` runs the offline default
  parser = build_parser()
  args, rest = parser.parse_known_args(argv)
  overrides = []
  for item in rest:
    if item.startswith("--config."):
      overrides.append(item[len("--config."):])
    else:
      parser.error(f"unrecognised argument {item!r}")
  setup_logging()
  command = COMMANDS[args.command][0]
  try:
    return command(args, overrides)
  except (configlib.ConfigError, ValueError) as e:
    if not _is_user_error(e):
      raise
    print(f"error: {e}", file=sys.stderr)
    return 2


def _is_user_error(e: Exception) -> bool:
  """Config and data errors are the user's to fix: one line, no traceback."""
  if isinstance(e, configlib.ConfigError):
    return True
  try:
    from alexnet_jax.data import DataError
  except ImportError:
    return False
  return isinstance(e, DataError)
