"""What every data source reports, and the error users see. No TensorFlow here."""

from __future__ import annotations

import dataclasses
import logging

# Skipped and converted image files, dataset preparation and cache misses are logged here.
logger = logging.getLogger("alexnet_jax.data")


VIEWS = ("center", "10crop")  # evaluation: the central crop, or the paper's 10 views


class DataError(ValueError):
  """A dataset that cannot be used as configured; the one-line message says how to fix it."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  num_classes: int
  class_names: tuple[str, ...]
  num_examples: dict[str, int]  # split string, as written in the config -> number of examples
