"""Image folders: DIR/train/<class>/*.jpg and DIR/val/<class>/*, or Tiny ImageNet's layout.

Layouts (cfg.data.folder = DIR; a split name picks the subfolder, "validation" finds val/):
  DIR/<split>/<class>/**/<image>          classes are train's subfolder names, sorted
  DIR/val/images/* + val/val_annotations.txt  (Tiny ImageNet: "<file>\t<wnid>\t..." per line)
  DIR/words.txt                           optional "<wnid>\t<names>" lines, for class names

Every file is checked once (imagecheck: header and end marker, no decoding) and the verdicts
are kept in a manifest under the cache folder ($XDG_CACHE_HOME or ~/.cache)/alexnet_jax, keyed
by file size and modification time, so a later run re-checks only new or changed files.
Skipped and converted files are counted and named in the log every time a split is opened.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os

import numpy as np

from alexnet_jax.data import imagecheck
from alexnet_jax.data.info import DataError, DatasetInfo, logger

_SPLIT_ALIASES = {"validation": ("validation", "val"), "val": ("val", "validation")}
_TINY_ANNOTATIONS = "val_annotations.txt"
_MANIFEST_VERSION = 2  # 2: a JPEG's height and width too
_NAMED_IN_LOG = 20  # files named per category in the log; the manifest lists them all


def manifest_dir() -> str:
  cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(cache, "alexnet_jax", "folder_manifests")


def split_dir(root: str, split: str) -> str:
  for name in _SPLIT_ALIASES.get(split, (split,)):
    path = os.path.join(root, name)
    if os.path.isdir(path):
      return path
  present = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
  raise DataError(f"image folder {root} has no subfolder for split {split!r} "
                  f"(looked for {' or '.join(_SPLIT_ALIASES.get(split, (split,)))}; "
                  f"it has: {', '.join(present) or 'nothing'})")


def _is_image(name: str) -> bool:
  return name.lower().endswith(imagecheck.IMAGE_EXTENSIONS)


def list_labelled_files(directory: str) -> list[tuple[str, str]]:
  """(path relative to `directory`, class name) of every image file, sorted by path."""
  annotations = os.path.join(directory, _TINY_ANNOTATIONS)
  if os.path.isfile(annotations):
    files = []
    with open(annotations) as f:
      for line in f:
        fields = line.split("\t")
        if len(fields) >= 2:
          files.append((os.path.join("images", fields[0]), fields[1].strip()))
    return sorted(files)
  files = []
  for name in sorted(os.listdir(directory)):
    class_dir = os.path.join(directory, name)
    if not os.path.isdir(class_dir):
      continue
    for parent, _, names in os.walk(class_dir):
      files += [(os.path.relpath(os.path.join(parent, n), directory), name)
                for n in names if _is_image(n)]
  return sorted(files)


def class_names_from_words(root: str, wnids: list[str]) -> tuple[str, ...]:
  """Readable names from Tiny ImageNet's words.txt (first synonym); the folder name otherwise."""
  words = {}
  path = os.path.join(root, "words.txt")
  if os.path.isfile(path):
    with open(path) as f:
      for line in f:
        wnid, _, names = line.rstrip("\n").partition("\t")
        words[wnid] = names.split(",")[0].strip()
  return tuple(words.get(w) or w for w in wnids)


# --- the manifest of checked files --------------------------------------------------------------


def _manifest_path(directory: str) -> str:
  digest = hashlib.sha1(os.path.realpath(directory).encode()).hexdigest()[:16]
  return os.path.join(manifest_dir(), f"{digest}.json")


def _load_manifest(path: str, directory: str) -> dict:
  try:
    with open(path) as f:
      manifest = json.load(f)
  except (OSError, ValueError):
    return {}
  if manifest.get("version") != _MANIFEST_VERSION or manifest.get("directory") != directory:
    return {}
  return manifest["files"]


def _save_manifest(path: str, directory: str, files: dict) -> None:
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
      json.dump({"version": _MANIFEST_VERSION, "directory": directory, "files": files}, f)
    os.replace(tmp, path)  # atomic: a concurrent reader sees the old or the new manifest
  except OSError as e:
    logger.warning("could not write the folder manifest %s (%s); files will be re-checked "
                   "next time", path, e)


def check_files(directory: str, relpaths: list[str]) -> tuple[dict[str, imagecheck.Verdict], str]:
  """The verdict for every file, reusing the manifest for files whose size and mtime match."""
  path = _manifest_path(directory)
  known = _load_manifest(path, directory)
  verdicts, stats, to_check = {}, {}, []
  for rel in relpaths:
    try:
      st = os.stat(os.path.join(directory, rel))
    except OSError as e:
      verdicts[rel] = imagecheck.Verdict(imagecheck.SKIPPED, f"missing: {e.strerror}")
      continue
    stats[rel] = [st.st_size, st.st_mtime_ns]
    entry = known.get(rel)
    if entry and entry[:2] == stats[rel]:
      verdicts[rel] = imagecheck.Verdict(*entry[2:])
    else:
      to_check.append(rel)
  if to_check:
    logger.info("checking %d image files under %s", len(to_check), directory)
    # Checks read a few hundred bytes each: I/O-bound, so threads overlap the waits.
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
      checked = pool.map(lambda r: imagecheck.check_image_file(os.path.join(directory, r)),
                         to_check, chunksize=64)
      verdicts.update(zip(to_check, checked))
  if to_check or len(known) != len(stats):
    _save_manifest(path, directory,
                   {rel: stats[rel] + list(verdicts[rel]) for rel in stats})
  return verdicts, path


def _log_verdicts(directory: str, verdicts: dict[str, imagecheck.Verdict], manifest: str) -> None:
  for status, what in ((imagecheck.SKIPPED, "skipped"), (imagecheck.CONVERTED, "converted to RGB")):
    files = sorted(rel for rel, v in verdicts.items() if v.status == status)
    if not files:
      continue
    named = "; ".join(f"{rel} ({verdicts[rel].note})" for rel in files[:_NAMED_IN_LOG])
    more = f"; and {len(files) - _NAMED_IN_LOG} more, listed in {manifest}" if len(
        files) > _NAMED_IN_LOG else ""
    logger.warning("%s: %s %d of %d image files: %s%s", directory, what, len(files),
                   len(verdicts), named, more)


# --- the source -----------------------------------------------------------------------------------


class FolderSource:
  def __init__(self, root: str, train_split: str):
    if not root:
      raise DataError("data.name='folder' needs --config.data.folder=DIR "
                      "(DIR/train/<class>/*.jpg, DIR/val/<class>/*)")
    if not os.path.isdir(root):
      raise DataError(f"image folder {root!r} does not exist")
    self.root = os.path.abspath(root)
    train_dir = split_dir(self.root, train_split)
    self.wnids = sorted(d for d in os.listdir(train_dir)
                        if os.path.isdir(os.path.join(train_dir, d)))
    if not self.wnids:
      raise DataError(f"image folder {train_dir} has no class subfolders "
                      "(expected <split>/<class>/<images>)")
    self.class_names = class_names_from_words(self.root, self.wnids)
    self._files: dict[str, tuple[list[str], np.ndarray, np.ndarray]] = {}
    self._splits = {}  # (split, options) -> split, so a cache is built once per process

  def files(self, split: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Absolute paths, labels and JPEG (height, width) ((0, 0) for other formats) of the usable
    files of `split` (skipped ones left out)."""
    if split not in self._files:
      directory = split_dir(self.root, split)
      listed = list_labelled_files(directory)
      if not listed:
        raise DataError(f"image folder {directory} holds no images "
                        f"({', '.join(imagecheck.IMAGE_EXTENSIONS)}) in class subfolders")
      label_of = {name: i for i, name in enumerate(self.wnids)}
      unknown = sorted({name for _, name in listed} - label_of.keys())
      if unknown:
        raise DataError(f"{directory} has classes that the training split lacks: "
                        f"{', '.join(unknown[:10])}")
      verdicts, manifest = check_files(directory, [rel for rel, _ in listed])
      _log_verdicts(directory, verdicts, manifest)
      usable = [(rel, name) for rel, name in listed
                if verdicts[rel].status != imagecheck.SKIPPED]
      if not usable:
        raise DataError(f"image folder {directory}: none of its {len(listed)} files is a "
                        "readable image")
      self._files[split] = ([os.path.join(directory, rel) for rel, _ in usable],
                            np.array([label_of[name] for _, name in usable], np.int32),
                            np.array([verdicts[rel][2:] for rel, _ in usable], np.int64))
    return self._files[split]

  def dataset_info(self, split_names) -> DatasetInfo:
    counts = {name: len(self.files(name)[0]) for name in split_names}
    return DatasetInfo(num_classes=len(self.wnids), class_names=self.class_names,
                       num_examples=counts)

  def split(self, name: str, options):
    from alexnet_jax.data import splits  # TensorFlow from here on

    if (name, options) not in self._splits:
      paths, labels, shapes = self.files(name)
      split = splits.FileSplit(paths, labels, options, shapes)
      self._splits[name, options] = (splits.materialize(split, f"{self.root} {name}")
                                     if options.cache else split)
    return self._splits[name, options]
