"""The train and eval iterators on the digits source (in memory, random access)."""

import itertools

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

import alexnet_jax.data as data
from alexnet_jax import configlib

RESIZE, CROP, BATCH = 12, 10, 64
NUM_TRAIN, NUM_HELD_OUT = 1437, 360


def make_cfg(**data_fields):
  cfg = configlib.base_config()
  cfg.seed = 7
  cfg.data.name = "digits"
  cfg.data.resize_size, cfg.data.crop_size = RESIZE, CROP
  cfg.batch_size, cfg.eval_batch_size = BATCH, BATCH
  for key, value in data_fields.items():
    cfg.data[key] = value
  return cfg


NO_AUGMENT = dict(random_crop=False, flip=False, pca_lighting=0.0)


def take(iterator, n):
  return list(itertools.islice(iterator, n))


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


@pytest.fixture(scope="module")
def sklearn_digits():
  """Independent reference: every 5th digit held out, pixels 0..16 -> 0..255, PIL-resized."""
  digits = load_digits()
  grey = np.round(digits.images * 255 / 16).astype(np.uint8)
  squares = np.stack([np.asarray(Image.fromarray(g).resize((RESIZE, RESIZE), Image.BILINEAR))
                      for g in grey])
  held_out = np.arange(len(grey)) % 5 == 0
  return {"train": (squares[~held_out], digits.target[~held_out]),
          "validation": (squares[held_out], digits.target[held_out])}


@pytest.fixture(scope="module")
def pipeline_squares():
  """The pipeline's own resized squares of every train example, in index order (exact)."""
  cfg = make_cfg(crop_size=RESIZE)  # centre crop of the whole square = the square
  batches = list(data.eval_iterator(cfg, "train", shard_index=0, shard_count=1))
  images = np.concatenate([b["image"][b["mask"]] for b in batches])
  assert len(images) == NUM_TRAIN
  return images


def example_indices(images, squares):
  """Index of each un-augmented image in `squares` (exact match)."""
  lookup = {square.tobytes(): i for i, square in enumerate(squares)}
  assert len(lookup) == len(squares)  # digits has no duplicate images
  return np.array([lookup[image.tobytes()] for image in images])


def test_dataset_info_and_steps():
  cfg = make_cfg()
  info = data.dataset_info(cfg)
  assert info.num_classes == 10 and info.class_names == tuple("0123456789")
  assert info.num_examples == {"train": NUM_TRAIN, "validation": NUM_HELD_OUT, "test": NUM_HELD_OUT}
  assert data.steps_per_epoch(cfg, info) == NUM_TRAIN // BATCH


def test_eval_yields_every_held_out_digit_in_order(sklearn_digits):
  cfg = make_cfg(crop_size=RESIZE)
  batches = list(data.eval_iterator(cfg, shard_index=0, shard_count=1))
  assert len(batches) == data.num_eval_batches(cfg, data.dataset_info(cfg), shard_count=1) == 6
  masks = np.concatenate([b["mask"] for b in batches])
  assert masks.sum() == NUM_HELD_OUT and masks[:NUM_HELD_OUT].all()  # padding only at the end
  images = np.concatenate([b["image"] for b in batches])
  labels = np.concatenate([b["label"] for b in batches])
  want_images, want_labels = sklearn_digits["validation"]
  np.testing.assert_array_equal(labels[:NUM_HELD_OUT], want_labels)
  assert np.abs(images[:NUM_HELD_OUT].astype(int) - want_images[..., None]).max() <= 1
  assert not images[NUM_HELD_OUT:].any() and not labels[NUM_HELD_OUT:].any()
  assert images.dtype == np.uint8 and labels.dtype == np.int32 and masks.dtype == bool
  # "test" names the same held-out part.
  test_batches = list(data.eval_iterator(cfg, "test", shard_index=0, shard_count=1))
  assert_batches_equal(test_batches, batches)


def test_train_batches_shapes_and_a_fresh_permutation_each_epoch(sklearn_digits, pipeline_squares):
  cfg = make_cfg(crop_size=RESIZE, **NO_AUGMENT)
  steps = NUM_TRAIN // BATCH
  batches = take(data.train_iterator(cfg, shard_index=0, shard_count=1), 2 * steps)
  first = batches[0]
  assert first["image"].shape == (BATCH, RESIZE, RESIZE, 3) and first["image"].dtype == np.uint8
  assert first["label"].shape == (BATCH,) and first["label"].dtype == np.int32
  assert first["mask"].dtype == bool and all(b["mask"].all() for b in batches)
  assert first["rgb_shift"].shape == (BATCH, 3) and first["rgb_shift"].dtype == np.float32
  assert not any(b["rgb_shift"].any() for b in batches)  # pca_lighting = 0
  train_labels = sklearn_digits["train"][1]
  orders = []
  for epoch in range(2):
    epoch_batches = batches[epoch * steps:(epoch + 1) * steps]
    images = np.concatenate([b["image"] for b in epoch_batches])
    indices = example_indices(images, pipeline_squares)
    assert len(set(indices)) == steps * BATCH  # no example twice within an epoch
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in epoch_batches]),
                                  train_labels[indices])
    orders.append(indices)
  assert not np.array_equal(orders[0], orders[1])
  assert set(orders[0]) != set(orders[1])  # the dropped remainder changes too


def test_same_seed_same_stream_and_resume_across_an_epoch_boundary():
  cfg = make_cfg()  # random crops, flips and PCA lighting
  steps = NUM_TRAIN // BATCH
  full = take(data.train_iterator(cfg, shard_index=0, shard_count=1), steps + 4)
  again = take(data.train_iterator(cfg, shard_index=0, shard_count=1), steps + 4)
  assert_batches_equal(full, again)
  resumed = take(data.train_iterator(cfg, start_step=steps - 2, shard_index=0,
                                     shard_count=1), 6)
  assert_batches_equal(resumed, full[steps - 2:])
  cfg.seed = 8
  other = take(data.train_iterator(cfg, shard_index=0, shard_count=1), 1)[0]
  assert not np.array_equal(other["label"], full[0]["label"])


def test_augmentation_is_a_window_of_the_square_and_changes_with_the_epoch(pipeline_squares):
  """Order does not depend on augmentation, so an un-augmented run names each example."""
  steps = NUM_TRAIN // BATCH
  plain = take(data.train_iterator(make_cfg(crop_size=RESIZE, **NO_AUGMENT), shard_index=0,
                                   shard_count=1), 2 * steps)
  augmented = take(data.train_iterator(make_cfg(flip=True), shard_index=0, shard_count=1),
                   2 * steps)
  shifts, crops, flips = {}, {}, 0
  for step, (p, a) in enumerate(zip(plain, augmented)):
    np.testing.assert_array_equal(p["label"], a["label"])
    # Crops come unmirrored, each with its flip: the train step mirrors on the device.
    for index, image, flip, shift in zip(example_indices(p["image"], pipeline_squares),
                                         a["image"], a["flip"], a["rgb_shift"]):
      square = pipeline_squares[index]
      windows = {(y, x): square[y:y + CROP, x:x + CROP] for y in range(3) for x in range(3)}
      assert any(np.array_equal(w, image) for w in windows.values()), (
          f"step {step}: not a crop of example {index}")
      flips += flip
      epoch = step // steps
      shifts.setdefault(index, {})[epoch] = shift
      crops.setdefault(index, {})[epoch] = image[:, ::-1] if flip else image
  assert 0.4 < flips / (2 * steps * BATCH) < 0.6
  both = [i for i in shifts if len(shifts[i]) == 2]
  assert len(both) > 1000
  assert all(not np.allclose(shifts[i][0], shifts[i][1]) for i in both)
  same_crop = sum(np.array_equal(crops[i][0], crops[i][1]) for i in both)
  assert same_crop < 0.3 * len(both)  # 18 crop/flip choices: ~6 % repeat by chance


@pytest.mark.parametrize("cache", [False, True])
def test_two_processes_slice_the_one_process_global_batch(cache):
  cfg = make_cfg(cache=cache)
  steps = NUM_TRAIN // BATCH
  whole = take(data.train_iterator(cfg, shard_index=0, shard_count=1), steps + 2)
  halves = [take(data.train_iterator(cfg, shard_index=p, shard_count=2), steps + 2)
            for p in range(2)]
  for step in range(steps + 2):
    for key in whole[step]:
      assert halves[0][step][key].shape[0] == BATCH // 2
      np.testing.assert_array_equal(
          np.concatenate([halves[0][step][key], halves[1][step][key]]), whole[step][key])


def test_cache_gives_the_same_batches():
  assert_batches_equal(take(data.train_iterator(make_cfg(cache=True), shard_index=0,
                                                shard_count=1), 3),
                       take(data.train_iterator(make_cfg(cache=False), shard_index=0,
                                                shard_count=1), 3))


def test_eval_over_seven_processes_sees_every_example_once():
  """360 examples, global batch 49 (7 per process): divides neither."""
  cfg = make_cfg()
  info = data.dataset_info(cfg)
  expected_batches = data.num_eval_batches(cfg, info, batch_size=49, shard_count=7)
  assert expected_batches == 8
  single = list(data.eval_iterator(cfg, batch_size=49, shard_index=0, shard_count=1))
  per_process = [list(data.eval_iterator(cfg, batch_size=49, shard_index=p, shard_count=7))
                 for p in range(7)]
  assert [len(batches) for batches in per_process] == [expected_batches] * 7
  assert sum(b["mask"].sum() for batches in per_process for b in batches) == NUM_HELD_OUT
  for g in range(expected_batches):  # process slices of global batch g, in process order
    for key in ("image", "label", "mask"):
      np.testing.assert_array_equal(
          np.concatenate([per_process[p][g][key] for p in range(7)]), single[g][key])


def test_ten_crop_views_against_numpy():
  square_batches = list(data.eval_iterator(make_cfg(crop_size=RESIZE), shard_index=0,
                                           shard_count=1))
  view_batches = list(data.eval_iterator(make_cfg(), views="10crop", shard_index=0,
                                         shard_count=1))
  assert view_batches[0]["image"].shape == (BATCH, 10, CROP, CROP, 3)
  for squares, views in zip(square_batches, view_batches):
    np.testing.assert_array_equal(squares["label"], views["label"])
    np.testing.assert_array_equal(squares["mask"], views["mask"])
    for square, view in zip(squares["image"][squares["mask"]], views["image"][views["mask"]]):
      m = RESIZE - CROP
      crops = [square[m // 2:m // 2 + CROP, m // 2:m // 2 + CROP], square[:CROP, :CROP],
               square[:CROP, m:], square[m:, :CROP], square[m:, m:]]
      np.testing.assert_array_equal(view, np.stack(crops + [c[:, ::-1] for c in crops]))


def test_errors_are_data_errors_raised_up_front():
  with pytest.raises(data.DataError, match="no split 'bogus'"):
    data.dataset_info(make_cfg(eval_split="bogus"))
  with pytest.raises(data.DataError, match="must be a positive multiple of 3"):
    data.train_iterator(make_cfg(), shard_index=0, shard_count=3)  # 64 / 3
  with pytest.raises(data.DataError, match="views"):
    data.eval_iterator(make_cfg(), views="5crop", shard_index=0, shard_count=1)
  with pytest.raises(data.DataError, match="fewer than one batch"):
    cfg = make_cfg()
    cfg.batch_size = 2048
    data.train_iterator(cfg, shard_index=0, shard_count=1)
