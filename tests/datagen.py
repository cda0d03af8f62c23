"""Makers of test data: natural-looking images, image folders with bad files, ILSVRC2012 archives.

Everything is generated on the spot from a seed (no downloads), small enough for a 2-core CPU,
and returns a description of what it wrote so tests can compute their expectations.
"""

from __future__ import annotations

import io
import os
import tarfile

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

IMAGENET_VAL_NAME = "ILSVRC2012_val_{:08d}.JPEG"


# --- single images ---------------------------------------------------------------------------


def natural_image(rng: np.random.Generator, width: int = 500, height: int = 375) -> np.ndarray:
  """A uint8 (height, width, 3) picture with a smooth gradient, soft shapes and a little noise.

  Smooth content makes JPEG behave as on photographs, and keeps resizing comparisons between
  libraries (TensorFlow vs PIL) meaningful.
  """
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  angle = rng.uniform(0, 2 * np.pi)
  ramp = (np.cos(angle) * xx / width + np.sin(angle) * yy / height + 1) / 2  # ~[0, 1]
  start, end = rng.uniform(30, 225, size=(2, 3))
  background = start + ramp[..., None] * (end - start)
  image = Image.fromarray(background.clip(0, 255).astype(np.uint8))
  draw = ImageDraw.Draw(image)
  for _ in range(rng.integers(3, 7)):
    x0, x1 = np.sort(rng.uniform(0, width, size=2))
    y0, y1 = np.sort(rng.uniform(0, height, size=2))
    colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
    if rng.random() < 0.5:
      draw.ellipse([x0, y0, x1, y1], fill=colour)
    else:
      draw.rectangle([x0, y0, x1, y1], fill=colour)
  image = image.filter(ImageFilter.GaussianBlur(radius=2))
  noisy = np.asarray(image, np.float32) + rng.normal(0, 3, size=(height, width, 3))
  return noisy.clip(0, 255).astype(np.uint8)


def encode(array: np.ndarray, fmt: str = "JPEG", mode: str | None = None, **save_kwargs) -> bytes:
  """Encode a uint8 RGB array with PIL, optionally converted to `mode` first ('L', 'CMYK', ...)."""
  image = Image.fromarray(array)
  if mode is not None:
    image = image.convert(mode)
  if fmt == "JPEG":
    save_kwargs.setdefault("quality", 90)
  buffer = io.BytesIO()
  image.save(buffer, fmt, **save_kwargs)
  return buffer.getvalue()


def _write(path: str, data: bytes) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(data)
  return path


# --- bad files ---------------------------------------------------------------------------------

# What each kind of bad file is, and what a loader must do with it. "undecodable" passes any
# cheap header check and fails only when decoded.
SKIPPED_KINDS = ("corrupt", "truncated", "empty")
CONVERTED_KINDS = ("grayscale", "cmyk", "png_named_jpeg")
UNDECODABLE_KINDS = ("undecodable",)


def bad_image_bytes(kind: str, rng: np.random.Generator, width: int = 64,
                    height: int = 48) -> bytes:
  """Bytes of one problem file. Skipped kinds cannot be decoded; converted kinds decode to RGB."""
  picture = natural_image(rng, width, height)
  if kind == "corrupt":  # random bytes, no image header
    return rng.integers(0, 256, size=2000, dtype=np.uint8).tobytes()
  if kind == "truncated":  # a JPEG cut in the middle of its compressed data
    data = encode(picture)
    return data[: len(data) // 2]
  if kind == "empty":
    return b""
  if kind == "grayscale":
    return encode(picture, mode="L")
  if kind == "cmyk":
    return encode(picture, mode="CMYK")
  if kind == "png_named_jpeg":  # PNG content behind a .JPEG name (one such file is in ILSVRC2012)
    return encode(picture, "PNG")
  if kind == "undecodable":  # well-formed header and end marker; an invalid marker mid-scan
    data = encode(picture)
    middle = data.index(b"\xff\xda") + (len(data) - data.index(b"\xff\xda")) // 2
    return data[:middle] + b"\xff\x4a" + data[middle:]
  raise ValueError(f"unknown bad file kind {kind!r}")


# --- image folders ---------------------------------------------------------------------------


def write_image_folder(
    root: str,
    counts: dict[str, dict[str, int]],
    *,
    seed: int = 0,
    width: int = 64,
    height: int = 48,
    bad: dict[str, dict[str, str]] | None = None,
) -> dict[str, list[tuple[str, str]]]:
  """Write `root/<split>/<class>/<class>_<i>.jpg` for `counts[split][class]` good JPEGs each.

  `bad[split][kind] = class` adds one problem file of that kind (see bad_image_bytes) to that
  class, named `bad_<kind>.JPEG`. Returns, per split, the (relative path, class) of every file.
  """
  rng = np.random.default_rng(seed)
  written: dict[str, list[tuple[str, str]]] = {}
  for split, per_class in counts.items():
    files = written.setdefault(split, [])
    for name, count in per_class.items():
      for i in range(count):
        rel = os.path.join(split, name, f"{name}_{i}.jpg")
        _write(os.path.join(root, rel), encode(natural_image(rng, width, height)))
        files.append((rel, name))
  for split, kinds in (bad or {}).items():
    for kind, name in kinds.items():
      rel = os.path.join(split, name, f"bad_{kind}.JPEG")
      _write(os.path.join(root, rel), bad_image_bytes(kind, rng, width, height))
      written.setdefault(split, []).append((rel, name))
  return written


def write_tiny_imagenet(
    root: str, wnids: list[str], *, train_per_class: int, val_count: int, seed: int = 0,
    size: int = 64,
) -> dict[str, list[tuple[str, str]]]:
  """Tiny ImageNet's layout: train/<wnid>/images/*.JPEG, val/images/*.JPEG + val_annotations.txt.

  Also writes words.txt (wnid -> names) and wnids.txt as the real download has them. Validation
  images are labelled round-robin over `wnids`. Returns the (relative path, wnid) per split.
  """
  rng = np.random.default_rng(seed)
  written = {"train": [], "val": []}
  for wnid in wnids:
    for i in range(train_per_class):
      rel = os.path.join("train", wnid, "images", f"{wnid}_{i}.JPEG")
      _write(os.path.join(root, rel), encode(natural_image(rng, size, size)))
      written["train"].append((rel, wnid))
    # The real archive has a bounding-box file next to images/: not an image, not a class.
    _write(os.path.join(root, "train", wnid, f"{wnid}_boxes.txt"), b"")
  lines = []
  for i in range(val_count):
    wnid = wnids[i % len(wnids)]
    name = f"val_{i}.JPEG"
    _write(os.path.join(root, "val", "images", name), encode(natural_image(rng, size, size)))
    lines.append(f"{name}\t{wnid}\t0\t0\t{size - 1}\t{size - 1}\n")
    written["val"].append((os.path.join("val", "images", name), wnid))
  _write(os.path.join(root, "val", "val_annotations.txt"), "".join(lines).encode())
  words = "".join(f"{w}\tthing number {k}, a test class\n" for k, w in enumerate(wnids))
  _write(os.path.join(root, "words.txt"), ("n99999999\tunused entry\n" + words).encode())
  _write(os.path.join(root, "wnids.txt"), "".join(w + "\n" for w in wnids).encode())
  return written


# --- ILSVRC2012 archives -------------------------------------------------------------------


def _add_to_tar(tar: tarfile.TarFile, name: str, data: bytes) -> None:
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def tfds_imagenet_validation_labels() -> list[str]:
  """The synset of every ILSVRC2012 validation image, in file-name order, as tfds ships it."""
  import tensorflow_datasets as tfds  # only the archive tests need it

  path = tfds.core.tfds_path("datasets/imagenet2012/validation_labels.txt")
  return path.read_text().split()


def write_ilsvrc2012_archives(
    manual_dir: str, *, synsets: list[str], train_per_class: int, num_val: int, seed: int = 0,
    width: int = 80, height: int = 60,
) -> dict[str, list[str]]:
  """Write ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in the official layout.

  The train tar holds one `<synset>.tar` per class of `<synset>_<i>.JPEG`; the val tar holds
  ILSVRC2012_val_00000001.JPEG... . tfds labels validation images by sorting their names and
  zipping them with its validation label list, so image k gets that list's k-th synset.
  Returns {"train": synset per train image, "validation": synset per validation image}.
  """
  rng = np.random.default_rng(seed)
  os.makedirs(manual_dir, exist_ok=True)
  train_labels = []
  with tarfile.open(os.path.join(manual_dir, "ILSVRC2012_img_train.tar"), "w") as outer:
    for synset in synsets:
      inner_bytes = io.BytesIO()
      with tarfile.open(fileobj=inner_bytes, mode="w") as inner:
        for i in range(train_per_class):
          _add_to_tar(inner, f"{synset}_{i}.JPEG", encode(natural_image(rng, width, height)))
          train_labels.append(synset)
      _add_to_tar(outer, f"{synset}.tar", inner_bytes.getvalue())
  with tarfile.open(os.path.join(manual_dir, "ILSVRC2012_img_val.tar"), "w") as tar:
    for k in range(1, num_val + 1):
      _add_to_tar(tar, IMAGENET_VAL_NAME.format(k), encode(natural_image(rng, width, height)))
  return {"train": train_labels, "validation": tfds_imagenet_validation_labels()[:num_val]}
