"""The command line: `python launch.py COMMAND ...` or the `alexnet-jax` console script.

Every command that reads a config takes `--config configs/X.py` (or just `X`) and any number of
`--config.field=value` overrides.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import warnings
from typing import Callable

from alexnet_jax import configlib, gpu_check, params_cli
from alexnet_jax.arguments import add_config_args
from alexnet_jax.configlib import load as load_config

log = logging.getLogger("alexnet_jax")

# --- commands -------------------------------------------------------------------------------


def cmd_train(args, overrides: list[str]) -> int:
  from alexnet_jax import distributed

  distributed.initialize(args)  # before any other JAX call

  from alexnet_jax import checkpoint, train
  from alexnet_jax.experiments import curves  # DIR/curves.png, redrawn at every evaluation

  cfg = load_config(args.config, overrides)
  workdir = args.workdir or configlib.default_workdir(args.config)
  try:
    # Checks the whole config first: a refused command writes nothing into the directory.
    result = train.train_and_evaluate(cfg, workdir, after_eval=[curves.write_after_eval])
  except checkpoint.Interrupted as e:
    print(f"{e}. To resume, run the same command again: {_command_line()}", file=sys.stderr)
    return 128 + (e.signum or signal.SIGTERM)  # what a shell reports for a signal: not success
  except KeyboardInterrupt:  # a second Ctrl-C: stopped at once, without a checkpoint
    # It may land inside Orbax's save: the coroutines it leaves unstarted warn when collected.
    warnings.filterwarnings("ignore", r"coroutine '(run_sync|AsyncCheckpointer)\.", RuntimeWarning)
    print(f"error: stopped at once by a second Ctrl-C; {_last_checkpoint(workdir)}. To resume "
          f"from it, run the same command again: {_command_line()}", file=sys.stderr)
    return 128 + signal.SIGINT
  except (train.NonFiniteLoss, checkpoint.CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  if result:
    print(f"held-out ({cfg.data.eval_split}, {int(result['count'])} examples): "
          f"top-1 error {100 * result['top1_err']:.2f}% (accuracy "
          f"{100 * (1 - result['top1_err']):.2f}%), top-5 error {100 * result['top5_err']:.2f}%, "
          f"loss {result['loss']:.4f}. Work directory: {workdir}")
  return 0


def _last_checkpoint(workdir: str) -> str:
  directory = os.path.join(workdir, "checkpoints")
  try:
    steps = sorted(int(n) for n in os.listdir(directory) if n.isdigit())
  except OSError:
    steps = []
  if not steps:
    return "no checkpoint was written yet"
  return f"the last checkpoint is {os.path.join(directory, str(steps[-1]))}"


def _command_line() -> str:
  from alexnet_jax import workdir as workdir_lib
  return workdir_lib.command_line()


def check_workdir(workdir: str, cfg) -> None:
  """Resuming a different run into the same directory would mix two experiments: refuse."""
  from alexnet_jax import workdir as workdir_lib
  workdir_lib.check_run(workdir, cfg)


def add_train_args(p: argparse.ArgumentParser) -> None:
  add_config_args(p)
  p.add_argument("--workdir", default="",
                 help="where this run lives; the same directory again resumes "
                      "(default: workdirs/<config name>)")
  _add_distributed_args(p)


def cmd_compare(args, overrides: list[str]) -> int:
  from alexnet_jax import compare, distributed, workdir as workdir_lib

  distributed.initialize(args)  # before any other JAX call
  import jax

  load_config(args.config, overrides)  # a config that does not load creates no directory
  # Two compares would interleave their tables; process 0 alone writes them.
  with workdir_lib.locked(args.workdir, enabled=jax.process_index() == 0):
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


class _Parser(argparse.ArgumentParser):
  """argparse with one-line errors (argparse's own prints the whole usage first)."""

  def error(self, message: str):
    self.exit(2, f"error: {self.prog}: {message}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
  parser = _Parser(
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
  for name in ("absl", "asyncio"):
    if not any(isinstance(f, _CheckpointNoise) for f in logging.getLogger(name).filters):
      logging.getLogger(name).addFilter(_CheckpointNoise())
  _quiet_unraisable()


class _CheckpointNoise(logging.Filter):
  """Orbax's background threads log a full disk with a whole traceback each (hundreds of lines),
  Orbax a Ctrl-C that came while it waited for a save, and asyncio the reads of a damaged
  checkpoint abandoned when its first read failed; the command reports each once, in one line.
  A save a second Ctrl-C cut short can also leave Orbax's thread starting work while Python shuts
  down, which it logs with a traceback; the run has stopped and said so already."""

  def filter(self, record: logging.LogRecord) -> bool:
    text = record.getMessage()
    if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
      return False  # a second Ctrl-C while Orbax waited for a save: reported by cmd_train
    if (record.exc_info and isinstance(record.exc_info[1], RuntimeError)
        and str(record.exc_info[1]) == "cannot schedule new futures after shutdown"):
      return False  # only ever at exit (the interpreter's executors are shut down)
    if record.exc_info and record.exc_info[1] is not None:
      text += str(record.exc_info[1])
    if "No space left on device" in text or "Disk quota exceeded" in text:
      return False
    return not ("exception was never retrieved" in text and "OCDBT" in text)


def _quiet_unraisable() -> None:
  """Drop the harmless 'exceptions ignored' that read like a crash when a checkpoint read or
  write fails (dozens when a damaged checkpoint is skipped): TensorStore completing a read after
  Orbax closed the event loop that asked for it, Orbax's abandoned coroutines being finalised
  (also while Python shuts down). The failure itself is reported once. Everything else goes to
  the previous hook."""
  previous = sys.unraisablehook
  if getattr(previous, "alexnet_jax", False):
    return

  def hook(unraisable):
    e, obj = unraisable.exc_value, unraisable.object
    if isinstance(e, RuntimeError) and str(e) == "Event loop is closed":
      return
    if isinstance(e, ImportError) and "Python is likely shutting down" in str(e):
      return
    if isinstance(e, AttributeError) and getattr(obj, "__qualname__", "") == "BaseEventLoop.__del__":
      return  # an event loop a second Ctrl-C interrupted while Orbax was making it
    code = getattr(obj, "cr_code", None)
    if code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename:
      return
    previous(unraisable)

  hook.alexnet_jax = True
  sys.unraisablehook = hook


def entry_point() -> int:
  """The program (launch.py, the `alexnet-jax` script): process-wide host settings, then `main`.

  Tests call `main` directly and so leave their own process's malloc alone.
  """
  from alexnet_jax import backend
  backend.keep_host_memory()  # before JAX starts its threads
  return main()


def main(argv: list[str] | None = None) -> int:
  from alexnet_jax import backend, compile_cache
  backend.start_up()  # before JAX starts: XLA reads XLA_FLAGS once
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
  except KeyboardInterrupt:  # Ctrl-C outside the training loop (which handles its own)
    print("error: interrupted by Ctrl-C; nothing was left half-written", file=sys.stderr)
    return 128 + signal.SIGINT
  except Exception as e:  # noqa: BLE001 (re-raised unless it is the user's to fix)
    message = _user_error(e)
    if message is None:
      raise
    print(f"error: {message}", file=sys.stderr)
    return 2


def _user_error(e: BaseException) -> str | None:
  """The one line to print for an error the user can fix, or None for a bug (a traceback)."""
  from alexnet_jax import workdir as workdir_lib

  if isinstance(e, configlib.ConfigError):
    return str(e)
  full = _disk_full_cause(e)
  if full is not None:  # a full disk anywhere below (Orbax wraps it in its own errors)
    return workdir_lib.full_message(str(full.filename or "."),
                                    what="" if full.filename else "a file")
  if isinstance(e, ValueError) and _is_user_error(e):
    return str(e)
  return None


def _disk_full_cause(e: BaseException | None) -> OSError | None:
  import errno

  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
      return e
    e = e.__cause__ or e.__context__
  return None


def _is_user_error(e: Exception) -> bool:
  """Config and data errors are the user's to fix: one line, no traceback."""
  if isinstance(e, configlib.ConfigError):
    return True
  try:
    from alexnet_jax.data import DataError
  except ImportError:
    return False
  return isinstance(e, DataError)
