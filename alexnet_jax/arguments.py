"""Command-line arguments shared by the commands (cli.py, params_cli.py, compare.py, the
experiments): argparse only, so that no command imports the command line itself."""

from __future__ import annotations

import argparse

from alexnet_jax.configlib import DEFAULT_CONFIG


def add_config_args(p: argparse.ArgumentParser) -> None:
  p.add_argument("--config", default=DEFAULT_CONFIG,
                 help="config file or name (default: configs/default.py, the offline demo); "
                      "add --config.FIELD=VALUE to override any field")


def positive_int(text: str) -> int:
  """An argparse type: an integer >= 1."""
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
  if value < 1:
    raise argparse.ArgumentTypeError(f"{value} must be at least 1")
  return value
