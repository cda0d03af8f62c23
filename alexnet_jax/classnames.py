"""ImageNet's class names, read offline from files that tensorflow-datasets ships.

tensorflow-datasets holds the 1,000 ILSVRC2012 WordNet ids in label order
(`datasets/imagenet2012/labels.txt`, the order of its `imagenet2012` labels and of torchvision's
outputs) and, in its SI-Score dataset, the human-readable names in the same order
(`datasets/siscore/labels.py`, IMAGENET_LABELS_LIST). Both files are read as text: nothing here
imports TensorFlow.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import os

NUM_IMAGENET_CLASSES = 1000


@functools.cache
def imagenet_names() -> tuple[tuple[str, ...], tuple[str, ...]] | None:
  """(WordNet ids, readable names), both in label order; None if the files are not installed."""
  spec = importlib.util.find_spec("tensorflow_datasets")
  if spec is None or not spec.submodule_search_locations:
    return None
  root = list(spec.submodule_search_locations)[0]
  try:
    with open(os.path.join(root, "datasets", "imagenet2012", "labels.txt")) as f:
      wnids = tuple(line.strip() for line in f if line.strip())
    with open(os.path.join(root, "datasets", "siscore", "labels.py")) as f:
      tree = ast.parse(f.read())
  except OSError:
    return None
  names = None
  for node in tree.body:
    if (isinstance(node, ast.Assign) and len(node.targets) == 1
        and getattr(node.targets[0], "id", "") == "IMAGENET_LABELS_LIST"):
      names = tuple(ast.literal_eval(node.value))
  if names is None or len(names) != NUM_IMAGENET_CLASSES or len(wnids) != NUM_IMAGENET_CLASSES:
    return None
  return wnids, names


def readable(class_names: tuple[str, ...] | list[str] | None, num_classes: int) -> tuple[str, ...]:
  """Names to show for a model's outputs.

  ImageNet's WordNet ids (how tensorflow-datasets names imagenet2012's labels) become readable
  names; a 1000-class model without names gets ImageNet's; otherwise the given names, or the
  class indices.
  """
  names = tuple(class_names or ())
  imagenet = imagenet_names() if num_classes == NUM_IMAGENET_CLASSES else None
  if imagenet is not None:
    wnids, readable_names = imagenet
    if not names or names == wnids:
      return readable_names
  if len(names) == num_classes:
    return names
  return tuple(str(i) for i in range(num_classes))
