"""Figures from a trained run: training curves at every evaluation, conv1 kernels and their
colour share, fc7 features, nearest neighbours, and the augmentation sheet."""

import csv
import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image
from sklearn.datasets import load_digits

import alexnet_jax.data as data
from alexnet_jax import cli, preprocess
from alexnet_jax.data import order
from alexnet_jax.experiments import ablate, augment, curves, kernels, neighbours, runs
from runs import config_with  # tests/runs.py


def png_size(path):
  with Image.open(path) as image:
    image.verify()
  with Image.open(path) as image:
    return image.size


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A two-tower `small` run of half an epoch with two evaluations; records every curve drawing
  the training loop asks for (and how many evaluations metrics.jsonl held at that moment).

  It is laid out as the ablation's `paper` condition for seed 0 (root/paper/seed0, norm lrn,
  overlapping pooling), so the ablation test reuses it instead of training it again.
  """
  root = str(tmp_path_factory.mktemp("ablate"))
  workdir = os.path.join(root, "paper", "seed0")
  cfg = config_with(**{"model.tower_impl": "vmap", "num_epochs": 0.5, "eval_every_epochs": 0.25,
                       "optim.learning_rate": 0.05, "model.norm": "lrn", "model.pool": "overlap"})
  drawn = []
  original = curves.write_training_curves

  def spy(directory, path=None):
    result = original(directory, path)
    drawn.append((directory, len(runs.read_split(directory, "eval")), os.path.getsize(result[0])))
    return result

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(curves, "write_training_curves", spy)
    final = runs.train_run(cfg, workdir)
  return {"root": root, "workdir": workdir, "cfg": cfg, "final": final, "drawn": drawn}


def restore_params_with_orbax(workdir):
  """The checkpoint's parameters read straight through Orbax, without alexnet_jax's loader."""
  step = max(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
  state = ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step),
                                                          "state"))
  return step, state["params"]


# --- training curves ----------------------------------------------------------------------


@pytest.mark.long(seconds=30)
def test_curves_are_drawn_at_every_evaluation_from_metrics(trained):
  workdir = trained["workdir"]
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  evals = [r for r in records if r["split"] == "eval"]
  assert len(evals) == 2  # half an epoch, an evaluation every quarter
  # The hook ran once per evaluation, each time after that evaluation's record was written.
  assert [(d, n) for d, n, _ in trained["drawn"]] == [(workdir, 1), (workdir, 2)]
  assert all(size > 0 for _, _, size in trained["drawn"])
  width, height = png_size(os.path.join(workdir, curves.FILENAME))
  assert width > 400 and height > 150
  # What is drawn is metrics.jsonl's numbers.
  drawn = curves.curve_data(workdir)
  train_records = [r for r in records if r["split"] == "train"]
  assert drawn["train"]["loss"] == ([r["step"] for r in train_records],
                                    [r["loss"] for r in train_records])
  assert drawn["eval"]["top5_err"] == ([r["step"] for r in evals], [r["top5_err"] for r in evals])
  assert drawn["eval"]["top1_err"][1][-1] == pytest.approx(trained["final"]["top1_err"])


def test_curves_of_a_resumed_run_keep_the_later_record_of_a_step():
  records = [{"step": 10, "split": "train", "loss": 3.0},
             {"step": 20, "split": "train", "loss": 2.0},
             {"step": 20, "split": "eval", "loss": 2.5},
             {"step": 20, "split": "train", "loss": 1.5},  # resumed from step 10: logged again
             {"step": 30, "split": "train", "loss": 1.0}]
  assert [r["loss"] for r in runs.split_records(records, "train")] == [3.0, 1.5, 1.0]
  assert [r["loss"] for r in runs.split_records(records, "eval")] == [2.5]


def test_curves_command_redraws_and_refuses_an_empty_directory(trained, tmp_path, capsys):
  out = str(tmp_path / "again.png")
  assert cli.main(["curves", "--workdir", trained["workdir"], "--out", out]) == 0
  assert png_size(out)[0] > 400
  (tmp_path / "empty").mkdir()
  assert cli.main(["curves", "--workdir", str(tmp_path / "empty")]) == 2
  assert "no metrics" in capsys.readouterr().err


# --- kernels ------------------------------------------------------------------------------


def test_colour_share_definition():
  grey = np.repeat(np.random.default_rng(0).normal(size=(5, 5, 1)), 3, axis=-1)
  opponent = np.stack([grey[..., 0], -grey[..., 0], np.zeros((5, 5))], axis=-1)
  red_only = np.stack([grey[..., 0], np.zeros((5, 5)), np.zeros((5, 5))], axis=-1)
  np.testing.assert_allclose(kernels.colour_share(np.stack([grey, opponent, red_only])),
                             [0.0, 1.0, 2 / 3], atol=1e-12)
  random = np.random.default_rng(1).normal(size=(4000, 5, 5, 3))
  assert kernels.colour_share(random).mean() == pytest.approx(kernels.RANDOM_SHARE, abs=0.005)


def test_kernels_of_a_checkpoint_per_tower(trained, tmp_path, capsys):
  out = str(tmp_path / "kernels.png")
  assert cli.main(["kernels", "--workdir", trained["workdir"], "--out", out, "--columns", "4"]) == 0
  printed = capsys.readouterr().out
  numbers = json.load(open(tmp_path / "kernels.json"))
  step, params = restore_params_with_orbax(trained["workdir"])
  kernel = np.asarray(params["conv1"]["kernel"])  # (towers, kh, kw, 3, out)
  assert kernel.shape == (2, 5, 5, 3, 4)
  assert numbers["step"] == step and numbers["model"] == "small"
  assert [t["tower"] for t in numbers["towers"]] == [0, 1]
  for t, tower in enumerate(numbers["towers"]):
    expected = []
    for i in range(kernel.shape[-1]):
      k = kernel[t, ..., i].astype(np.float64)
      expected.append(((k - k.mean(axis=-1, keepdims=True)) ** 2).sum() / (k ** 2).sum())
    np.testing.assert_allclose(tower["colour_share"], expected, rtol=1e-6)
    assert tower["colour_share_mean"] == pytest.approx(np.mean(expected), rel=1e-6)
    assert f"tower {t + 1}: colour share {np.mean(expected):.4f}" in printed
  width, height = png_size(out)
  assert height > 100 and width > 100
  # The image is the kernels, each scaled on its own around mid-grey.
  shown = kernels.for_display(kernels.conv1_by_tower(params)[1])
  k = kernel[1, ..., 3]
  np.testing.assert_allclose(shown[3], 0.5 + 0.5 * k / np.abs(k).max(), rtol=1e-6)


def test_kernels_refuse_a_directory_without_checkpoints(tmp_path, capsys):
  assert cli.main(["kernels", "--workdir", str(tmp_path)]) == 2
  err = capsys.readouterr().err.strip()
  assert "not a training work directory" in err and len(err.splitlines()) == 1


# --- features and nearest neighbours -------------------------------------------------------


@pytest.fixture(scope="module")
def loaded(trained):
  return runs.load_trained(trained["workdir"])


@pytest.fixture(scope="module")
def features(trained, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("feats") / "val.npy")
  assert cli.main(["features", "--workdir", trained["workdir"], "--split", "validation",
                   "--out", out, "--batch-size", "100"]) == 0
  return np.load(out), np.load(neighbours.labels_path(out))


def test_features_are_the_classifiers_input_in_split_order(loaded, features):
  feats, labels = features
  assert feats.shape == (360, 64) and feats.dtype == np.float32  # fc7: 2 towers x 32 units
  np.testing.assert_array_equal(labels, load_digits().target[::5])  # every 5th digit held out
  # fc8(features) must give the model's own logits on the same centre crops.
  batch = next(data.eval_iterator(loaded.cfg, "validation", batch_size=64, shard_index=0,
                                  shard_count=1))
  images = preprocess.normalize(batch["image"], None, loaded.cfg.data.mean, loaded.cfg.data.std)
  logits = jax.jit(lambda p, s, x: loaded.fns.apply(p, s, x, train=False)[0])(
      loaded.params, loaded.model_state, images)
  fc8 = loaded.params["fc8"]
  np.testing.assert_allclose(feats[:64] @ np.asarray(fc8["kernel"]) + np.asarray(fc8["bias"]),
                             np.asarray(logits), rtol=1e-4, atol=1e-4)


def test_nearest_neighbours_equal_brute_force_search(loaded, features, tmp_path, capsys):
  train_feats, train_labels = neighbours.write_features(loaded, "train", str(tmp_path / "t.npy"),
                                                        batch_size=100)
  val_feats, val_labels = features
  # A batch of 100 makes the streaming search merge 15 batches.
  result = neighbours.nearest(loaded, query_split="validation", db_split="train", queries=5, k=4,
                              batch_size=100)
  # Queries: the first example of each new label in split order.
  firsts = [int(np.nonzero(val_labels == label)[0][0]) for label in dict.fromkeys(val_labels)]
  assert result["query_positions"] == sorted(firsts)[:5] and len(set(result["query_labels"])) == 5
  assert result["db_size"] == 1437
  for q, position in enumerate(result["query_positions"]):
    d = np.sqrt(((train_feats.astype(np.float64) - val_feats[position]) ** 2).sum(1))
    nearest4 = np.argsort(d, kind="stable")[:4]
    assert result["neighbour_positions"][q] == nearest4.tolist()
    np.testing.assert_allclose(result["distances"][q], d[nearest4], rtol=1e-4, atol=1e-5)
    assert result["neighbour_labels"][q] == train_labels[nearest4].tolist()
    assert result["query_labels"][q] == val_labels[position]
  same = np.mean([[l == result["query_labels"][q] for l in result["neighbour_labels"][q]]
                  for q in range(5)])
  assert result["same_label_fraction"] == pytest.approx(same)
  # The grid shows those very images: the neighbours' centre crops from the train split.
  train_images = np.concatenate([b["image"][b["mask"]] for b in data.eval_iterator(
      loaded.cfg, "train", batch_size=500, shard_index=0, shard_count=1)])
  np.testing.assert_array_equal(result["neighbour_images"][2],
                                train_images[result["neighbour_positions"][2]])
  # The command writes the same numbers (and the picture).
  out = str(tmp_path / "nn.png")
  assert cli.main(["neighbours", "--workdir", loaded.workdir, "--out", out, "--queries", "5",
                   "--k", "4", "--batch-size", "100"]) == 0
  numbers = json.load(open(tmp_path / "nn.json"))
  assert numbers["neighbour_positions"] == result["neighbour_positions"]
  assert (numbers["query_split"], numbers["db_split"]) == ("validation", "train")
  assert f"{100 * same:.1f}% share" in capsys.readouterr().out
  assert png_size(out)[1] > 300


def test_queries_show_different_classes_then_fill_up_in_order():
  images = np.arange(8)[:, None, None, None] * np.ones((8, 2, 2, 3), np.uint8)
  labels = np.array([3, 3, 1, 3, 2, 1, 2, 3])
  batches = [(images[:3], labels[:3]), (images[3:], labels[3:])]
  positions, picked, picked_labels = neighbours.pick_queries(iter(batches), 2)
  assert positions.tolist() == [0, 2] and picked_labels.tolist() == [3, 1]
  np.testing.assert_array_equal(picked, images[[0, 2]])
  positions, _, picked_labels = neighbours.pick_queries(iter(batches), 5)  # only 3 classes
  assert positions.tolist() == [0, 1, 2, 3, 4] and picked_labels.tolist() == [3, 3, 1, 3, 2]


# --- augmentation sheet --------------------------------------------------------------------


def test_augmentation_sheet_shows_exactly_what_training_sees(tmp_path):
  cfg = config_with(**{"data.flip": True, "data.pca_lighting": 0.1, "seed": 3})
  out = str(tmp_path / "sheet.png")
  path, views = augment.run(cfg, out, images=3, epochs=2, lighting_gain=4.0)
  assert png_size(path)[0] > 200
  numbers = json.load(open(tmp_path / "sheet.json"))
  np.testing.assert_allclose(numbers["rgb_shift"], views["rgb_shift"])
  assert views["image"].shape == (2, 3, 32, 32, 3) and views["square"].shape == (3, 36, 36, 3)
  info = data.dataset_info(cfg)
  steps = data.steps_per_epoch(cfg, info)
  flipped = 0
  for epoch in range(2):
    perm = order.epoch_permutation(cfg.seed, epoch, info.num_examples["train"])
    for i, example_id in enumerate(views["example_id"]):
      position = int(np.nonzero(perm == example_id)[0][0])
      if position >= steps * cfg.batch_size:
        continue  # dropped from this epoch's batches
      # The same example in the real training stream, at its step of this epoch.
      batch = next(data.train_iterator(cfg, start_step=epoch * steps + position // cfg.batch_size,
                                       shard_index=0, shard_count=1))
      j = position % cfg.batch_size
      # The batch's crop, mirrored where its flip says (the train step does that on the device).
      seen = batch["image"][j][:, ::-1] if batch["flip"][j] else batch["image"][j]
      np.testing.assert_array_equal(views["image"][epoch, i], seen)
      np.testing.assert_array_equal(views["rgb_shift"][epoch, i], batch["rgb_shift"][j])
      # ... and it is a 32 px window of the example's square, mirrored or not.
      square, image = views["square"][i], views["image"][epoch, i]
      windows = [(square[t:t + 32, l:l + 32], m) for t in range(5) for l in range(5)
                 for m in (False, True)]
      matches = [m for w, m in windows if np.array_equal(w[:, ::-1] if m else w, image)]
      assert matches
      flipped += matches[0]
  assert flipped > 0  # with mirroring on, some views are mirrored
  # The displayed picture adds the lighting offset as the train step does (x gain).
  shown = augment.displayed(views["image"], views["rgb_shift"], 4.0)
  expected = np.clip(views["image"] / 255.0 + 4.0 * views["rgb_shift"][:, :, None, None, :], 0, 1)
  np.testing.assert_allclose(shown, expected, atol=1e-6)


# --- ablation ------------------------------------------------------------------------------


def last_eval(workdir):
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  return [r for r in records if r["split"] == "eval"][-1]


def test_ablation_trains_each_condition_and_tables_its_errors(trained, capsys):
  root = trained["root"]
  base = trained["cfg"].copy_and_resolve_references()
  base.model.norm = "default"  # each condition sets its own
  # The fixture's rate (0.05) makes the network without LRN diverge within a few steps on this
  # data; a diverged run has no evaluation to table. The paper run is finished, so the rate
  # (not a field that makes a run what it is) only changes what no_lrn trains with.
  base.optim.learning_rate = 0.01
  text, result = ablate.run(base, root, seeds=[0], conditions=("paper", "no_lrn"))
  # paper/seed0 is the fixture's finished run, reused (evaluated again, not retrained).
  assert len(runs.read_split(trained["workdir"], "eval")) == 2
  no_lrn_dir = os.path.join(root, "no_lrn", "seed0")
  assert json.load(open(os.path.join(no_lrn_dir, "config.json")))["model"]["norm"] == "none"
  errors = {"paper": last_eval(trained["workdir"]), "no_lrn": last_eval(no_lrn_dir)}
  assert errors["paper"]["top1_err"] != errors["no_lrn"]["top1_err"] or \
      errors["paper"]["loss"] != errors["no_lrn"]["loss"]  # a different network was trained
  saved = json.load(open(os.path.join(root, "ablation.json")))
  for name in ("paper", "no_lrn"):
    for metric in ("top1_err", "top5_err"):
      assert saved["runs"][name]["0"][metric] == pytest.approx(errors[name][metric])
  rows = {r["condition"]: r for r in csv.DictReader(open(os.path.join(root, "ablation.csv")))}
  assert float(rows["no_lrn"]["top1_err_mean"]) == pytest.approx(100 * errors["no_lrn"]["top1_err"])
  assert rows["paper"]["norm"] == "lrn" and rows["no_lrn"]["norm"] == "none"
  (effect,) = csv.DictReader(open(os.path.join(root, "ablation_effects.csv")))
  assert effect["effect"] == "LRN" and float(effect["paper_top1_delta"]) == -1.4
  assert float(effect["top5_err_delta_mean"]) == pytest.approx(
      100 * (errors["paper"]["top5_err"] - errors["no_lrn"]["top5_err"]))
  md = open(os.path.join(root, "ablation.md")).read()
  assert md == text and "| -1.4 | -1.2 |" in md
  assert f"{100 * errors['paper']['top1_err']:.2f}" in md


def test_ablation_refuses_a_model_without_lrn(capsys):
  assert cli.main(["ablate", "--config", "test", "--config.model.name=owt"]) == 2
  assert "no LRN layers" in capsys.readouterr().err
