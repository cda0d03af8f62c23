"""The commands that work on trained parameters: export, evaluate, predict.

Their arguments are declared here (cheap to import); the work is imported when a command runs.
"""

from __future__ import annotations

import argparse
import os
import sys


def add_export_args(p: argparse.ArgumentParser) -> None:
  source = p.add_mutually_exclusive_group(required=True)
  source.add_argument("--workdir", help="a training work directory (its checkpoint is exported)")
  source.add_argument("--params", help="a parameter file to convert instead: .safetensors "
                                       "(this project's or torchvision's layout) or torchvision .pth")
  p.add_argument("--checkpoint", default="latest",
                 help="with --workdir: latest (default), best (lowest validation top-1 error) "
                      "or a step number")
  p.add_argument("--out", required=True, help="the .safetensors file to write")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--layout", default="alexnet_jax", choices=("alexnet_jax", "torchvision"),
                 help="tensor names and shapes: this project's, or torchvision's AlexNet "
                      "state_dict (owt variant only)")
  p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def cmd_export(args, overrides: list[str]) -> int:
  from alexnet_jax import export

  _no_overrides("export", overrides)
  model, meta = export.export(out=args.out, workdir=args.workdir, params=args.params,
                              checkpoint=args.checkpoint, dtype=args.dtype, layout=args.layout,
                              overwrite=args.overwrite)
  count = sum(int(getattr(a, "size", 0)) for a in _leaves(model.params))
  step = f", step {model.step}" if model.step is not None else ""
  print(f"wrote {args.out}: {export.describe(model.cfg)}, {count:,} parameters, "
        f"{args.dtype}, {args.layout} layout{step} ({os.path.getsize(args.out) / 2**20:.2f} MiB)")
  return 0


def add_evaluate_args(p: argparse.ArgumentParser) -> None:
  from alexnet_jax.arguments import add_config_args

  p.add_argument("--params", nargs="+", required=True,
                 help="parameter files (several: an ensemble, probabilities averaged); "
                      ".safetensors from export, or torchvision's AlexNet .pth/.safetensors")
  add_config_args(p)
  p.add_argument("--views", default="center", choices=("center", "10crop"),
                 help="the centre crop, or the paper's 10 views averaged in probability")
  p.add_argument("--split", default="", help="default: the config's data.eval_split")
  p.add_argument("--batch-size", type=_positive_int, default=None,
                 help="default: config.eval_batch_size")
  p.add_argument("--out", default="", help="also write the results to this JSON file")
  from alexnet_jax import distributed
  distributed.add_arguments(p)


def cmd_evaluate(args, overrides: list[str]) -> int:
  from alexnet_jax import distributed

  distributed.initialize(args)  # before any other JAX call

  import jax

  from alexnet_jax import evaluate
  from alexnet_jax import configlib

  cfg = configlib.load(args.config, overrides)
  results = evaluate.evaluate(cfg, args.params, views=args.views, split=args.split or None,
                              batch_size=args.batch_size)
  if jax.process_index() == 0:
    print(evaluate.format_table(results))
    if args.out:
      _write_json(results, args.out)
      print(f"results written to {args.out}")
  return 0


def add_predict_args(p: argparse.ArgumentParser) -> None:
  p.add_argument("--params", required=True, help="a parameter file (.safetensors from export, "
                                                 "or torchvision's AlexNet .pth/.safetensors)")
  p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, ...)")
  p.add_argument("--top", type=_positive_int, default=5, help="classes shown per image (default 5)")


def cmd_predict(args, overrides: list[str]) -> int:
  from alexnet_jax import export, predict

  _no_overrides("predict", overrides)
  predictions = predict.predict(export.load(args.params), args.images, top_k=args.top)
  text = predict.format_predictions(predictions)
  if text:
    print(text)
  failed = [p for p in predictions if p.error]
  for p in failed:
    print(f"error: {p.error}", file=sys.stderr)
  return 1 if failed else 0


def _positive_int(text: str) -> int:
  from alexnet_jax.arguments import positive_int
  return positive_int(text)


def _write_json(results: dict, path: str) -> None:
  """evaluate's results as JSON, written atomically; a failure to write is one line."""
  import json

  from alexnet_jax import workdir
  from alexnet_jax.configlib import ConfigError

  try:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    workdir.write_atomic(path, json.dumps(results, indent=2) + "\n")
  except OSError as e:
    error = workdir.disk_error(e, path, 0)
    if isinstance(error, workdir.DiskFull):
      raise error from None
    raise ConfigError(f"cannot write {path} ({e.strerror or e}); pass another --out") from None


def _no_overrides(command: str, overrides: list[str]) -> None:
  from alexnet_jax.configlib import ConfigError

  if overrides:
    raise ConfigError(f"{command} takes no --config overrides (the parameter file describes the "
                      f"model); got --config.{overrides[0]}")


def _leaves(tree):
  import jax
  return jax.tree.leaves(tree)
