"""Top-1 / top-5 error of exported parameter files on a validation split: the centre crop or the
paper's 10 views, one model or an ensemble.

As in the paper, the 10 views of an image (centre and four corners, and their mirrors) are
averaged in probability (the softmax outputs), and an ensemble averages its members'
probabilities ("averaging the predictions of five similar CNNs"). One pass over the data feeds
every member, so each member's own error and the ensemble's come from the same batches.

Every example of the split is counted exactly once whatever the batch size and process layout:
the input pipeline pads the last batches, and padding carries mask False, which weights it 0.
With several processes each process loads the rows of every global batch that its devices hold
(sharding.process_rows) and the sums come out of one jitted step over the global arrays, so
they are already totals.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from alexnet_jax import export as export_lib
from alexnet_jax import metrics as metrics_lib
from alexnet_jax import program as program_lib
from alexnet_jax import sharding as shard_lib

PREPROCESSING = ("crop_size", "resize_size", "mean", "std")


def make_ensemble_step(models: Sequence[export_lib.LoadedModel]):
  """(params of each, model_state of each, batch) -> {"count", "<i>/<metric>", "ensemble/..."}."""
  members = [(m.cfg, program_lib.model_fns(m.cfg)) for m in models]

  def step(params, model_states, batch):
    weights = batch["mask"].astype(jnp.float32)
    sums = {"count": weights.sum()}
    total = 0.0
    for i, ((cfg, fns), p, s) in enumerate(zip(members, params, model_states)):
      probs = fns.probabilities(cfg, p, s, batch["image"])
      total = total + probs
      sums.update({f"{i}/{k}": v for k, v in
                   metrics_lib.probability_sums(probs, batch["label"], weights).items()})
    if len(members) > 1:
      ensemble = metrics_lib.probability_sums(total / len(members), batch["label"], weights)
      sums.update({f"ensemble/{k}": v for k, v in ensemble.items()})
    return sums

  return step


def load_models(paths: Sequence[str], cfg, num_classes: int) -> list[export_lib.LoadedModel]:
  """Each file, checked against the dataset's class count; all must share the preprocessing."""
  models = []
  for path in paths:
    model = export_lib.load(path, torchvision_cfg=cfg)
    if model.num_classes != num_classes:  # name the mismatched tensor: load against the dataset's
      expect = export_lib.configlib.base_config()
      expect.model = model.cfg.model.copy_and_resolve_references()
      expect.model.num_classes = num_classes
      expect.data.crop_size = model.cfg.data.crop_size
      export_lib.load(path, expect=expect, torchvision_cfg=cfg)  # raises, naming the tensor
      raise export_lib.ExportError(f"{path} has {model.num_classes} classes, the dataset "
                                   f"{num_classes}")
    models.append(model.float32())
  first = models[0].cfg.data
  for model in models[1:]:
    for field in PREPROCESSING:
      if tuple(_listify(model.cfg.data[field])) != tuple(_listify(first[field])):
        raise export_lib.ExportError(
            f"{model.source} was trained with data.{field}={model.cfg.data[field]} but "
            f"{models[0].source} with {first[field]}: an ensemble needs one preprocessing")
  return models


def _listify(value):
  return value if isinstance(value, (tuple, list)) else (value,)


class Evaluator:
  """Models placed on the devices (replicated) with their jitted ensemble step, for one or more
  passes over evaluation data. The batch is split over every device of every process; each
  process loads the rows its devices hold."""

  def __init__(self, models: Sequence[export_lib.LoadedModel], devices=None):
    self.models = list(models)
    devices = list(devices or jax.devices())
    self.strategy = shard_lib.get_strategy("data")
    self.mesh = shard_lib.make_mesh(self.strategy, (len(devices), 1), devices)
    replicated = NamedSharding(self.mesh, P())
    self.num_devices = len(devices)
    self.params = jax.device_put([m.params for m in self.models], replicated)
    self.model_states = jax.device_put([m.model_state for m in self.models], replicated)
    self.step = jax.jit(make_ensemble_step(self.models), out_shardings=replicated)

  def feed(self, batch_size: int) -> shard_lib.BatchFeed:
    if batch_size < 1 or batch_size % self.num_devices:
      raise export_lib.ExportError(
          f"batch size {batch_size} does not split evenly over the {self.num_devices} devices; "
          f"pass --batch-size as a multiple of {self.num_devices}")
    return shard_lib.batch_feed(self.mesh, self.strategy, batch_size)

  def run(self, cfg, *, views: str = "center", split: str | None = None,
          batch_size: int | None = None) -> dict:
    """One pass over `split` of `cfg`'s dataset, with the models' own preprocessing."""
    from alexnet_jax import data

    split = split or cfg.data.eval_split
    feed = self.feed(batch_size or cfg.eval_batch_size)
    cfg = self.preprocessing(cfg)
    batches = data.eval_iterator(cfg, split, views=views, batch_size=feed.global_batch,
                                 shard_index=feed.rows.index, shard_count=feed.rows.count)
    return self.results(cfg, split, views, map(feed.put, batches))

  def preprocessing(self, cfg):
    """`cfg` (the dataset) with the models' own crop, resize, mean and std."""
    cfg = cfg.copy_and_resolve_references()
    for field in PREPROCESSING:
      cfg.data[field] = self.models[0].cfg.data[field]
    return cfg

  def results(self, cfg, split: str, views: str, global_batches) -> dict:
    """The per-model and ensemble errors over `global_batches` (placed on the devices)."""
    totals = metrics_lib.totals(
        jax.device_get(self.step(self.params, self.model_states, batch))
        for batch in global_batches)
    count = totals.pop("count")

    def result(prefix: str) -> dict:
      return {k: totals[f"{prefix}/{k}"] for k in ("top1_err", "top5_err", "loss")}

    return {
        "dataset": cfg.data.name, "split": split, "views": views, "examples": int(count),
        "models": [{"params": m.source, "variant": m.cfg.model.name, "step": m.step,
                    **result(str(i))} for i, m in enumerate(self.models)],
        "ensemble": result("ensemble") if len(self.models) > 1 else None,
    }


def evaluate(cfg, paths: Sequence[str], *, views: str = "center", split: str | None = None,
             batch_size: int | None = None, devices=None) -> dict:
  """Evaluate the parameter files `paths` (an ensemble if several) on `cfg`'s dataset.

  The preprocessing (crop and resize sizes, mean, std) is the models' own, from their files;
  `cfg` supplies the dataset.
  """
  from alexnet_jax import data

  models = load_models(paths, cfg, data.dataset_info(cfg).num_classes)
  return Evaluator(models, devices).run(cfg, views=views, split=split, batch_size=batch_size)


def format_table(results: dict) -> str:
  rows = [(f"{os.path.basename(m['params'])} ({m['variant']}"
           + (f", step {m['step']})" if m["step"] is not None else ")"), m)
          for m in results["models"]]
  if results["ensemble"]:
    rows.append((f"ensemble of {len(results['models'])} (averaged probabilities)",
                 results["ensemble"]))
  width = max(len(name) for name, _ in rows)
  lines = [f"{results['dataset']} {results['split']}: {results['examples']} examples, "
           f"{results['views']} view{'s' if results['views'] == '10crop' else ''}",
           f"{'model':<{width}}  top-1 err  top-5 err    loss"]
  for name, r in rows:
    lines.append(f"{name:<{width}}  {100 * r['top1_err']:8.2f}%  {100 * r['top5_err']:8.2f}%"
                 f"  {r['loss']:6.4f}")
  return "\n".join(lines)


def write_json(results: dict, path: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(results, f, indent=2)
    f.write("\n")
