"""The experiments' subcommands for launch.py (registered in cli.COMMANDS).

Each function takes (args, config overrides) and returns an exit code, like cmd_train. Heavy
imports (JAX, the data pipeline, matplotlib) happen inside, so `launch.py --help` stays fast.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from alexnet_jax import configlib
from alexnet_jax.arguments import add_config_args


def _seeds(text: str) -> list[int]:
  try:
    return [int(s) for s in text.split(",") if s.strip()]
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r}: write seeds like 0,1,2") from None


def _rates(text: str) -> list[float]:
  try:
    return [float(s) for s in text.split(",") if s.strip()]
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r}: write rates like 0.01,0.02") from None


def _experiment_root(args, kind: str) -> str:
  return args.workdir or os.path.join("workdirs", kind, Path(args.config.partition(":")[0]).stem)


def _no_overrides(overrides: list[str], command: str) -> None:
  if overrides:
    from alexnet_jax.experiments.runs import ExperimentError
    raise ExperimentError(f"{command} reads its config from the work directory; "
                          f"--config.{overrides[0]} does not apply here")


# --- relu-tanh ------------------------------------------------------------------------------


def cmd_relu_tanh(args, overrides: list[str]) -> int:
  from alexnet_jax import configlib
  from alexnet_jax.experiments import relu_tanh

  cfg = configlib.load(args.config, [])
  relu_tanh.apply_figure1_settings(cfg)
  configlib.apply_overrides(cfg, overrides)
  root = _experiment_root(args, "relu_tanh")
  path, results = relu_tanh.run(cfg, root, seeds=args.seeds, epochs=args.epochs,
                                target=args.target, rates=args.lrs,
                                points_per_epoch=args.points_per_epoch)
  print(relu_tanh.describe(results))
  print(f"figure: {path}; numbers: {os.path.join(root, 'figure1.json')}")
  return 0


def add_relu_tanh_args(p: argparse.ArgumentParser) -> None:
  add_config_args(p)
  p.add_argument("--workdir", default="", help="where the runs go, one directory per activation "
                 "and seed (default: workdirs/relu_tanh/<config>); finished runs are reused")
  p.add_argument("--seeds", type=_seeds, default=[0, 1, 2], help="comma-separated (default 0,1,2)")
  p.add_argument("--epochs", type=float, default=10.0, help="the budget of every run (default 10)")
  p.add_argument("--target", type=float, default=None,
                 help="target training error, a fraction (default: 0.25 as the paper on "
                      "cifar10, 0.05 on digits, 0.25 elsewhere)")
  p.add_argument("--lrs", type=_rates, default=None,
                 help="candidate learning rates, e.g. 0.005,0.01,0.02; each activation keeps the "
                      "fastest on the first seed, as the paper chose each network's rate "
                      "(default: config.optim.learning_rate for both)")
  p.add_argument("--points-per-epoch", type=int, default=4,
                 help="training-error points logged per epoch (default 4)")


# --- ablate ---------------------------------------------------------------------------------


def cmd_ablate(args, overrides: list[str]) -> int:
  from alexnet_jax.experiments import ablate

  cfg = configlib.load(args.config, overrides)
  root = _experiment_root(args, "ablate")
  text, _ = ablate.run(cfg, root, seeds=args.seeds, conditions=tuple(args.conditions.split(",")))
  print(text)
  print(f"tables: {os.path.join(root, 'ablation.md')} (.csv, .json)")
  return 0


def add_ablate_args(p: argparse.ArgumentParser) -> None:
  from alexnet_jax.experiments import ablate
  add_config_args(p)
  p.add_argument("--workdir", default="", help="where the runs go, one directory per condition "
                 "and seed (default: workdirs/ablate/<config>); finished runs are reused")
  p.add_argument("--seeds", type=_seeds, default=[0, 1, 2], help="comma-separated (default 0,1,2)")
  p.add_argument("--conditions", default=",".join(ablate.DEFAULT_CONDITIONS),
                 help=f"comma-separated, from {', '.join(ablate.CONDITIONS)} "
                      f"(default {','.join(ablate.DEFAULT_CONDITIONS)})")


# --- kernels, features, neighbours, curves: read a trained work directory --------------------


def cmd_kernels(args, overrides: list[str]) -> int:
  from alexnet_jax.experiments import kernels

  _no_overrides(overrides, "kernels")
  path, summary, step = kernels.run(args.workdir, args.out or None, step=args.step,
                                    columns=args.columns)
  for t in summary:
    print(f"tower {t['tower'] + 1}: colour share {t['colour_share_mean']:.4f} "
          f"(std {t['colour_share_std']:.4f}, {t['kernels']} kernels)")
  print(f"conv1 kernels at step {step}: {path} (numbers: {os.path.splitext(path)[0]}.json); "
        f"colour share 0 = grey-scale, {kernels.RANDOM_SHARE:.3f} = random weights")
  return 0


def add_kernels_args(p: argparse.ArgumentParser) -> None:
  p.add_argument("--workdir", required=True, help="a trained run's work directory")
  p.add_argument("--out", default="", help="PNG path (default: WORKDIR/kernels.png)")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
  p.add_argument("--columns", type=int, default=16, help="kernels per row (default 16)")


def cmd_features(args, overrides: list[str]) -> int:
  from alexnet_jax.experiments import neighbours, runs

  _no_overrides(overrides, "features")
  trained = runs.load_trained(args.workdir)
  split = args.split or trained.cfg.data.eval_split
  features, labels = neighbours.write_features(trained, split, args.out, args.batch_size)
  print(f"{split}: {features.shape[0]} fc7 vectors of {features.shape[1]} dims (step "
        f"{trained.step}) -> {args.out}; labels -> {neighbours.labels_path(args.out)}")
  return 0


def add_features_args(p: argparse.ArgumentParser) -> None:
  p.add_argument("--workdir", required=True, help="a trained run's work directory")
  p.add_argument("--split", default="", help="dataset split (default: the config's eval split)")
  p.add_argument("--out", required=True, help="the .npy file for the (N, D) float32 features; "
                 "labels go to OUT.labels.npy (feats.npy -> feats.labels.npy)")
  p.add_argument("--batch-size", type=int, default=256)


def cmd_neighbours(args, overrides: list[str]) -> int:
  from alexnet_jax.experiments import neighbours

  _no_overrides(overrides, "neighbours")
  path, result = neighbours.run(args.workdir, args.out or None,
                                query_split=args.query_split or None,
                                db_split=args.db_split or None, queries=args.queries, k=args.k,
                                batch_size=args.batch_size)
  print(f"{len(result['query_labels'])} {result['query_split']} queries, {args.k} nearest of "
        f"{result['db_size']} {result['db_split']} images: "
        f"{100 * result['same_label_fraction']:.1f}% share the query's label. {path} "
        f"(numbers: {os.path.splitext(path)[0]}.json)")
  return 0


def add_neighbours_args(p: argparse.ArgumentParser) -> None:
  p.add_argument("--workdir", required=True, help="a trained run's work directory")
  p.add_argument("--out", default="", help="PNG path (default: WORKDIR/neighbours.png)")
  p.add_argument("--queries", type=int, default=8, help="query images, spread over the split")
  p.add_argument("--k", type=int, default=6, help="neighbours per query (default 6)")
  p.add_argument("--query-split", default="", help="default: the config's eval split")
  p.add_argument("--db-split", default="", help="searched split (default: the train split)")
  p.add_argument("--batch-size", type=int, default=256)


def cmd_curves(args, overrides: list[str]) -> int:
  from alexnet_jax.experiments import curves

  _no_overrides(overrides, "curves")
  path, _ = curves.write_training_curves(args.workdir, args.out or None)
  print(f"training curves: {path}")
  return 0


def add_curves_args(p: argparse.ArgumentParser) -> None:
  p.add_argument("--workdir", required=True, help="a run's work directory (reads metrics.jsonl)")
  p.add_argument("--out", default="", help="PNG path (default: WORKDIR/curves.png)")


# --- augment-sheet --------------------------------------------------------------------------


def cmd_augment_sheet(args, overrides: list[str]) -> int:
  from alexnet_jax.experiments import augment

  cfg = configlib.load(args.config, overrides)
  out = args.out or os.path.join("workdirs", "augment_sheet.png")
  path, views = augment.run(cfg, out, images=args.images, epochs=args.epochs,
                            lighting_gain=args.lighting_gain)
  print(f"{len(views['label'])} training images x {views['image'].shape[0]} epochs: {path} "
        f"(offsets: {os.path.splitext(path)[0]}.json)")
  return 0


def add_augment_sheet_args(p: argparse.ArgumentParser) -> None:
  add_config_args(p)
  p.add_argument("--out", default="", help="PNG path (default: workdirs/augment_sheet.png)")
  p.add_argument("--images", type=int, default=6, help="training images, one per row (default 6)")
  p.add_argument("--epochs", type=int, default=6, help="epochs, one per column (default 6)")
  p.add_argument("--lighting-gain", type=float, default=1.0,
                 help="multiply the PCA lighting offset for display only (default 1: as trained)")


# name -> (function, help, add_arguments), merged into cli.COMMANDS
COMMANDS = {
    "relu-tanh": (cmd_relu_tanh, "the paper's Figure 1: ReLU vs tanh training speed of a "
                  "four-layer CNN, over seeds", add_relu_tanh_args),
    "ablate": (cmd_ablate, "LRN on/off and overlapping vs non-overlapping pooling: top-1/top-5 "
               "error over seeds beside the paper's deltas", add_ablate_args),
    "kernels": (cmd_kernels, "the paper's Figure 3: a trained run's conv1 kernels per tower, "
                "with their colour specificity", add_kernels_args),
    "features": (cmd_features, "write the fc7 vectors (and labels) of a split to .npy",
                 add_features_args),
    "neighbours": (cmd_neighbours, "the paper's Figure 4: query images and their nearest "
                   "training images in fc7 space", add_neighbours_args),
    "curves": (cmd_curves, "draw a run's loss and top-1/top-5 error vs step (train.py also "
               "does at every evaluation)", add_curves_args),
    "augment-sheet": (cmd_augment_sheet, "a grid of the training pipeline's crops, mirrors and "
                      "lighting for a few images", add_augment_sheet_args),
}
