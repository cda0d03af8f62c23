"""`launch.py prepare`: rewrite an ImageNet-format dataset with the shorter side at 256 px.

The paper's first step ("we down-sampled the images to a fixed resolution of 256 x 256") done
once, so that every epoch decodes small JPEGs: an average ILSVRC-2012 image is about 400x350
(some are several megapixels), and decoding it dominates the input pipeline's cost. The aspect
ratio is kept (the shorter side becomes `size`), so the central square and crops stay what the
pipeline would have made; it then finds nothing left to resize.

Sources:
  an image folder   every image under DIR (DIR/train/<class>/..., DIR/val/<class>/..., Tiny
                    ImageNet's layout) is written to the same relative path; other files (labels,
                    word lists) are copied
  ILSVRC-2012 tars  ILSVRC2012_img_train.tar (one <synset>.tar per class) and
                    ILSVRC2012_img_val.tar, written as OUT/train/<synset>/*.JPEG and
                    OUT/val/<synset>/*.JPEG (validation labels from tensorflow-datasets' list)

The result is an image folder: train with `--config.data.name=folder --config.data.folder=OUT`.
Images already small enough that are plain RGB JPEGs are copied byte for byte; others are
decoded (PIL), converted to RGB, resized (bilinear, antialiased) and written as JPEG. Files
that cannot be decoded are left out and listed in OUT/prepare_report.json. Existing outputs are
kept, so an interrupted run continues where it stopped.

No TensorFlow here: PIL does the work, in a process per core.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import dataclasses
import importlib.util
import io
import json
import logging
import os
import tarfile
import time
from typing import Iterable, Iterator

from PIL import Image

# Worker processes start fresh: forking a process that runs JAX or TensorFlow threads can
# deadlock the child.
_SPAWN = multiprocessing.get_context("spawn")

log = logging.getLogger("alexnet_jax.prepare")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
TRAIN_TAR, VAL_TAR = "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"
REPORT = "prepare_report.json"


class PrepareError(ValueError):
  """Bad arguments or inputs; the message says what to change."""


# --- one image --------------------------------------------------------------------------------


def target_size(width: int, height: int, size: int) -> tuple[int, int]:
  """(width, height) with the shorter side `size` and the aspect ratio kept (rounded)."""
  if width <= height:
    return size, max(1, round(height * size / width))
  return max(1, round(width * size / height)), size


def shrink_image(data: bytes, size: int, quality: int) -> tuple[bytes, str]:
  """The image `data` with its shorter side at most `size`, as JPEG bytes, and what was done:
  "copied" (already a small RGB JPEG: the same bytes), "resized" or "converted" (re-encoded).

  Raises ValueError for data that does not decode.
  """
  try:
    image = Image.open(io.BytesIO(data))
    is_rgb_jpeg = image.format == "JPEG" and image.mode == "RGB"
    if min(image.size) <= size and is_rgb_jpeg:
      return data, "copied"
    width, height = target_size(*image.size, size) if min(image.size) > size else image.size
    # JPEG's DCT scaling decodes big photos at 1/2, 1/4 or 1/8 size for free; draft() never
    # goes below the requested size, and the resize below does the rest with antialiasing.
    image.draft("RGB", (width, height))
    image = image.convert("RGB")
    action = "resized" if image.size != (width, height) else "converted"
    if image.size != (width, height):
      image = image.resize((width, height), Image.BILINEAR)
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    raise ValueError(f"cannot decode: {e}") from None
  out = io.BytesIO()
  image.save(out, "JPEG", quality=quality)
  return out.getvalue(), action


def _is_image_name(name: str) -> bool:
  return name.lower().endswith(IMAGE_EXTENSIONS)


# --- the report -------------------------------------------------------------------------------


@dataclasses.dataclass
class Report:
  written: dict[str, int] = dataclasses.field(default_factory=dict)  # action -> count
  skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (path, why)
  kept: int = 0  # outputs already present from an earlier run
  bytes_in: int = 0
  bytes_out: int = 0
  seconds: float = 0.0

  def count(self, action: str) -> None:
    self.written[action] = self.written.get(action, 0) + 1

  @property
  def images(self) -> int:
    return sum(self.written.values())

  def summary(self) -> str:
    parts = ", ".join(f"{n} {a}" for a, n in sorted(self.written.items())) or "nothing written"
    rate = self.images / self.seconds if self.seconds > 0 else 0.0
    ratio = f"; {self.bytes_in / 2**20:.1f} MB -> {self.bytes_out / 2**20:.1f} MB" if (
        self.bytes_in) else ""
    return (f"{self.images} images ({parts}), {self.kept} already present, "
            f"{len(self.skipped)} undecodable left out{ratio}; {self.seconds:.1f} s "
            f"({rate:.0f} images/s)")

  def save(self, out_dir: str) -> str:
    path = os.path.join(out_dir, REPORT)
    with open(path, "w") as f:
      json.dump({"written": self.written, "kept": self.kept, "skipped": self.skipped,
                 "bytes_in": self.bytes_in, "bytes_out": self.bytes_out,
                 "seconds": self.seconds}, f, indent=1)
    return path


# --- writing ----------------------------------------------------------------------------------


def _write_atomic(path: str, data: bytes) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.{os.getpid()}.tmp"
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, path)  # a crash never leaves a half-written image behind a final name


def _shrink_job(job: tuple[str, bytes, str, int, int]) -> tuple[str, int, int, str, str]:
  """In a worker: (name, data, out_path, size, quality) -> (name, in, out, action, error)."""
  name, data, out_path, size, quality = job
  try:
    result, action = shrink_image(data, size, quality)
  except ValueError as e:
    return name, len(data), 0, "", str(e)
  _write_atomic(out_path, result)
  return name, len(data), len(result), action, ""


def _run_jobs(jobs: Iterable[tuple[str, bytes, str, int, int]], workers: int,
              report: Report) -> None:
  """Shrink `jobs` on `workers` processes (0 or 1: in this process), filling `report`."""
  def record(result):
    name, n_in, n_out, action, error = result
    report.bytes_in += n_in
    if error:
      report.skipped.append((name, error))
    else:
      report.count(action)
      report.bytes_out += n_out

  if workers <= 1:
    for job in jobs:
      record(_shrink_job(job))
    return
  with concurrent.futures.ProcessPoolExecutor(workers, mp_context=_SPAWN) as pool:
    pending: set = set()
    for job in jobs:  # bounded queue: a tar stream is never read far ahead of the workers
      if len(pending) >= 8 * workers:
        done, pending = concurrent.futures.wait(pending,
                                                return_when=concurrent.futures.FIRST_COMPLETED)
        for future in done:
          record(future.result())
      pending.add(pool.submit(_shrink_job, job))
    for future in concurrent.futures.as_completed(pending):
      record(future.result())


def _default_workers(workers: int | None) -> int:
  return workers if workers is not None else (os.cpu_count() or 1)


def _check_size_and_quality(size: int, quality: int) -> None:
  if size < 1:
    raise PrepareError(f"--size {size}: must be >= 1 (the shorter side in pixels, e.g. 256)")
  if not 1 <= quality <= 100:
    raise PrepareError(f"--quality {quality}: must be in 1..100 (JPEG quality, e.g. 95)")


# --- sources ----------------------------------------------------------------------------------


def prepare_folder(src: str, out: str, *, size: int = 256, quality: int = 95,
                   workers: int | None = None) -> Report:
  """Every image under `src` to the same relative path under `out`; other files copied."""
  _check_size_and_quality(size, quality)
  if not os.path.isdir(src):
    raise PrepareError(f"--source {src}: no such folder (expected DIR/train/<class>/*.jpg ...)")
  if os.path.realpath(src) == os.path.realpath(out):
    raise PrepareError("--out must differ from --source: the originals are kept")
  start = time.perf_counter()
  report = Report()

  def jobs() -> Iterator[tuple[str, bytes, str, int, int]]:
    for parent, dirs, names in os.walk(src):
      dirs.sort()
      for name in sorted(names):
        path = os.path.join(parent, name)
        rel = os.path.relpath(path, src)
        target = os.path.join(out, rel)
        if os.path.exists(target):
          report.kept += 1
          continue
        with open(path, "rb") as f:
          data = f.read()
        if _is_image_name(name):
          yield rel, data, target, size, quality
        else:
          _write_atomic(target, data)  # label files, word lists: as they are

  os.makedirs(out, exist_ok=True)
  _run_jobs(jobs(), _default_workers(workers), report)
  report.seconds = time.perf_counter() - start
  report.save(out)
  return report


def imagenet_validation_synsets() -> list[str]:
  """The synset of each ILSVRC2012 validation image in file-name order, from the list that
  tensorflow-datasets ships (read as a file: importing tensorflow_datasets would load TF)."""
  spec = importlib.util.find_spec("tensorflow_datasets")
  if spec is None or not spec.submodule_search_locations:
    raise PrepareError("the validation labels come from tensorflow-datasets' list; "
                       "pip install tensorflow-datasets")
  path = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "imagenet2012",
                      "validation_labels.txt")
  with open(path) as f:
    return f.read().split()


def _tar_members(tar: tarfile.TarFile) -> Iterator[tuple[tarfile.TarInfo, bytes]]:
  for member in tar:
    if member.isfile():
      yield member, tar.extractfile(member).read()


def prepare_imagenet_tars(manual_dir: str, out: str, *, size: int = 256, quality: int = 95,
                          workers: int | None = None, splits: tuple[str, ...] = ("train", "val"),
                          ) -> Report:
  """ILSVRC2012_img_{train,val}.tar in `manual_dir` -> an image folder at `out`."""
  _check_size_and_quality(size, quality)
  names = {"train": TRAIN_TAR, "val": VAL_TAR}
  unknown = [s for s in splits if s not in names]
  if unknown:
    raise PrepareError(f"unknown split {unknown[0]!r}: choose train and/or val")
  missing = [names[s] for s in splits if not os.path.isfile(os.path.join(manual_dir, names[s]))]
  if missing:
    raise PrepareError(f"{' and '.join(missing)} not found in {manual_dir}: download them from "
                       "https://image-net.org/download-images and pass their folder")
  start = time.perf_counter()
  report = Report()
  val_synsets = imagenet_validation_synsets() if "val" in splits else []

  def target(path: str):
    if os.path.exists(path):
      report.kept += 1
      return None
    return path

  def train_jobs() -> Iterator[tuple[str, bytes, str, int, int]]:
    # Streamed ('r|'): the 138 GB tar is read once, front to back, never seeked.
    with tarfile.open(os.path.join(manual_dir, TRAIN_TAR), "r|") as outer:
      for member, data in _tar_members(outer):
        synset = os.path.splitext(os.path.basename(member.name))[0]
        with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as inner:
          for image, image_data in _tar_members(inner):
            name = os.path.basename(image.name)
            path = target(os.path.join(out, "train", synset, name))
            if path:
              yield f"{TRAIN_TAR}:{member.name}:{image.name}", image_data, path, size, quality

  def val_jobs() -> Iterator[tuple[str, bytes, str, int, int]]:
    with tarfile.open(os.path.join(manual_dir, VAL_TAR), "r|") as tar:
      for member, data in _tar_members(tar):
        name = os.path.basename(member.name)
        try:  # ILSVRC2012_val_00000001.JPEG is the first entry of the label list
          index = int(os.path.splitext(name)[0].rsplit("_", 1)[1]) - 1
          synset = val_synsets[index]
        except (ValueError, IndexError):
          report.skipped.append((f"{VAL_TAR}:{member.name}", "not an ILSVRC2012_val_N image"))
          continue
        path = target(os.path.join(out, "val", synset, name))
        if path:
          yield f"{VAL_TAR}:{member.name}", data, path, size, quality

  os.makedirs(out, exist_ok=True)
  for split in splits:
    _run_jobs(train_jobs() if split == "train" else val_jobs(), _default_workers(workers), report)
  report.seconds = time.perf_counter() - start
  report.save(out)
  return report


# --- the command ------------------------------------------------------------------------------


def add_arguments(p) -> None:
  source = p.add_mutually_exclusive_group(required=True)
  source.add_argument("--source", help="an image folder (DIR/train/<class>/*.jpg, DIR/val/...)")
  source.add_argument("--imagenet-tars", metavar="DIR",
                      help="the folder holding ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar")
  p.add_argument("--out", required=True, help="where the prepared image folder goes")
  p.add_argument("--size", type=int, default=256, help="shorter side in pixels (default 256)")
  p.add_argument("--quality", type=int, default=95, help="JPEG quality of re-encoded images "
                 "(default 95)")
  p.add_argument("--workers", type=int, default=None,
                 help="processes (default: one per CPU core)")
  p.add_argument("--splits", default="train,val",
                 help="with --imagenet-tars: which tars to convert (default train,val)")


def run(args) -> int:
  if args.source:
    report = prepare_folder(args.source, args.out, size=args.size, quality=args.quality,
                            workers=args.workers)
  else:
    splits = tuple(s for s in args.splits.split(",") if s)
    report = prepare_imagenet_tars(args.imagenet_tars, args.out, size=args.size,
                                   quality=args.quality, workers=args.workers, splits=splits)
  for name, why in report.skipped[:20]:
    log.warning("left out %s: %s", name, why)
  print(f"prepared {args.out}: {report.summary()}. Train on it with --config.data.name=folder "
        f"--config.data.folder={args.out}")
  return 0
