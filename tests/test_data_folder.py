"""Image folders: bad files, the manifest, process slices, Tiny ImageNet's layout."""

import itertools
import logging
import os

import numpy as np
import pytest
from PIL import Image

import alexnet_jax.data as data
import datagen
from alexnet_jax import configlib
from alexnet_jax.data import imagecheck

RESIZE, CROP = 40, 32
TRAIN_COUNTS = {"cat": 5, "dog": 4, "eel": 5}
VAL_COUNTS = {"cat": 3, "dog": 4, "eel": 3}
BAD = {"train": {"corrupt": "cat", "truncated": "dog", "empty": "eel", "grayscale": "cat",
                 "cmyk": "dog", "png_named_jpeg": "eel"},
       "val": {"truncated": "cat", "cmyk": "eel"}}


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # manifests go here


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
  """Photo-like 500x375 JPEGs in three classes, with every kind of bad file."""
  root = str(tmp_path_factory.mktemp("photos"))
  written = datagen.write_image_folder(root, {"train": TRAIN_COUNTS, "val": VAL_COUNTS},
                                       bad=BAD, width=500, height=375)
  return root, written


def make_cfg(folder, **fields):
  cfg = configlib.base_config()
  cfg.data.name, cfg.data.folder = "folder", folder
  cfg.data.resize_size, cfg.data.crop_size = RESIZE, CROP
  cfg.batch_size, cfg.eval_batch_size = 4, 6
  for key, value in fields.items():
    cfg.data[key] = value
  return cfg


def usable(written, split):
  """(relative path, class) of the files a loader must keep, in path order."""
  skipped = {f"bad_{kind}.JPEG" for kind in datagen.SKIPPED_KINDS}
  return sorted((rel, name) for rel, name in written[split] if os.path.basename(rel) not in skipped)


def reference_view(path):
  """PIL: RGB, central square, bilinear resize, central crop (independent of the pipeline)."""
  image = Image.open(path).convert("RGB")
  side = min(image.size)
  left, top = (image.width - side) // 2, (image.height - side) // 2
  square = image.crop((left, top, left + side, top + side)).resize((RESIZE, RESIZE), Image.BILINEAR)
  m = (RESIZE - CROP) // 2
  return np.asarray(square)[m:m + CROP, m:m + CROP]


# --- the header check alone ------------------------------------------------------------------


def test_check_image_file_verdicts(tmp_path):
  rng = np.random.default_rng(0)
  expected = {"corrupt": imagecheck.SKIPPED, "truncated": imagecheck.SKIPPED,
              "empty": imagecheck.SKIPPED, "grayscale": imagecheck.CONVERTED,
              "cmyk": imagecheck.CONVERTED, "png_named_jpeg": imagecheck.CONVERTED}
  for kind, status in expected.items():
    path = tmp_path / f"{kind}.JPEG"
    path.write_bytes(datagen.bad_image_bytes(kind, rng))
    assert imagecheck.check_image_file(str(path)).status == status, kind
  picture = datagen.natural_image(rng, 40, 30)
  good = {"ok.jpg": datagen.encode(picture) + b"\0" * 100,  # padding after the end marker is fine
          "ok.png": datagen.encode(picture, "PNG"), "ok.gif": datagen.encode(picture, "GIF"),
          "ok.bmp": datagen.encode(picture, "BMP")}
  bad = {"cut.png": datagen.encode(picture, "PNG")[:-30],
         "cut.gif": datagen.encode(picture, "GIF")[:-40],
         "palette.bmp": datagen.encode(picture, "BMP", mode="P")}
  for name, content in {**good, **bad}.items():
    (tmp_path / name).write_bytes(content)
    verdict = imagecheck.check_image_file(str(tmp_path / name))
    expected = imagecheck.OK if name in good else imagecheck.SKIPPED
    assert verdict.status == expected, (name, verdict)


# --- a folder with bad files ---------------------------------------------------------------------


def test_folder_info_counts_and_names_skipped_and_converted_files(photo_folder, caplog):
  root, written = photo_folder
  caplog.set_level(logging.INFO, logger="alexnet_jax.data")
  info = data.dataset_info(make_cfg(root))
  assert info.num_classes == 3 and info.class_names == ("cat", "dog", "eel")
  assert info.num_examples == {"train": 17, "validation": 11}
  log = "\n".join(r.getMessage() for r in caplog.records if r.name == "alexnet_jax.data")
  assert "skipped 3 of 20 image files" in log and "skipped 1 of 12 image files" in log
  assert "converted to RGB 3 of 20 image files" in log and "converted to RGB 1 of 12" in log
  for kind, reason in [("corrupt", "corrupt: not a JPEG"), ("truncated", "truncated JPEG"),
                       ("empty", "empty file"), ("grayscale", "grayscale JPEG"),
                       ("cmyk", "CMYK JPEG"), ("png_named_jpeg", "PNG data in a JPEG-named file")]:
    assert f"bad_{kind}.JPEG ({reason}" in log, kind


def test_folder_iterators_run_through_bad_files(photo_folder):
  root, written = photo_folder
  cfg = make_cfg(root)
  train = list(itertools.islice(data.train_iterator(cfg, shard_index=0, shard_count=1), 8))
  assert [b["image"].shape for b in train] == [(4, CROP, CROP, 3)] * 8  # 2 epochs of 17 // 4
  first_epoch_labels = np.concatenate([b["label"] for b in train[:4]])
  counts = np.bincount(first_epoch_labels, minlength=3)
  assert (counts <= [6, 5, 6]).all() and counts.sum() == 16  # usable files per class: 6, 5, 6

  batches = list(data.eval_iterator(cfg, shard_index=0, shard_count=1))
  assert len(batches) == 2  # ceil(11 / 6)
  mask = np.concatenate([b["mask"] for b in batches])
  images = np.concatenate([b["image"] for b in batches])[mask]
  labels = np.concatenate([b["label"] for b in batches])[mask]
  files = usable(written, "val")
  np.testing.assert_array_equal(labels, [("cat", "dog", "eel").index(c) for _, c in files])
  for image, (rel, _) in zip(images, files, strict=True):
    diff = np.abs(image.astype(int) - reference_view(os.path.join(root, rel)))
    assert diff.mean() < 1.5, rel  # TF vs PIL: JPEG decoders and resize rounding differ slightly


def test_folder_two_processes_slice_the_global_batch(photo_folder):
  cfg = make_cfg(photo_folder[0])
  whole = list(itertools.islice(data.train_iterator(cfg, shard_index=0, shard_count=1), 6))
  halves = [list(itertools.islice(data.train_iterator(cfg, shard_index=p, shard_count=2), 6))
            for p in range(2)]
  for step in range(6):
    for key in whole[step]:
      np.testing.assert_array_equal(
          np.concatenate([halves[0][step][key], halves[1][step][key]]), whole[step][key])


def test_folder_eval_over_three_processes_sees_every_file_once(photo_folder):
  cfg = make_cfg(photo_folder[0])
  single = list(data.eval_iterator(cfg, shard_index=0, shard_count=1))
  parts = [list(data.eval_iterator(cfg, shard_index=p, shard_count=3)) for p in range(3)]
  assert [len(p) for p in parts] == [2, 2, 2]
  assert data.num_eval_batches(cfg, data.dataset_info(cfg), shard_count=3) == 2
  for g in range(2):
    for key in ("image", "label", "mask"):
      np.testing.assert_array_equal(np.concatenate([parts[p][g][key] for p in range(3)]),
                                    single[g][key])


def test_manifest_is_reused_and_changed_files_are_rechecked(tmp_path, monkeypatch, caplog):
  root = str(tmp_path / "small")
  datagen.write_image_folder(root, {"train": {"a": 3, "b": 3}, "val": {"a": 1, "b": 1}})
  cfg = make_cfg(root)
  assert data.dataset_info(cfg).num_examples["train"] == 6

  checked = []
  real_check = imagecheck.check_image_file
  monkeypatch.setattr(imagecheck, "check_image_file", lambda p: checked.append(p) or real_check(p))
  monkeypatch.setattr(data, "_sources", {})  # a new run: nothing opened yet in this process
  assert data.dataset_info(cfg).num_examples["train"] == 6
  assert checked == []  # every verdict came from the manifest

  victim = os.path.join(root, "train", "b", "b_1.jpg")
  with open(victim, "r+b") as f:
    f.truncate(os.path.getsize(victim) // 2)
  monkeypatch.setattr(data, "_sources", {})
  caplog.set_level(logging.WARNING, logger="alexnet_jax.data")
  assert data.dataset_info(cfg).num_examples["train"] == 5
  assert checked == [victim]
  assert "b/b_1.jpg (truncated JPEG" in caplog.text


def test_a_file_that_fails_only_when_decoded_becomes_a_black_image_in_place(tmp_path, caplog):
  root = str(tmp_path / "sneaky")
  written = datagen.write_image_folder(root, {"train": {"a": 4, "b": 3}, "val": {"a": 2, "b": 2}},
                             bad={"train": {"undecodable": "b"}, "val": {"undecodable": "a"}})
  sneaky = os.path.join(root, "train", "b", "bad_undecodable.JPEG")
  assert imagecheck.check_image_file(sneaky).status == imagecheck.OK  # the header looks fine
  # Crops as large as the square: training decodes only the rows a crop reads, and libjpeg
  # fills damage past them without an error (see ops.decode_square_crop).
  cfg = make_cfg(root, random_crop=False, flip=False, pca_lighting=0.0, crop_size=RESIZE)
  cfg.batch_size = 2
  caplog.set_level(logging.WARNING, logger="alexnet_jax.data")
  whole = list(itertools.islice(data.train_iterator(cfg, shard_index=0, shard_count=1), 8))
  assert "bad_undecodable.JPEG although the header check passed" in caplog.text
  warnings = [r.getMessage() for r in caplog.records if "could not decode" in r.getMessage()]
  assert warnings and all("bad_undecodable.JPEG" in w for w in warnings), warnings
  halves = [list(itertools.islice(data.train_iterator(cfg, shard_index=p, shard_count=2), 8))
            for p in range(2)]
  resumed = list(itertools.islice(data.train_iterator(cfg, start_step=5, shard_index=0,
                                                      shard_count=1), 3))
  black = 0
  for step in range(8):  # 8 // 2 = 4 steps per epoch: two epochs
    for key in whole[step]:
      np.testing.assert_array_equal(
          np.concatenate([halves[0][step][key], halves[1][step][key]]), whole[step][key])
      if step >= 5:
        np.testing.assert_array_equal(resumed[step - 5][key], whole[step][key])
    black += sum(not image.any() for image in whole[step]["image"])
  assert black == 2  # 8 usable files, 4 batches of 2: the file is in both epochs

  batches = list(data.eval_iterator(cfg, shard_index=0, shard_count=1))
  mask = np.concatenate([b["mask"] for b in batches])
  images = np.concatenate([b["image"] for b in batches])[mask]
  files = sorted(rel for rel, _ in written["val"])  # eval reads files in path order
  assert [not image.any() for image in images] == [f.endswith("undecodable.JPEG") for f in files]


# --- Tiny ImageNet -------------------------------------------------------------------------------


def test_tiny_imagenet_layout(tmp_path):
  wnids = ["n01443537", "n01629819", "n01641577"]
  root = str(tmp_path / "tiny-imagenet-200")
  written = datagen.write_tiny_imagenet(root, wnids, train_per_class=4, val_count=7)
  cfg = make_cfg(root, resize_size=64, crop_size=56)
  info = data.dataset_info(cfg)
  assert info.num_classes == 3 and info.num_examples == {"train": 12, "validation": 7}
  assert info.class_names == ("thing number 0", "thing number 1", "thing number 2")
  batches = list(data.eval_iterator(cfg, shard_index=0, shard_count=1))
  mask = np.concatenate([b["mask"] for b in batches])
  labels = np.concatenate([b["label"] for b in batches])[mask]
  expected = [wnids.index(w) for _, w in sorted(written["val"])]
  np.testing.assert_array_equal(labels, expected)
  train = next(data.train_iterator(cfg, shard_index=0, shard_count=1))
  assert train["image"].shape == (4, 56, 56, 3)


# --- errors ------------------------------------------------------------------------------------


def test_folder_errors(tmp_path):
  with pytest.raises(data.DataError, match="needs --config.data.folder"):
    data.dataset_info(make_cfg(""))
  with pytest.raises(data.DataError, match="does not exist"):
    data.dataset_info(make_cfg(str(tmp_path / "nowhere")))
  root = str(tmp_path / "no_val")
  datagen.write_image_folder(root, {"train": {"a": 1}})
  with pytest.raises(data.DataError, match="no subfolder for split 'validation'.*val"):
    data.dataset_info(make_cfg(root))
  root = str(tmp_path / "empty_classes")
  os.makedirs(os.path.join(root, "train", "a"))
  os.makedirs(os.path.join(root, "val", "a"))
  with pytest.raises(data.DataError, match="holds no images"):
    data.dataset_info(make_cfg(root))
  root = str(tmp_path / "stray_class")
  datagen.write_image_folder(root, {"train": {"a": 1}, "val": {"a": 1, "zebra": 1}})
  with pytest.raises(data.DataError, match="classes that the training split lacks: zebra"):
    data.dataset_info(make_cfg(root))


def test_training_crops_decoded_from_files_equal_crops_of_the_cached_squares(tmp_path):
  # Files take the crop-before-resize path (FileSplit.train_crops); a cached split crops its
  # decoded squares: same examples, crop positions, flips and lighting, pixels within rounding.
  root = str(tmp_path / "folder")
  datagen.write_image_folder(root, {"train": {"a": 5, "b": 4}, "val": {"a": 1, "b": 1}},
                             width=90, height=70)
  batches = {}
  for cache in (False, True):
    cfg = make_cfg(root, cache=cache, pca_lighting=0.1)
    batches[cache] = list(itertools.islice(data.train_iterator(cfg, shard_index=0,
                                                               shard_count=1), 4))
  for files, cached in zip(batches[False], batches[True]):
    for key in ("label", "mask", "rgb_shift"):
      np.testing.assert_array_equal(files[key], cached[key])
    difference = np.abs(files["image"].astype(int) - cached["image"])
    assert difference.max() <= 1 and (difference > 0).mean() < 1e-2


def test_pre_resized_jpegs_are_cropped_without_a_branch_per_image_and_exactly(tmp_path,
                                                                              monkeypatch):
  # Shorter side = resize_size (as `launch.py prepare` writes them), landscape and portrait: the
  # header check's sizes let the pipeline work each window out in numpy and only decode. The
  # squares start 9 and 10 pixels in, so some crop edges fall on the JPEGs' 16-pixel blocks.
  root = str(tmp_path / "prepared")
  datagen.write_image_folder(root, {"train": {"a": 5}, "val": {"a": 1}}, width=58, height=RESIZE)
  datagen.write_image_folder(root, {"train": {"b": 4}, "val": {"b": 1}}, width=RESIZE, height=61,
                             seed=1)
  cfg = make_cfg(root, pca_lighting=0.1)
  paths, _, shapes = data._open_source(cfg).files("train")
  assert [tuple(s) for s in shapes] == [Image.open(p).size[::-1] for p in paths]
  cached = list(itertools.islice(data.train_iterator(make_cfg(root, cache=True, pca_lighting=0.1),
                                                     shard_index=0, shard_count=1), 12))

  def per_image_branch(*args):
    raise AssertionError("decoded through ops.decode_square_crop")

  monkeypatch.setattr(data.ops, "decode_square_crop", per_image_branch)
  files = list(itertools.islice(data.train_iterator(cfg, shard_index=0, shard_count=1), 12))
  for a, b in zip(files, cached, strict=True):
    assert a.keys() == b.keys()
    for key in a:  # crops pixel for pixel, flips, lighting, labels
      np.testing.assert_array_equal(a[key], b[key])
