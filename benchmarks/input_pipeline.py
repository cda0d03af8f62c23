"""The training input pipeline alone: images/s, and images per CPU-second (= per core).

    python benchmarks/input_pipeline.py --workdir /tmp/alexnet_pipeline --batches 30

Makes ImageNet-like JPEGs (500x375, smooth gradients and soft shapes with a little noise, JPEG
quality 90: tests/datagen.py's natural_image, which decodes like a photograph; white noise would
not), a copy pre-resized to 256 px on the shorter side with `launch.py prepare`, and runs the real
training pipeline (`alexnet_jax.data.train_iterator` over an image folder: read, decode, resize,
random 224 crop, flip, lighting, batches of uint8) over each, timing `--batches` batches after
two of warm-up.

Per core: images divided by the CPU time the whole process used meanwhile (every tf.data
thread and the Python consumer), which stays meaningful on a machine shared with other work;
wall-clock images/s are printed too. `--cores 1` pins the process to one core first.

Beside each figure, the decoder alone, measured in turns with it in the same process: every
file read and just the window of it that its crop reads decoded (libjpeg through
decode_and_crop_jpeg), nothing else; the pipeline's share of that rate says how much the rest
(crop positions, resize, batching, the consumer) costs, which a shared machine's noise does not
move as much as the rates themselves.

`--unique` images are generated and linked `--images` times in all, so that a long run does not
need thousands of distinct files (the OS caches them either way; decoding is the work).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

# Worker processes start fresh: forking a process that runs JAX or TensorFlow threads can
# deadlock the child.
_SPAWN = multiprocessing.get_context("spawn")

CLASSES = 8


def _make_jpeg(args: tuple[int, int, int, int, str]) -> None:
  import numpy as np

  import datagen

  index, width, height, quality, path = args
  picture = datagen.natural_image(np.random.default_rng(index), width, height)
  with open(path, "wb") as f:
    f.write(datagen.encode(picture, quality=quality))


def make_originals(directory: str, unique: int, width: int, height: int, quality: int) -> None:
  """`unique` distinct JPEGs in directory/u{i}.jpg (kept if present)."""
  os.makedirs(directory, exist_ok=True)
  jobs = [(i, width, height, quality, os.path.join(directory, f"u{i}.jpg")) for i in range(unique)]
  jobs = [j for j in jobs if not os.path.exists(j[-1])]
  with concurrent.futures.ProcessPoolExecutor(os.cpu_count(), mp_context=_SPAWN) as pool:
    list(pool.map(_make_jpeg, jobs, chunksize=8))


def link_folder(root: str, unique_dir: str, unique: int, images: int, val: int = 8) -> None:
  """root/train/c{k}/i{n}.jpg for n < images and root/val/... linking to the unique files."""
  if os.path.isdir(root):
    return
  for split, count in (("train", images), ("val", val)):
    for n in range(count):
      folder = os.path.join(root, split, f"c{n % CLASSES}")
      os.makedirs(folder, exist_ok=True)
      os.symlink(os.path.join(os.path.abspath(unique_dir), f"u{n % unique}.jpg"),
                 os.path.join(folder, f"i{n}.jpg"))


def pipeline_config(folder: str, batch: int, resize: int = 256, crop: int = 224):
  from alexnet_jax import configlib

  cfg = configlib.base_config()
  cfg.data.name, cfg.data.folder = "folder", folder
  cfg.data.resize_size, cfg.data.crop_size = resize, crop
  cfg.data.pca_lighting = 0.1
  cfg.model.num_classes = CLASSES
  cfg.batch_size = batch
  return cfg


def measure(cfg, batches: int, warmup: int = 2) -> dict:
  """Run the train pipeline; images/s and images per CPU-second over `batches` batches."""
  from alexnet_jax import data

  iterator = data.train_iterator(cfg, shard_index=0, shard_count=1)
  for _ in range(warmup):
    next(iterator)
  wall, cpu = time.perf_counter(), time.process_time()
  images = 0
  for _ in range(batches):
    images += len(next(iterator)["label"])
  wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  return {"images": images, "wall_s": wall, "cpu_s": cpu, "images_per_s": images / wall,
          "images_per_cpu_s": images / cpu, "cores_busy": cpu / wall}


def decoder_alone(folder: str, batch: int, batches: int, resize: int = 256, crop: int = 224,
                  warmup: int = 2) -> float:
  """Images per CPU-second of reading each training file and decoding the window its central
  crop reads (a crop x crop window of a pre-resized image), in a parallel map, batched."""
  import numpy as np
  from PIL import Image

  from alexnet_jax.data._tf import AUTOTUNE, tf

  paths = sorted(os.path.join(d, f) for d, _, files in os.walk(os.path.join(folder, "train"))
                 for f in files)
  windows = []
  for path in paths:
    width, height = Image.open(path).size  # the header only
    side = min(width, height)
    span = min(side, -(-crop * side // resize))  # source pixels the crop covers
    windows.append(((height - span) // 2, (width - span) // 2, span, span))
  ds = tf.data.Dataset.from_tensor_slices((paths, np.array(windows, np.int32))).repeat()
  ds = ds.map(lambda path, window: tf.io.decode_and_crop_jpeg(tf.io.read_file(path), window,
                                                              channels=3),
              num_parallel_calls=AUTOTUNE)
  iterator = ds.batch(batch).prefetch(AUTOTUNE).as_numpy_iterator()
  for _ in range(warmup):
    next(iterator)
  cpu = time.process_time()
  for _ in range(batches):
    next(iterator)
  return batch * batches / (time.process_time() - cpu)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", default="/tmp/alexnet_pipeline_bench")
  p.add_argument("--unique", type=int, default=256, help="distinct images generated")
  p.add_argument("--images", type=int, default=4096, help="training images listed (links)")
  p.add_argument("--width", type=int, default=500)
  p.add_argument("--height", type=int, default=375)
  p.add_argument("--quality", type=int, default=90)
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--batches", type=int, default=20)
  p.add_argument("--repeats", type=int, default=3, help="measurements per dataset (median)")
  p.add_argument("--cores", type=int, default=0, help="pin to this many cores (0 = all)")
  p.add_argument("--only", choices=("original", "prepared"), default=None)
  args = p.parse_args()

  if args.cores:
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:args.cores]))
  from alexnet_jax import prepare

  unique_dir = os.path.join(args.workdir, f"unique_{args.width}x{args.height}_q{args.quality}")
  make_originals(unique_dir, args.unique, args.width, args.height, args.quality)
  prepared_unique = unique_dir + "_256"
  prepare.prepare_folder(unique_dir, prepared_unique, size=256)  # only what is not there yet
  datasets = {
      "original": (os.path.join(args.workdir, f"original_{args.images}"), unique_dir),
      "prepared": (os.path.join(args.workdir, f"prepared_{args.images}"), prepared_unique),
  }
  cores = len(os.sched_getaffinity(0))
  print(f"# {args.unique} distinct {args.width}x{args.height} JPEGs (quality {args.quality}) "
        f"listed {args.images} times; batch {args.batch}, {args.batches} batches x "
        f"{args.repeats}; {cores} cores; load average {os.getloadavg()[0]:.1f}")
  for name, (root, source) in datasets.items():
    if args.only and name != args.only:
      continue
    link_folder(root, source, args.unique, args.images)
    cfg = pipeline_config(root, args.batch)
    runs, alone = [], []
    for _ in range(args.repeats):  # in turns, so that both see the machine in the same state
      runs.append(measure(cfg, args.batches))
      alone.append(decoder_alone(root, args.batch, args.batches))
    per_cpu = statistics.median(r["images_per_cpu_s"] for r in runs)
    wall = statistics.median(r["images_per_s"] for r in runs)
    busy = statistics.median(r["cores_busy"] for r in runs)
    share = statistics.median(r["images_per_cpu_s"] / a for r, a in zip(runs, alone))
    print(f"{name:9s}: {per_cpu:7.0f} images per CPU-second (per core); {wall:7.0f} images/s "
          f"wall-clock on {cores} cores ({busy:.2f} cores busy); the decoder alone "
          f"{statistics.median(alone):7.0f} per core: the pipeline at {100 * share:.0f}% of it",
          flush=True)


if __name__ == "__main__":
  main()
