"""Evaluation (centre crop, 10 views, ensembles) and prediction from parameter files."""

import json

import jax
import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

import runs
from alexnet_jax import classnames, cli, data, export, evaluate, preprocess, program
from configs import test as test_config

NUM_HELD_OUT = 360  # digits' validation split


def random_model(cfg, seed: int, name: str = "") -> export.LoadedModel:
  """He-scaled random parameters (no compilation), as a loaded parameter file would give."""
  params, state = jax.eval_shape(program.model_fns(cfg).init, jax.random.key(0))
  rng = np.random.default_rng(seed)

  def value(path, s):
    if path[-1].key == "kernel":
      fan_in = np.prod(s.shape[-4:-1]) if len(s.shape) >= 4 else s.shape[-2]
      return (rng.normal(size=s.shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    return (0.1 * rng.normal(size=s.shape)).astype(np.float32)

  params = jax.tree_util.tree_map_with_path(value, params)
  names = tuple(str(i) for i in range(cfg.model.num_classes))
  return export.LoadedModel(cfg, params, state, names, seed, name or f"random{seed}")


def digits_cfg():
  """The test config at 16 px and a quarter width: evaluating 10 views of 360 digits stays cheap."""
  cfg = test_config.get_config()
  cfg.data.resize_size, cfg.data.crop_size, cfg.model.width = 18, 16, 0.25
  return cfg


def errors(probs, labels):
  """numpy reference: (top-1 errors, top-5 errors, summed -log p(true)) over the examples."""
  true = probs[np.arange(len(labels)), labels]
  rank = (probs > true[:, None]).sum(-1)
  return int((rank >= 1).sum()), int((rank >= 5).sum()), float(-np.log(np.maximum(true, 1e-12)).sum())


def test_every_example_is_counted_once_whatever_the_batch_and_process_count():
  cfg = digits_cfg()
  evaluator = evaluate.Evaluator([random_model(cfg, 0)], devices=jax.devices()[:2])
  whole = evaluator.run(cfg, batch_size=8)  # one process, batches of 8 as below (one compile)
  assert whole["examples"] == NUM_HELD_OUT
  # 7 data groups, global batch 56: 360 divides by neither. Each group loads its own block
  # (8 rows), the last batches padded; here each block is placed as a batch of its own.
  feed, dataset = evaluator.feed(8), evaluator.preprocessing(cfg)
  parts = [evaluator.results(dataset, "validation", "center", map(feed.put, data.eval_iterator(
      dataset, batch_size=56, shard_index=p, shard_count=7))) for p in range(7)]
  assert sum(p["examples"] for p in parts) == NUM_HELD_OUT
  for key in ("top1_err", "top5_err"):
    counted = sum(round(p["models"][0][key] * p["examples"]) for p in parts)
    assert counted == round(whole["models"][0][key] * NUM_HELD_OUT), key
  # Per-example losses summed: a duplicated or missing example would change the sum.
  loss = sum(p["models"][0]["loss"] * p["examples"] for p in parts)
  assert loss == pytest.approx(whole["models"][0]["loss"] * NUM_HELD_OUT, rel=1e-6)


def test_ten_views_and_ensembles_average_probabilities():
  cfg = digits_cfg()
  models = [random_model(cfg, 1), random_model(cfg, 2)]
  evaluator = evaluate.Evaluator(models, devices=jax.devices()[:2])
  got = evaluator.run(cfg, views="10crop", batch_size=64)
  assert got["examples"] == NUM_HELD_OUT

  # Independently: every view through each model, softmax in float64, averaged.
  fns = program.model_fns(cfg)
  logits_fn = jax.jit(lambda p, s, x: fns.apply(p, s, x, train=False)[0])
  images, labels = [], []
  for batch in data.eval_iterator(cfg, views="10crop", batch_size=64, shard_index=0,
                                  shard_count=1):
    images.append(batch["image"][batch["mask"]])
    labels.append(batch["label"][batch["mask"]])
  images, labels = np.concatenate(images), np.concatenate(labels)
  assert images.shape == (NUM_HELD_OUT, 10, 16, 16, 3)
  views = preprocess.normalize(images.reshape(-1, 16, 16, 3), None, cfg.data.mean, cfg.data.std)
  member_probs, center_probs = [], []
  for model in models:
    logits = np.asarray(logits_fn(model.params, model.model_state, views), np.float64)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs = (probs / probs.sum(-1, keepdims=True)).reshape(NUM_HELD_OUT, 10, -1)
    member_probs.append(probs.mean(axis=1))
    center_probs.append(probs[:, 0])  # view 0 is the centre crop
  for result, probs in [(got["models"][0], member_probs[0]), (got["models"][1], member_probs[1]),
                        (got["ensemble"], (member_probs[0] + member_probs[1]) / 2)]:
    top1, top5, loss = errors(probs, labels)
    assert round(result["top1_err"] * NUM_HELD_OUT) == top1
    assert round(result["top5_err"] * NUM_HELD_OUT) == top5
    assert result["loss"] * NUM_HELD_OUT == pytest.approx(loss, rel=1e-5)
  # The ensemble is not one of its members, and the views matter.
  assert got["ensemble"]["loss"] not in (got["models"][0]["loss"], got["models"][1]["loss"])
  assert errors(center_probs[0], labels)[2] != pytest.approx(got["models"][0]["loss"] * NUM_HELD_OUT)


def test_evaluate_and_predict_commands_on_a_trained_run(tmp_path, capsys):
  """train -> export -> evaluate -> predict: the evaluation reproduces the run's own."""
  workdir = runs.reference_run()
  final, best = str(tmp_path / "final.safetensors"), str(tmp_path / "best.safetensors")
  assert cli.main(["export", "--workdir", workdir, "--out", final]) == 0
  assert cli.main(["export", "--workdir", workdir, "--checkpoint", "best", "--out", best]) == 0
  out_json = str(tmp_path / "results.json")
  assert cli.main(["evaluate", "--params", final, best, "--config", "configs/test.py",
                   "--out", out_json]) == 0
  table = capsys.readouterr().out
  results = json.load(open(out_json))
  evals = {r["step"]: r for r in runs.records(workdir) if r["split"] == "eval"}
  best_step = min(evals, key=lambda s: (evals[s]["top1_err"], -s))
  assert [m["step"] for m in results["models"]] == [runs.TOTAL_STEPS, best_step]
  assert results["examples"] == NUM_HELD_OUT and results["ensemble"] is not None
  for member in results["models"]:
    trained = evals[member["step"]]
    assert member["top1_err"] == pytest.approx(trained["top1_err"], abs=1e-9)
    assert member["top5_err"] == pytest.approx(trained["top5_err"], abs=1e-9)
    assert member["loss"] == pytest.approx(trained["loss"], rel=1e-5)
    assert f"{100 * member['top1_err']:.2f}%" in table
  assert "ensemble of 2" in table

  digits = load_digits()
  images = []
  for i in (0, 1):  # held-out digits (every 5th), as PNG files at the training resolution
    path = str(tmp_path / f"digit{i}.png")
    Image.fromarray(np.round(digits.images[5 * i] * 255 / 16).astype(np.uint8)).resize(
        (36, 36), Image.Resampling.BILINEAR).save(path)
    images.append(path)
  broken = str(tmp_path / "broken.png")
  with open(images[0], "rb") as f:
    open(broken, "wb").write(f.read()[:60])  # a truncated PNG
  code = cli.main(["predict", "--params", final, images[0], broken, images[1],
                   str(tmp_path / "missing.jpg")])
  captured = capsys.readouterr()
  assert code == 1
  lines = captured.out.strip().splitlines()
  assert lines[0] == images[0] and lines[6] == images[1] and len(lines) == 12
  for block in (lines[1:6], lines[7:12]):
    probs = [float(line.split()[1].rstrip("%")) for line in block]
    assert probs == sorted(probs, reverse=True)
    assert {line.split()[2] for line in block} <= set("0123456789")
  errors_ = captured.err.strip().splitlines()
  assert len(errors_) == 2 and broken in errors_[0] and "missing.jpg: no such file" in errors_[1]


def test_a_file_with_another_class_count_names_the_mismatched_tensor(tmp_path):
  cfg = digits_cfg()
  cfg.model.num_classes = 100
  path = str(tmp_path / "hundred.safetensors")
  export.save(random_model(cfg, 0), path)
  with pytest.raises(export.ExportError) as e:
    evaluate.evaluate(digits_cfg(), [path])
  assert "params/fc8/bias has shape (100,) in the file but (10,) is expected" in str(e.value)


def test_an_ensemble_needs_one_preprocessing(tmp_path):
  a, b = digits_cfg(), digits_cfg()
  b.data.crop_size = 17
  paths = [str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")]
  export.save(random_model(a, 0), paths[0])
  export.save(random_model(b, 0), paths[1])
  with pytest.raises(export.ExportError, match="data.crop_size=17 .* an ensemble needs one"):
    evaluate.load_models(paths, digits_cfg(), 10)


def test_imagenet_class_names_come_from_files_shipped_with_tensorflow_datasets():
  wnids, names = classnames.imagenet_names()
  assert (wnids[0], names[0]) == ("n01440764", "tench, Tinca tinca")
  assert names[1] == "goldfish, Carassius auratus" and len(set(wnids)) == 1000
  assert classnames.readable(wnids, 1000) == names  # tfds's imagenet2012 labels are WordNet ids
  assert classnames.readable((), 1000) == names
  assert classnames.readable(("cat", "dog"), 2) == ("cat", "dog")
  assert classnames.readable((), 3) == ("0", "1", "2")
