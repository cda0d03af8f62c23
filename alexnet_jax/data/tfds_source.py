"""tensorflow-datasets sources: imagenet2012 (manual download, prepared on first use) and any
prepared image-classification dataset (imagenette, cifar10, cats_vs_dogs, ...).

TFRecord files are read front to back, so each process reads its own part of the split
(`tfds.even_splits`) and shuffles it with a seed made from (seed, epoch). Unlike the
random-access sources, a global batch here therefore depends on the number of processes;
a single process and a resumed run still see exactly the same batches. Augmentation is keyed by
a fingerprint of each record's tfds id, so it does not depend on the process count.
"""

from __future__ import annotations

import os

from alexnet_jax.data import ops, order
from alexnet_jax.data._tf import tf
from alexnet_jax.data.info import DataError, DatasetInfo, logger

import tensorflow_datasets as tfds  # noqa: E402  (after _tf: GPUs are hidden first)

IMAGENET_FILES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")


def _data_dir_root(data_dir: str) -> str:
  return data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def _prepare_imagenet(builder, data_dir: str, manual_dir: str) -> None:
  """Build imagenet2012's TFRecords from the two ILSVRC2012 tars, checking for them first."""
  manual_dir = manual_dir or os.path.join(_data_dir_root(data_dir), "downloads", "manual")
  missing = [f for f in IMAGENET_FILES if not os.path.isfile(os.path.join(manual_dir, f))]
  if missing:
    raise DataError(
        f"imagenet2012 is not prepared in {_data_dir_root(data_dir)} and {' and '.join(missing)} "
        f"{'is' if len(missing) == 1 else 'are'} missing from {manual_dir}: download "
        f"{' and '.join(IMAGENET_FILES)} from https://image-net.org/download-images (free "
        "registration) into that folder, or point --config.data.manual_dir at the folder that "
        "holds them; they are prepared on first use")
  logger.info("preparing imagenet2012 from %s into %s (once; hours for the full dataset)",
              manual_dir, _data_dir_root(data_dir))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir, try_download_gcs=False))


def open_builder(name: str, data_dir: str, manual_dir: str):
  """The prepared tfds builder for `name`, or a DataError saying how to get it. Never downloads."""
  try:
    builder = tfds.builder(name, data_dir=data_dir or None)
  except tfds.core.registered.DatasetNotFoundError:
    raise DataError(
        f"unknown dataset {name!r}: not digits, folder, imagenet2012 nor a tensorflow-datasets "
        "name (see https://www.tensorflow.org/datasets/catalog/overview, or "
        "python -c 'import tensorflow_datasets as tfds; print(tfds.list_builders())')") from None
  if not builder.is_prepared():
    if builder.name == "imagenet2012":
      _prepare_imagenet(builder, data_dir, manual_dir)
    else:
      where = f" --data_dir={data_dir}" if data_dir else ""
      raise DataError(
          f"tensorflow-datasets {name!r} is not prepared in {_data_dir_root(data_dir)}; "
          f"prepare it once on a machine with network access: tfds build {name}{where}")
  keys = builder.info.supervised_keys
  if not keys or not isinstance(builder.info.features[keys[0]], tfds.features.Image):
    raise DataError(f"tensorflow-datasets {name!r} is not an (image, label) classification dataset")
  return builder


class TfdsSource:
  def __init__(self, name: str, data_dir: str, manual_dir: str):
    self.builder = open_builder(name, data_dir, manual_dir)
    self.image_key, self.label_key = self.builder.info.supervised_keys
    self._splits: dict = {}

  def num_examples(self, split: str) -> int:
    try:
      return self.builder.info.splits[split].num_examples
    except (KeyError, ValueError, AssertionError) as e:
      available = ", ".join(self.builder.info.splits)
      raise DataError(f"{self.builder.name} has no split {split!r} ({e}); its splits: {available}; "
                      "tfds slices like 'train[:90%]' work too") from None

  def dataset_info(self, split_names) -> DatasetInfo:
    labels = self.builder.info.features[self.label_key]
    counts = {s: self.num_examples(s) for s in (*self.builder.info.splits, *split_names)}
    return DatasetInfo(num_classes=labels.num_classes, class_names=tuple(labels.names),
                       num_examples=counts)

  def split(self, name: str, options) -> "TfdsSplit":
    key = (name, options)
    if key not in self._splits:
      self._splits[key] = TfdsSplit(self, name, self.num_examples(name), options)
    return self._splits[key]


class TfdsSplit:
  """One split: per-process parts, read sequentially, shuffled per epoch by (seed, epoch)."""

  def __init__(self, source: TfdsSource, split: str, num_examples: int, options):
    self.source, self.split, self.num_examples, self.options = source, split, num_examples, options
    self._cached: dict[tuple[int, int], tf.data.Dataset] = {}

  def _part(self, shard_index: int, shard_count: int):
    if shard_count == 1:
      return self.split
    return tfds.even_splits(self.split, n=shard_count)[shard_index]

  def _records(self, part, shuffle_seed: int | None) -> tf.data.Dataset:
    """(example_id, encoded image, label); example_id fingerprints the record's tfds id."""
    src = self.source
    read_config = tfds.ReadConfig(add_tfds_id=True, shuffle_seed=shuffle_seed, try_autocache=False)
    ds = src.builder.as_dataset(
        split=part, shuffle_files=shuffle_seed is not None, read_config=read_config,
        decoders={src.image_key: tfds.decode.SkipDecoding()})  # we decode only the central square

    def unpack(example):
      example_id = tf.strings.to_hash_bucket_fast(example["tfds_id"], 2**63 - 1)
      return example_id, example[src.image_key], tf.cast(example[src.label_key], tf.int32)

    return ds.map(unpack)

  def _decode(self, ds: tf.data.Dataset) -> tf.data.Dataset:
    size = self.options.resize_size

    def decode(example_id, image_bytes, label):
      return example_id, ops.resize_square(ops.decode_center_square(image_bytes), size), label

    return ds.map(decode, num_parallel_calls=self.options.parallel, deterministic=True)

  def _squares(self, shard_index, shard_count) -> tf.data.Dataset:
    """This process's part as squares, in file order; with cfg.data.cache decoded once and kept."""
    part = self._part(shard_index, shard_count)
    if not self.options.cache:
      return self._decode(self._records(part, None))
    key = (shard_index, shard_count)
    if key not in self._cached:
      cached = self._decode(self._records(part, None)).cache()
      # One full pass fills the cache; later partial reads (take) then never refill it.
      count = int(cached.reduce(tf.constant(0, tf.int64), lambda n, *_: n + 1))
      logger.info("%s %s: cached %d examples in memory", self.source.builder.name, part, count)
      self._cached[key] = cached
    return self._cached[key]

  def train_examples(self, *, seed, epoch, first_batch, global_batch, shard_index,
                     shard_count) -> tf.data.Dataset:
    local = order.local_batch_size(global_batch, shard_count)
    steps = self.num_examples // global_batch  # each part holds at least steps * local examples
    shuffle_seed = order.epoch_seed(seed, epoch)
    if self.options.cache:
      ds = self._squares(shard_index, shard_count)
    else:  # shuffle and skip encoded records: a resumed run decodes nothing it skips
      ds = self._records(self._part(shard_index, shard_count), shuffle_seed)
    ds = ds.shuffle(self.options.shuffle_buffer, seed=shuffle_seed)
    ds = ds.take(steps * local).skip(first_batch * local)
    return ds if self.options.cache else self._decode(ds)

  def eval_examples(self, *, global_batch, shard_index, shard_count) -> tf.data.Dataset:
    return self._squares(shard_index, shard_count)
