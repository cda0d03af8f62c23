"""`launch.py prepare`: shorter side to a fixed size, bad files left out, ILSVRC tars unpacked."""

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

import datagen
from alexnet_jax import cli, prepare

SIZE = 48  # the shorter side here (256 in real use), small to keep the tests fast


def image_size(path):
  with Image.open(path) as image:
    return image.size, image.mode, image.format


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("source"))
  datagen.write_image_folder(root, {"train": {"cat": 3, "dog": 2}, "val": {"cat": 1, "dog": 1}},
                             width=120, height=90,
                             bad={"train": {"corrupt": "cat", "grayscale": "dog",
                                            "png_named_jpeg": "cat"}})
  small = datagen.encode(datagen.natural_image(np.random.default_rng(5), 40, 60))
  with open(os.path.join(root, "train", "dog", "small.jpg"), "wb") as f:
    f.write(small)
  with open(os.path.join(root, "train", "dog", "small_grey.jpg"), "wb") as f:
    f.write(datagen.encode(datagen.natural_image(np.random.default_rng(6), 40, 60), mode="L"))
  with open(os.path.join(root, "words.txt"), "w") as f:
    f.write("cat\tfeline\n")
  return root


def test_folder_images_get_the_shorter_side_and_keep_their_aspect(source, tmp_path):
  out = str(tmp_path / "out")
  report = prepare.prepare_folder(source, out, size=SIZE, workers=2)
  size, mode, fmt = image_size(os.path.join(out, "train", "cat", "cat_0.jpg"))
  assert size == (64, 48) and mode == "RGB" and fmt == "JPEG"  # 120x90 -> 64x48
  # Already small enough and a plain RGB JPEG: the very same bytes.
  with open(os.path.join(source, "train", "dog", "small.jpg"), "rb") as a, \
       open(os.path.join(out, "train", "dog", "small.jpg"), "rb") as b:
    assert a.read() == b.read()
  # Grey and PNG-behind-a-JPEG-name come out as RGB JPEGs (a small grey one keeps its size);
  # the corrupt file is left out.
  assert image_size(os.path.join(out, "train", "dog", "small_grey.jpg")) == ((40, 60), "RGB",
                                                                             "JPEG")
  assert image_size(os.path.join(out, "train", "dog", "bad_grayscale.JPEG"))[1:] == ("RGB", "JPEG")
  assert image_size(os.path.join(out, "train", "cat", "bad_png_named_jpeg.JPEG"))[1:] == (
      "RGB", "JPEG")
  assert not os.path.exists(os.path.join(out, "train", "cat", "bad_corrupt.JPEG"))
  assert open(os.path.join(out, "words.txt")).read() == "cat\tfeline\n"
  assert report.written == {"resized": 9, "copied": 1, "converted": 1}
  assert [os.path.basename(p) for p, _ in report.skipped] == ["bad_corrupt.JPEG"]
  saved = json.load(open(os.path.join(out, prepare.REPORT)))
  assert saved["skipped"][0][0].endswith("bad_corrupt.JPEG")

  again = prepare.prepare_folder(source, out, size=SIZE, workers=1)  # resumes: nothing to do
  assert again.images == 0 and again.kept == 12 and len(again.skipped) == 1


def test_prepared_folder_feeds_the_pipeline_unchanged_in_shape(source, tmp_path, monkeypatch):
  import itertools

  import alexnet_jax.data as data
  from alexnet_jax import configlib

  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  out = str(tmp_path / "prepared")
  prepare.prepare_folder(source, out, size=SIZE, workers=1)
  cfg = configlib.base_config()
  cfg.data.name, cfg.data.folder = "folder", out
  cfg.data.resize_size, cfg.data.crop_size = SIZE, 40
  cfg.model.num_classes, cfg.batch_size, cfg.eval_batch_size = 2, 4, 2
  info = data.dataset_info(cfg)
  assert info.num_examples == {"train": 9, "validation": 2}  # nothing skipped any more
  batch = next(itertools.islice(data.train_iterator(cfg, shard_index=0, shard_count=1), 1))
  assert batch["image"].shape == (4, 40, 40, 3)


def test_imagenet_tars_become_an_image_folder(tmp_path):
  manual = str(tmp_path / "manual")
  synsets = ["n01440764", "n01443537"]
  labels = datagen.write_ilsvrc2012_archives(manual, synsets=synsets, train_per_class=2,
                                             num_val=3, width=80, height=60)
  out = str(tmp_path / "imagenet")
  report = prepare.prepare_imagenet_tars(manual, out, size=SIZE, workers=2)
  assert report.images == 7 and not report.skipped
  for synset in synsets:
    names = sorted(os.listdir(os.path.join(out, "train", synset)))
    assert names == [f"{synset}_0.JPEG", f"{synset}_1.JPEG"]
    assert image_size(os.path.join(out, "train", synset, names[0]))[0] == (64, 48)
  for k, synset in enumerate(labels["validation"], start=1):
    assert os.path.isfile(os.path.join(out, "val", synset, datagen.IMAGENET_VAL_NAME.format(k)))


def test_command_line_and_its_errors(source, tmp_path, capsys):
  out = str(tmp_path / "cli")
  assert cli.main(["prepare", "--source", source, "--out", out, "--size", str(SIZE),
                   "--workers", "1"]) == 0
  printed = capsys.readouterr().out
  assert "11 images" in printed and "--config.data.folder=" + out in printed
  assert cli.main(["prepare", "--source", str(tmp_path / "missing"), "--out", out]) == 2
  assert "no such folder" in capsys.readouterr().err
  assert cli.main(["prepare", "--imagenet-tars", str(tmp_path), "--out", out]) == 2
  err = capsys.readouterr().err
  assert "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar not found" in err
  assert cli.main(["prepare", "--source", source, "--out", out, "--quality", "0"]) == 2
  assert "--quality 0" in capsys.readouterr().err


def test_shrink_image_rejects_what_does_not_decode():
  with pytest.raises(ValueError, match="cannot decode"):
    prepare.shrink_image(b"not an image", 256, 95)
  tall = datagen.encode(datagen.natural_image(np.random.default_rng(0), 300, 500), "PNG")
  data, action = prepare.shrink_image(tall, 256, 95)
  assert action == "resized" and Image.open(io.BytesIO(data)).size == (256, 427)
