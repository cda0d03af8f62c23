"""tensorflow-datasets sources, offline: the real imagenet2012 builder over a tiny ILSVRC2012
archive made here, a small builder defined here (slicing, process parts, cache), and the errors.
"""

import io
import itertools
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

import alexnet_jax.data as data
import datagen
from alexnet_jax import configlib
from alexnet_jax.data._tf import tf  # noqa: F401  (hides GPUs before tfds loads TensorFlow)

import tensorflow_datasets as tfds  # noqa: E402

RESIZE, CROP = 40, 32


def take(iterator, n):
  return list(itertools.islice(iterator, n))


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def make_cfg(name, data_dir, **fields):
  cfg = configlib.base_config()
  cfg.data.name, cfg.data.data_dir = name, data_dir
  cfg.data.resize_size, cfg.data.crop_size = RESIZE, CROP
  cfg.data.shuffle_buffer = 64
  cfg.batch_size, cfg.eval_batch_size = 4, 4
  for key, value in fields.items():
    cfg.data[key] = value
  return cfg


# --- imagenet2012 from a tiny ILSVRC2012 archive -------------------------------------------------


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
  root = tmp_path_factory.mktemp("imagenet")
  manual_dir, data_dir = str(root / "manual"), str(root / "tfds")
  synsets = ["n01440764", "n01443537", "n02105855"]
  labels = datagen.write_ilsvrc2012_archives(manual_dir, synsets=synsets, train_per_class=4,
                                             num_val=7)
  cfg = make_cfg("imagenet2012", data_dir, manual_dir=manual_dir)
  info = data.dataset_info(cfg)  # prepares on first use
  names = tfds.core.tfds_path("datasets/imagenet2012/labels.txt").read_text().split()
  to_index = {synset: i for i, synset in enumerate(names)}
  with tarfile.open(os.path.join(manual_dir, "ILSVRC2012_img_val.tar")) as tar:
    val_files = [tar.extractfile(datagen.IMAGENET_VAL_NAME.format(k)).read() for k in range(1, 8)]
  val_images = [np.asarray(Image.open(io.BytesIO(f)).convert("RGB")) for f in val_files]
  return {"cfg": cfg, "info": info, "val_images": val_images,
          "train_labels": sorted(to_index[s] for s in labels["train"]),
          "val_labels": [to_index[s] for s in labels["validation"]]}


def centre_view(image):
  """PIL reference: central square, bilinear resize, central crop."""
  h, w, _ = image.shape
  side = min(h, w)
  square = image[(h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]
  resized = np.asarray(Image.fromarray(square).resize((RESIZE, RESIZE), Image.BILINEAR))
  m = (RESIZE - CROP) // 2
  return resized[m:m + CROP, m:m + CROP]


def test_imagenet2012_info_after_preparing(imagenet):
  info = imagenet["info"]
  assert info.num_classes == 1000 and info.class_names[0] == "n01440764"
  assert info.num_examples["train"] == 12 and info.num_examples["validation"] == 7


def test_imagenet2012_train_stream(imagenet):
  cfg = imagenet["cfg"]
  steps = data.steps_per_epoch(cfg, imagenet["info"])
  assert steps == 3
  batches = take(data.train_iterator(cfg, shard_index=0, shard_count=1), 2 * steps)
  assert batches[0]["image"].shape == (4, CROP, CROP, 3) and batches[0]["image"].dtype == np.uint8
  assert batches[0]["rgb_shift"].shape == (4, 3) and batches[0]["rgb_shift"].any()
  for epoch in range(2):  # 12 examples, batch 4: every example once per epoch
    labels = np.concatenate([b["label"] for b in batches[epoch * steps:(epoch + 1) * steps]])
    assert sorted(labels) == imagenet["train_labels"]
  assert_batches_equal(take(data.train_iterator(cfg, shard_index=0, shard_count=1), 2 * steps),
                       batches)
  resumed = take(data.train_iterator(cfg, start_step=2, shard_index=0, shard_count=1), 3)
  assert_batches_equal(resumed, batches[2:5])


def test_imagenet2012_validation_images_carry_tfds_labels(imagenet):
  cfg = imagenet["cfg"]
  batches = list(data.eval_iterator(cfg, shard_index=0, shard_count=1))
  assert len(batches) == 2
  mask = np.concatenate([b["mask"] for b in batches])
  images = np.concatenate([b["image"] for b in batches])[mask]
  labels = np.concatenate([b["label"] for b in batches])[mask]
  references = [centre_view(im).astype(int) for im in imagenet["val_images"]]
  found = []
  for image, label in zip(images, labels):
    errors = [np.abs(image - ref).mean() for ref in references]
    k = int(np.argmin(errors))
    assert errors[k] < 1.5
    assert label == imagenet["val_labels"][k]
    found.append(k)
  assert sorted(found) == list(range(7))

  parts = [list(data.eval_iterator(cfg, batch_size=3, shard_index=p, shard_count=3))
           for p in range(3)]
  assert [len(p) for p in parts] == [3, 3, 3]  # ceil(7 / 3) each, although parts hold 3, 2, 2
  labels = [l for part in parts for b in part for l, m in zip(b["label"], b["mask"]) if m]
  assert sorted(labels) == sorted(imagenet["val_labels"])
  views = next(data.eval_iterator(cfg, views="10crop", shard_index=0, shard_count=1))
  assert views["image"].shape == (4, 10, CROP, CROP, 3)


def test_imagenet2012_missing_manual_download_says_what_to_put_where(tmp_path):
  manual = tmp_path / "manual"
  cfg = make_cfg("imagenet2012", str(tmp_path / "tfds"), manual_dir=str(manual))
  with pytest.raises(data.DataError) as error:
    data.dataset_info(cfg)
  message = str(error.value)
  assert "\n" not in message
  for needed in ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar", str(manual),
                 "image-net.org"):
    assert needed in message
  manual.mkdir()
  (manual / "ILSVRC2012_img_train.tar").write_bytes(b"")
  with pytest.raises(data.DataError, match=r"ILSVRC2012_img_val.tar is missing from"):
    data.dataset_info(cfg)


# --- any other tfds image-classification dataset --------------------------------------------------


class AlexnetJaxTestShapes(tfds.core.GeneratorBasedBuilder):
  """20 train and 7 test PNG images of three classes, landscape and portrait."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "label": tfds.features.ClassLabel(names=["circle", "square", "star"])}),
        supervised_keys=("image", "label"))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(20, seed=0),
            "test": self._generate_examples(7, seed=1)}

  def _generate_examples(self, count, seed):
    rng = np.random.default_rng(seed)
    for i in range(count):
      width, height = (60, 45) if i % 2 else (45, 60)
      yield f"{seed}-{i}", {"image": datagen.natural_image(rng, width, height), "label": i % 3}


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("shapes"))
  tfds.builder("alexnet_jax_test_shapes", data_dir=data_dir).download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return data_dir


def plain_cfg(data_dir, **fields):
  fields.setdefault("eval_split", "test")
  return make_cfg("alexnet_jax_test_shapes", data_dir, random_crop=False, flip=False,
                  pca_lighting=0.0, crop_size=RESIZE, **fields)


def test_tfds_slices_name_splits(shapes_dir):
  cfg = plain_cfg(shapes_dir, train_split="train[:75%]", eval_split="train[75%:]")
  info = data.dataset_info(cfg)
  assert info.num_classes == 3 and info.class_names == ("circle", "square", "star")
  assert info.num_examples == {"train": 20, "test": 7, "train[:75%]": 15, "train[75%:]": 5}
  evaluated = [b["image"][b["mask"]]
               for b in data.eval_iterator(cfg, shard_index=0, shard_count=1)]
  trained = [b["image"]
             for b in take(data.train_iterator(cfg, shard_index=0, shard_count=1), 3)]
  held_out = {im.tobytes() for im in np.concatenate(evaluated)}
  seen = {im.tobytes() for im in np.concatenate(trained)}
  assert len(held_out) == 5 and len(seen) == 12 and not held_out & seen


@pytest.mark.parametrize("cache", [False, True])
def test_tfds_processes_read_disjoint_parts_deterministically(shapes_dir, cache):
  cfg = plain_cfg(shapes_dir, cache=cache)
  steps = data.steps_per_epoch(cfg, data.dataset_info(cfg))  # 20 // 4
  streams = [take(data.train_iterator(cfg, shard_index=p, shard_count=2), 2 * steps)
             for p in range(2)]
  for epoch in range(2):
    parts = [{im.tobytes() for b in s[epoch * steps:(epoch + 1) * steps] for im in b["image"]}
             for s in streams]
    assert len(parts[0]) == len(parts[1]) == 10 and not parts[0] & parts[1]
  orders = [[im.tobytes() for b in streams[0][e * steps:(e + 1) * steps] for im in b["image"]]
            for e in range(2)]
  assert orders[0] != orders[1]  # reshuffled every epoch
  resumed = take(data.train_iterator(cfg, start_step=steps - 1, shard_index=1,
                                     shard_count=2), 3)
  assert_batches_equal(resumed, streams[1][steps - 1:steps + 2])


def test_tfds_eval_over_three_shards(shapes_dir):
  cfg = plain_cfg(shapes_dir)
  single = {im.tobytes() for b in data.eval_iterator(cfg, shard_index=0, shard_count=1)
            for im in b["image"][b["mask"]]}
  parts = [list(data.eval_iterator(cfg, batch_size=3, shard_index=p, shard_count=3))
           for p in range(3)]
  assert [len(p) for p in parts] == [3, 3, 3]
  seen = [im.tobytes() for part in parts for b in part for im in b["image"][b["mask"]]]
  assert len(seen) == 7 and set(seen) == single


def test_unknown_and_unprepared_tfds_names(tmp_path):
  with pytest.raises(data.DataError, match="unknown dataset 'no_such_dataset_xyz'.*list_builders"):
    data.dataset_info(make_cfg("no_such_dataset_xyz", str(tmp_path)))
  unprepared = f"'cifar10' is not prepared.*tfds build cifar10 --data_dir={tmp_path}"
  with pytest.raises(data.DataError, match=unprepared):
    data.dataset_info(make_cfg("cifar10", str(tmp_path)))
  assert [f for _, _, files in os.walk(tmp_path) for f in files] == []  # nothing downloaded
