"""MNIST-format (IDX) datasets from a folder: Fashion-MNIST and MNIST, in memory, no download.

The four files of both datasets, gzipped (or already unpacked, without `.gz`):
  train-images-idx3-ubyte.gz  train-labels-idx1-ubyte.gz    "train": 60,000 examples
  t10k-images-idx3-ubyte.gz   t10k-labels-idx1-ubyte.gz     "test":  10,000 examples
Debian's package `dataset-fashion-mnist` installs Fashion-MNIST's in /usr/share/datasets/fashion-mnist/,
the default folder for `fashion_mnist`; Debian has no MNIST package, so `mnist` needs
config.data.folder. Headers, counts and sizes are checked when the source opens, so a bad file
stops the run before anything compiles.

Splits: "train" and "test" as the files have them; "validation" names the test set too, as in
the digits source. Neither dataset has an official validation split, and papers report the test
set; naming it "validation" lets configs that keep the default eval_split run unchanged. A recipe
tuned on it overstates its accuracy a little: carve a validation part out of "train" for real
model selection.

Grey images are repeated to 3 identical channels, as the digits source does, rather than fed as
one channel. Every part of the pipeline and the model assumes RGB: the per-channel mean and std,
PCA lighting, conv1's input width (and so checkpoints, torchvision export and the FLOP counts),
the image-folder and tfds sources. One channel would save two thirds of conv1's input only, a
small part of the network's work; three keep every tool working on these datasets unchanged.

tensorflow-datasets' `fashion_mnist` and `mnist` stay usable: when no folder is configured and
the default folder lacks the files, a prepared tfds dataset of that name is used instead (say
so in the log); a versioned name (`--config.data.name=fashion_mnist:3.*.*`) always picks tfds.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import zlib

import numpy as np

from alexnet_jax.data.arrays import InMemorySource
from alexnet_jax.data.info import DataError, DatasetInfo, logger

# split -> (images file, labels file)
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
SPLITS = {"train": "train", "test": "test", "validation": "test"}
UBYTE = 0x08  # the IDX type code of unsigned bytes, the third byte of the magic number


@dataclasses.dataclass(frozen=True)
class IdxDataset:
  name: str
  default_folder: str  # "" = none: config.data.folder is required
  class_names: tuple[str, ...]
  download: str  # how to get the files, for the missing-file message


DATASETS = {
    "fashion_mnist": IdxDataset(
        "fashion_mnist", "/usr/share/datasets/fashion-mnist",
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
         "Bag", "Ankle boot"),
        "install Debian's package (apt-get install dataset-fashion-mnist), or download the four "
        "files from https://github.com/zalandoresearch/fashion-mnist (data/fashion) into a folder "
        "and pass --config.data.folder=FOLDER"),
    "mnist": IdxDataset(
        "mnist", "", tuple(str(d) for d in range(10)),
        "download the four files (https://yann.lecun.com/exdb/mnist/, or torchvision's mirror "
        "https://ossci-datasets.s3.amazonaws.com/mnist/) into a folder and pass "
        "--config.data.folder=FOLDER"),
}


def _path(folder: str, name: str) -> str | None:
  """The file `name` in `folder`, or its unpacked twin without `.gz`; None if neither exists."""
  for candidate in (name, name[:-len(".gz")]):
    path = os.path.join(folder, candidate)
    if os.path.isfile(path):
      return path
  return None


def _read_bytes(path: str) -> bytes:
  try:
    if path.endswith(".gz"):
      with gzip.open(path, "rb") as f:
        return f.read()
    with open(path, "rb") as f:
      return f.read()
  except (EOFError, zlib.error) as e:  # a cut-off or damaged gzip stream
    raise DataError(f"{path} is truncated or damaged ({e}); download it again") from None
  except gzip.BadGzipFile:
    raise DataError(f"{path} is not a gzip file; download it again, or unpack it and drop the "
                    ".gz from its name") from None


def read_idx(path: str, ndim: int) -> np.ndarray:
  """An IDX file of unsigned bytes with `ndim` dimensions, checked against its header."""
  raw = _read_bytes(path)
  header = 4 + 4 * ndim
  if len(raw) < 4 or raw[:4] != bytes([0, 0, UBYTE, ndim]):
    got = raw[:4].hex() if len(raw) >= 4 else f"{len(raw)} bytes"
    raise DataError(f"{path} is not an IDX file of {ndim}-dimensional unsigned bytes: magic number "
                    f"{got}, expected {bytes([0, 0, UBYTE, ndim]).hex()}; check the file name "
                    "(images are idx3, labels idx1) or download it again")
  if len(raw) < header:
    raise DataError(f"{path} is truncated: {len(raw)} bytes, shorter than its header; download it again")
  shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
  size = int(np.prod(shape))
  if len(raw) - header != size:
    what = "truncated" if len(raw) - header < size else "longer than its header says"
    raise DataError(f"{path} is {what}: the header says {'x'.join(map(str, shape))} = {size} bytes "
                    f"of data, the file holds {len(raw) - header}; download it again")
  return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def load_split(folder: str, split: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
  """Images uint8 (N, H, W, 3), grey repeated to RGB, and labels int32 (N,) of one file pair."""
  images_path, labels_path = _path(folder, FILES[split][0]), _path(folder, FILES[split][1])
  images, labels = read_idx(images_path, 3), read_idx(labels_path, 1)
  if len(images) != len(labels):
    raise DataError(f"{images_path} holds {len(images)} images but {labels_path} {len(labels)} "
                    "labels; the two files must come from the same download")
  if len(labels) and labels.max() >= num_classes:
    raise DataError(f"{labels_path} has label {labels.max()}, not a class of these "
                    f"{num_classes}; download it again")
  return np.repeat(images[..., None], 3, axis=-1), labels.astype(np.int32)


def missing_files(folder: str) -> list[str]:
  return [f for pair in FILES.values() for f in pair if _path(folder, f) is None]


class IdxSource(InMemorySource):
  """The four files of `dataset` in `folder`, read and checked at once."""

  def __init__(self, dataset: IdxDataset, folder: str):
    self.dataset = dataset
    missing = missing_files(folder)
    if missing:
      raise DataError(f"{dataset.name}: {missing[0]} is missing from {folder} "
                      f"({len(missing)} of the 4 files are): {dataset.download}")
    self.arrays = {split: load_split(folder, split, len(dataset.class_names)) for split in FILES}
    shapes = {split: images.shape[1:3] for split, (images, _) in self.arrays.items()}
    if shapes["train"] != shapes["test"]:
      raise DataError(f"{dataset.name} in {folder}: train images are {shapes['train']}, test "
                      f"images {shapes['test']}; the files must come from the same dataset")
    logger.info("%s: %s", dataset.name, ", ".join(
        f"{len(labels)} {split} images" for split, (_, labels) in self.arrays.items()))

  def _file_split(self, split: str) -> str:
    if split not in SPLITS:
      raise DataError(f"{self.dataset.name} has no split {split!r}; use one of {', '.join(SPLITS)} "
                      '("validation" is the test set)')
    return SPLITS[split]

  def dataset_info(self, split_names) -> DatasetInfo:
    counts = {s: len(self.arrays[self._file_split(s)][1]) for s in (*SPLITS, *split_names)}
    return DatasetInfo(num_classes=len(self.dataset.class_names),
                       class_names=self.dataset.class_names, num_examples=counts)

  def _arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
    return self.arrays[self._file_split(split)]


def open_source(name: str, folder: str, data_dir: str):
  """The IDX source of `name` (fashion_mnist | mnist), or tfds's when only that is there."""
  dataset = DATASETS[name]
  if folder:
    return IdxSource(dataset, folder)
  if dataset.default_folder and not missing_files(dataset.default_folder):
    return IdxSource(dataset, dataset.default_folder)
  if _tfds_prepared(name, data_dir):
    logger.info("%s: no IDX files in %s; using the prepared tensorflow-datasets %s", name,
                dataset.default_folder or "(no default folder)", name)
    from alexnet_jax.data.tfds_source import TfdsSource
    return TfdsSource(name, data_dir, "")
  if not dataset.default_folder:
    raise DataError(f"{name} has no default folder (no Debian package) and no prepared "
                    f"tensorflow-datasets {name}: {dataset.download}")
  return IdxSource(dataset, dataset.default_folder)  # raises the missing-file error


def _tfds_prepared(name: str, data_dir: str) -> bool:
  from alexnet_jax.data.tfds_source import tfds  # imports TensorFlow: only when files are missing

  return tfds.builder(name, data_dir=data_dir or None).is_prepared()
