"""MNIST-format (IDX) sources from tiny gzipped files made here: reading, batches, the errors.

Nothing here needs Debian's dataset-fashion-mnist package: the default folder is replaced.
"""

import dataclasses
import gzip
import itertools
import os

import numpy as np
import pytest

import alexnet_jax.data as data
from alexnet_jax import cli, configlib, program
from alexnet_jax.data import idx

SIZE = 28
NUM_TRAIN, NUM_TEST = 40, 13
BATCH = 8
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FASHION_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                 "Sneaker", "Bag", "Ankle boot")


def idx_bytes(array: np.ndarray) -> bytes:
  """An IDX file of unsigned bytes: magic 00 00 08 ndim, big-endian sizes, the data."""
  header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
  return header + np.ascontiguousarray(array, np.uint8).tobytes()


def write(folder, name: str, raw: bytes, gz: bool = True) -> str:
  path = os.path.join(folder, name if gz else name[:-len(".gz")])
  with (gzip.open(path, "wb") if gz else open(path, "wb")) as f:
    f.write(raw)
  return path


def write_dataset(folder, seed: int = 0, gz: bool = True) -> dict:
  """The four files with random pictures and labels; returns split -> (grey images, labels)."""
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(seed)
  arrays = {}
  for split, count in (("train", NUM_TRAIN), ("test", NUM_TEST)):
    images = rng.integers(0, 256, (count, SIZE, SIZE), dtype=np.uint8)
    labels = np.arange(count, dtype=np.uint8) % 10
    rng.shuffle(labels)
    images_file, labels_file = idx.FILES[split]
    write(folder, images_file, idx_bytes(images), gz)
    write(folder, labels_file, idx_bytes(labels), gz)
    arrays[split] = images, labels
  return arrays


@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
  folder = str(tmp_path_factory.mktemp("fashion"))
  return folder, write_dataset(folder)


def make_cfg(folder, name="fashion_mnist", **fields):
  cfg = configlib.base_config()
  cfg.data.name, cfg.data.folder = name, folder
  cfg.data.resize_size, cfg.data.crop_size = SIZE, SIZE  # no resize: pixels compare exactly
  cfg.batch_size, cfg.eval_batch_size = BATCH, BATCH
  for key, value in fields.items():
    cfg.data[key] = value
  return cfg


def eval_arrays(cfg, split):
  batches = list(data.eval_iterator(cfg, split, shard_index=0, shard_count=1))
  mask = np.concatenate([b["mask"] for b in batches])
  return (np.concatenate([b["image"] for b in batches])[mask],
          np.concatenate([b["label"] for b in batches])[mask])


def test_splits_counts_and_class_names(fashion):
  folder, _ = fashion
  info = data.dataset_info(make_cfg(folder))
  assert info.num_classes == 10 and info.class_names == FASHION_NAMES
  assert info.num_examples == {"train": NUM_TRAIN, "test": NUM_TEST, "validation": NUM_TEST}
  assert data.steps_per_epoch(make_cfg(folder), info) == NUM_TRAIN // BATCH


@pytest.mark.parametrize("split", ["test", "validation", "train"])
def test_eval_iterator_yields_every_image_in_file_order_as_rgb(fashion, split):
  folder, arrays = fashion
  images, labels = eval_arrays(make_cfg(folder), split)
  want_images, want_labels = arrays["test" if split == "validation" else split]
  assert images.dtype == np.uint8 and images.shape == (len(want_labels), SIZE, SIZE, 3)
  np.testing.assert_array_equal(images, np.repeat(want_images[..., None], 3, axis=-1))
  np.testing.assert_array_equal(labels, want_labels)


def test_train_iterator_covers_the_train_file_once_per_epoch(fashion):
  folder, arrays = fashion
  cfg = make_cfg(folder, random_crop=False, flip=False, pca_lighting=0.0)
  steps = NUM_TRAIN // BATCH
  batches = list(itertools.islice(data.train_iterator(cfg, shard_index=0, shard_count=1),
                                  steps))
  lookup = {image.tobytes(): i for i, image in enumerate(arrays["train"][0])}
  seen = []
  for batch in batches:
    assert batch["image"].shape == (BATCH, SIZE, SIZE, 3) and batch["mask"].all()
    for image, label in zip(batch["image"], batch["label"]):
      assert (image == image[..., :1]).all()  # grey in all three channels
      index = lookup[image[..., 0].tobytes()]
      assert label == arrays["train"][1][index]
      seen.append(index)
  assert sorted(seen) == list(range(NUM_TRAIN))


def test_augmented_and_upscaled_batches_have_the_crop_size(fashion):
  folder, _ = fashion
  cfg = make_cfg(folder, resize_size=36, crop_size=32, cache=True)  # random crops, flips, lighting
  batch = next(data.train_iterator(cfg, shard_index=0, shard_count=1))
  assert batch["image"].shape == (BATCH, 32, 32, 3) and batch["image"].dtype == np.uint8
  images, _ = eval_arrays(cfg, "test")
  assert images.shape == (NUM_TEST, 32, 32, 3)


def test_unpacked_files_and_mnist_read_the_same(tmp_path):
  arrays = write_dataset(str(tmp_path), seed=1, gz=False)
  cfg = make_cfg(str(tmp_path), name="mnist")
  assert data.dataset_info(cfg).class_names == tuple("0123456789")
  images, labels = eval_arrays(cfg, "test")
  np.testing.assert_array_equal(images[..., 0], arrays["test"][0])
  np.testing.assert_array_equal(labels, arrays["test"][1])


# --- choosing between the IDX files and tensorflow-datasets --------------------------------------


@pytest.fixture
def default_folder(tmp_path, monkeypatch):
  """fashion_mnist's default folder moved to an empty tmp folder (Debian's package or not)."""
  folder = str(tmp_path / "debian")
  os.makedirs(folder)
  monkeypatch.setitem(idx.DATASETS, "fashion_mnist",
                      dataclasses.replace(idx.DATASETS["fashion_mnist"], default_folder=folder))
  return folder


class FakeTfdsSource:
  def __init__(self, name, data_dir, manual_dir):
    self.name, self.data_dir = name, data_dir


@pytest.fixture
def tfds_prepared(monkeypatch):
  import alexnet_jax.data.tfds_source as tfds_source
  monkeypatch.setattr(tfds_source, "TfdsSource", FakeTfdsSource)
  monkeypatch.setattr(idx, "_tfds_prepared", lambda name, data_dir: True)


def test_files_in_the_default_folder_win_over_tfds(default_folder, tfds_prepared):
  write_dataset(default_folder)
  assert isinstance(idx.open_source("fashion_mnist", "", ""), idx.IdxSource)


def test_prepared_tfds_is_used_when_the_default_folder_is_empty(default_folder, tfds_prepared):
  source = idx.open_source("fashion_mnist", "", "/my/tfds")
  assert isinstance(source, FakeTfdsSource)
  assert (source.name, source.data_dir) == ("fashion_mnist", "/my/tfds")
  with pytest.raises(data.DataError, match="missing from /nowhere"):  # a folder given: no tfds
    idx.open_source("fashion_mnist", "/nowhere", "")


# --- errors: one line each, exit status 2, before anything compiles ------------------------------


def run_cli(capsys, monkeypatch, *overrides) -> str:
  monkeypatch.setattr(data, "_sources", {})
  compiled = []
  monkeypatch.setattr(program, "make_train_step", lambda *a, **k: compiled.append(1))
  rc = cli.main(["train", "--config", os.path.join(REPO, "configs", "test.py"),
                 "--config.data.name=fashion_mnist", "--config.data.resize_size=32",
                 "--config.data.crop_size=28", *overrides])
  err = capsys.readouterr().err
  assert rc == 2 and not compiled
  assert "Traceback" not in err
  last = err.strip().splitlines()[-1]
  assert last.startswith("error: ")
  return last


def test_missing_file_names_it_the_folder_and_both_ways_to_get_it(tmp_path, capsys, monkeypatch):
  folder = str(tmp_path / "fm")
  write_dataset(folder)
  os.remove(os.path.join(folder, "t10k-labels-idx1-ubyte.gz"))
  line = run_cli(capsys, monkeypatch, f"--config.data.folder={folder}",
                 f"--workdir={tmp_path / 'w'}")
  for needle in ("t10k-labels-idx1-ubyte.gz is missing from " + folder,
                 "apt-get install dataset-fashion-mnist", "github.com/zalandoresearch/fashion-mnist",
                 "--config.data.folder"):
    assert needle in line, line


def test_empty_default_folder_and_no_tfds_says_how_to_get_the_files(default_folder, tmp_path,
                                                                    capsys, monkeypatch):
  line = run_cli(capsys, monkeypatch, f"--config.data.data_dir={tmp_path / 'tfds'}",
                 f"--workdir={tmp_path / 'w'}")
  assert f"train-images-idx3-ubyte.gz is missing from {default_folder}" in line, line
  assert "apt-get install dataset-fashion-mnist" in line


def test_mnist_without_a_folder_asks_for_one(tmp_path, capsys, monkeypatch):
  line = run_cli(capsys, monkeypatch, "--config.data.name=mnist",
                 f"--config.data.data_dir={tmp_path / 'tfds'}", f"--workdir={tmp_path / 'w'}")
  assert "mnist has no default folder" in line and "--config.data.folder" in line, line


def _swap_magic(folder):  # a labels file where the images file should be
  write(folder, "train-images-idx3-ubyte.gz", idx_bytes(np.zeros(NUM_TRAIN, np.uint8)))


def _cut_gzip(folder):  # the download stopped part way: the gzip stream ends early
  path = os.path.join(folder, "train-images-idx3-ubyte.gz")
  raw = open(path, "rb").read()
  open(path, "wb").write(raw[:len(raw) // 2])


def _cut_data(folder):  # a complete gzip stream holding fewer bytes than the header says
  raw = idx_bytes(np.zeros((NUM_TEST, SIZE, SIZE), np.uint8))
  write(folder, "t10k-images-idx3-ubyte.gz", raw[:-SIZE])


def _fewer_labels(folder):
  write(folder, "train-labels-idx1-ubyte.gz", idx_bytes(np.zeros(NUM_TRAIN - 1, np.uint8)))


def _other_size(folder):
  write(folder, "t10k-images-idx3-ubyte.gz", idx_bytes(np.zeros((NUM_TEST, 20, 20), np.uint8)))


def _big_label(folder):
  write(folder, "t10k-labels-idx1-ubyte.gz", idx_bytes(np.full(NUM_TEST, 10, np.uint8)))


@pytest.mark.parametrize("damage, needle", [
    (_swap_magic, "train-images-idx3-ubyte.gz is not an IDX file of 3-dimensional unsigned bytes: "
                  "magic number 00000801, expected 00000803"),
    (_cut_gzip, "train-images-idx3-ubyte.gz is truncated or damaged"),
    (_cut_data, "t10k-images-idx3-ubyte.gz is truncated: the header says 13x28x28 = 10192 bytes of "
                "data, the file holds 10164"),
    (_fewer_labels, "train-images-idx3-ubyte.gz holds 40 images but "),
    (_other_size, "train images are (28, 28), test images (20, 20)"),
    (_big_label, "t10k-labels-idx1-ubyte.gz has label 10"),
])
def test_damaged_files_stop_with_one_line(damage, needle, tmp_path, capsys, monkeypatch):
  folder = str(tmp_path / "fm")
  write_dataset(folder)
  damage(folder)
  line = run_cli(capsys, monkeypatch, f"--config.data.folder={folder}",
                 f"--workdir={tmp_path / 'w'}")
  assert needle in line, line
  assert "download it again" in line or "same" in line
