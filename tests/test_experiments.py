"""ReLU vs tanh (Figure 1): time to a target training error, speed-up over seeds, the rate
search; ablation tables from per-seed errors."""

import json
import math
import os

import numpy as np
import pytest
from PIL import Image

from alexnet_jax import cli, configlib
from alexnet_jax.experiments import ablate, relu_tanh, runs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- ReLU vs tanh: the numbers ---------------------------------------------------------------


def test_epochs_to_target_interpolates_the_first_crossing():
  epochs = np.array([0.25, 0.5, 0.75, 1.0])
  errors = np.array([0.9, 0.6, 0.3, 0.5])
  assert relu_tanh.epochs_to_target(epochs, errors, 0.45) == pytest.approx(0.625)
  assert relu_tanh.epochs_to_target(epochs, errors, 0.6) == pytest.approx(0.5)
  assert relu_tanh.epochs_to_target(epochs, errors, 0.95) == pytest.approx(0.25)  # at once
  assert relu_tanh.epochs_to_target(epochs, errors, 0.2) is None


def test_speedup_mean_spread_and_censored_seeds():
  to_target = {"relu": {0: 1.0, 1: 2.0, 2: 1.0, 3: None},
               "tanh": {0: 3.0, 1: 5.0, 2: None, 3: 4.0}}
  s = relu_tanh.speedups(to_target, budget=10.0)
  assert s["per_seed"] == {0: 3.0, 1: 2.5, 3: None}
  assert s["lower_bounds"] == {2: 10.0}  # tanh never got there: more than 10 / 1
  assert s["mean"] == pytest.approx(2.75) and s["std"] == pytest.approx(math.sqrt(0.125))
  assert (s["min"], s["max"], s["seeds_with_factor"]) == (2.5, 3.0, 2)


def test_the_fastest_rate_is_kept_and_without_a_crossing_the_lowest_error():
  assert relu_tanh.choose_rate({0.01: 3.0, 0.02: 2.0, 0.05: None},
                               {0.01: 0.1, 0.02: 0.2, 0.05: 0.9}) == 0.02
  assert relu_tanh.choose_rate({0.01: 2.0, 0.02: 2.0}, {0.01: 0.3, 0.02: 0.1}) == 0.01
  assert relu_tanh.choose_rate({0.01: None, 0.02: None}, {0.01: 0.3, 0.02: 0.1}) == 0.02


def test_relu_tanh_trains_both_activations_and_reports_from_their_metrics(tmp_path):
  cfg = configlib.load_config(os.path.join(REPO, "configs", "test.py"))
  relu_tanh.apply_figure1_settings(cfg)
  configlib.apply_overrides(cfg, ["batch_size=64", "optim.learning_rate=0.01"])
  root = str(tmp_path / "fig1")
  path, results = relu_tanh.run(cfg, root, seeds=[0], epochs=1.0, target=0.7, points_per_epoch=4)
  saved = json.load(open(os.path.join(root, "figure1.json")))
  assert saved["target_train_error"] == 0.7 and saved["steps_per_epoch"] == 1437 // 64
  reached = {}
  for activation in ("relu", "tanh"):
    workdir = os.path.join(root, activation, "lr0.01", "seed0")
    run_cfg = json.load(open(os.path.join(workdir, "config.json")))
    assert run_cfg["model"]["name"] == "cnn4" and run_cfg["model"]["activation"] == activation
    assert run_cfg["optim"]["weight_decay"] == 0.0 and run_cfg["data"]["pca_lighting"] == 0.0
    assert run_cfg["model"]["dropout"] == 0.0 and run_cfg["data"]["random_crop"] is False
    records = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
    train = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train] == [6, 12, 18, 22]  # every ~quarter epoch, and the end
    x = [r["step"] / 22 for r in train]
    y = [r["top1_err"] for r in train]
    assert saved["curves"][activation]["0"] == {"epochs": pytest.approx(x),
                                                "train_top1_err": pytest.approx(y)}
    # The first crossing of 70%, interpolated, written out here independently.
    crossing = None
    for i, err in enumerate(y):
      if err <= 0.7:
        crossing = x[0] if i == 0 else x[i - 1] + (x[i] - x[i - 1]) * (y[i - 1] - 0.7) / (
            y[i - 1] - err)
        break
    reached[activation] = crossing
    if crossing is None:
      assert saved["epochs_to_target"][activation]["0"] is None
    else:
      assert saved["epochs_to_target"][activation]["0"] == pytest.approx(crossing)
    assert saved["held_out_top1_err"][activation]["0"] == pytest.approx(
        [r for r in records if r["split"] == "eval"][-1]["top1_err"])
  if reached["relu"] and reached["tanh"]:
    assert saved["speedup"]["per_seed"]["0"] == pytest.approx(reached["tanh"] / reached["relu"])
  assert saved["learning_rates"] == {"relu": 0.01, "tanh": 0.01}
  with Image.open(path) as image:
    assert image.size[0] > 300
  text = relu_tanh.describe(results)
  assert "relu (learning rate 0.01)" in text and "the paper: 6x to 25% on CIFAR-10" in text


def test_relu_tanh_rejects_a_bad_target_before_training(capsys, tmp_path):
  code = cli.main(["relu-tanh", "--config", "test", "--target", "1.5",
                   "--workdir", str(tmp_path)])
  assert code == 2
  assert "--target 1.5" in capsys.readouterr().err
  assert not os.listdir(tmp_path)


# --- ablation tables -------------------------------------------------------------------------


def test_ablation_summary_means_stds_and_paired_deltas():
  errors = {
      "paper": {0: {"top1_err": 0.10, "top5_err": 0.02}, 1: {"top1_err": 0.12, "top5_err": 0.04}},
      "no_lrn": {0: {"top1_err": 0.13, "top5_err": 0.03}, 1: {"top1_err": 0.14, "top5_err": 0.04}},
      "nonoverlap": {0: {"top1_err": 0.11, "top5_err": 0.02},
                     1: {"top1_err": 0.12, "top5_err": 0.05}},
  }
  summary = ablate.summarize(errors)
  rows = {r["condition"]: r for r in summary["conditions"]}
  assert rows["paper"]["top1_err_mean"] == pytest.approx(11.0)
  assert rows["paper"]["top1_err_std"] == pytest.approx(math.sqrt(2.0))  # (10, 12) in %
  assert (rows["nonoverlap"]["norm"], rows["nonoverlap"]["pool"]) == ("lrn", "nonoverlap")
  effects = {r["effect"]: r for r in summary["effects"]}
  assert set(effects) == {"LRN", "overlapping pooling"}  # the 4th condition was not run
  lrn = effects["LRN"]
  assert lrn["top1_err_delta_mean"] == pytest.approx(-2.5)  # (-3, -2) points
  assert lrn["top1_err_delta_std"] == pytest.approx(math.sqrt(0.5))
  assert lrn["top5_err_delta_mean"] == pytest.approx(-0.5)
  assert (lrn["paper_top1_delta"], lrn["paper_top5_delta"]) == (-1.4, -1.2)
  pool = effects["overlapping pooling"]
  assert pool["top5_err_delta_mean"] == pytest.approx(-0.5)  # (0, -1)
  assert (pool["paper_top1_delta"], pool["paper_top5_delta"]) == (-0.4, -0.3)
  md = ablate.markdown(summary, "title")
  assert "| paper | lrn | overlap | 2 | 0 | 11.00 ± 1.41 |" in md
  assert "| LRN: paper − no_lrn | 2 | -2.50 ± 0.71 | -0.50 ± 0.71 | -1.4 | -1.2 |" in md


def test_a_diverged_run_is_counted_not_averaged():
  nan = math.nan
  errors = {
      "paper": {0: {"top1_err": 0.10, "top5_err": 0.02}, 1: {"top1_err": 0.12, "top5_err": 0.04}},
      "no_lrn": {0: {"top1_err": nan, "top5_err": nan}, 1: {"top1_err": 0.15, "top5_err": 0.05}},
  }
  summary = ablate.summarize(errors)
  rows = {r["condition"]: r for r in summary["conditions"]}
  assert (rows["no_lrn"]["seeds"], rows["no_lrn"]["diverged"]) == (1, 1)
  assert rows["no_lrn"]["top1_err_mean"] == pytest.approx(15.0)
  assert (rows["paper"]["seeds"], rows["paper"]["diverged"]) == (2, 0)
  (lrn,) = summary["effects"]
  assert lrn["seeds"] == 1 and lrn["top1_err_delta_mean"] == pytest.approx(-3.0)  # seed 1 only
  assert "| no_lrn | none | overlap | 1 | 1 | 15.00 |" in ablate.markdown(summary, "title")


def test_relu_tanh_records_a_diverged_rate_and_chooses_another(tmp_path, monkeypatch):
  from alexnet_jax import train as train_lib
  from alexnet_jax.metric_writer import MetricWriter

  def fake_train_and_evaluate(cfg, workdir, **hooks):
    # Training error falls linearly with the step; the rate 50 "blows up" at step 4.
    rate, activation = cfg.optim.learning_rate, cfg.model.activation
    steps = 4 if rate == 50 else 22
    writer = MetricWriter(workdir)
    for step in range(cfg.log_every_steps, steps + 1, cfg.log_every_steps):
      err = 1.0 - step / 22 * (0.8 if activation == "relu" else 0.5) * (2 if rate == 50 else 1)
      writer.write(step, "train", {"top1_err": err, "loss": 1.0})
    writer.close()
    if rate == 50:
      raise train_lib.NonFiniteLoss("the training loss became NaN or Inf at step 4")
    return {"top1_err": 0.2, "top5_err": 0.0, "count": 360}

  # The real runs.train_run around a stand-in for training: it turns the divergence into a result.
  monkeypatch.setattr(train_lib, "train_and_evaluate", fake_train_and_evaluate)
  cfg = configlib.load_config(os.path.join(REPO, "configs", "test.py"))
  relu_tanh.apply_figure1_settings(cfg)
  configlib.apply_overrides(cfg, ["batch_size=64"])
  root = str(tmp_path / "fig1")
  relu_tanh.run(cfg, root, seeds=[0], epochs=1.0, target=0.5, points_per_epoch=11,
                rates=[0.01, 50])
  saved = json.load(open(os.path.join(root, "figure1.json")))
  for activation in ("relu", "tanh"):
    search = saved["rate_search"][activation]
    assert search["50"]["diverged"] is True and search["50"]["final_train_top1_err"] is None
    assert search["0.01"]["diverged"] is False
    assert saved["learning_rates"][activation] == 0.01
    assert saved["held_out_top1_err"][activation]["0"] == 0.2
  # ReLU's error 1 - 0.8 s/22 crosses 0.5 at step 13.75 = 0.625 epochs.
  assert saved["epochs_to_target"]["relu"]["0"] == pytest.approx(0.625)


def test_single_seed_has_no_spread_and_json_says_null():
  assert math.isnan(runs.mean_std([1.0])[1])
  assert runs.format_mean_std(1.0, math.nan) == "1.00"
  assert runs.jsonable({"a": math.nan, 1: np.float32(2.5)}) == {"a": None, "1": 2.5}


def test_the_four_layer_cnn_is_three_convolutions_and_a_classifier():
  from flax import nnx

  from alexnet_jax import model as model_lib
  cfg = configlib.base_config().model
  cfg.name = "cnn4"
  model = nnx.eval_shape(lambda: model_lib.create_model(cfg, 32, nnx.Rngs(0)))
  shapes = {k: v.shape for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  assert shapes == {
      ("conv1", "kernel"): (5, 5, 3, 32), ("conv1", "bias"): (32,),
      ("conv2", "kernel"): (5, 5, 32, 32), ("conv2", "bias"): (32,),
      ("conv3", "kernel"): (5, 5, 32, 64), ("conv3", "bias"): (64,),
      # 32 -> 3x3/2 pools -> 15 -> 7 -> 3: 3 * 3 * 64 inputs to the classifier
      ("fc6", "kernel"): (576, 10), ("fc6", "bias"): (10,),
  }
  assert sum(math.prod(s) for s in shapes.values()) == 85_098


def test_importing_the_experiments_loads_neither_tensorflow_nor_matplotlib():
  import subprocess
  import sys
  code = ("import sys\n"
          "import alexnet_jax.cli, alexnet_jax.train\n"
          "from alexnet_jax.experiments import (ablate, augment, commands, curves, kernels,\n"
          "                                     neighbours, relu_tanh)\n"
          "alexnet_jax.cli.build_parser()\n"
          "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'matplotlib'}))\n")
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == "[]"
