"""Top-1 / top-5 error of exported parameter files on a validation split: the centre crop or the
paper's 10 views, one model or an ensemble.

As in the paper, the 10 views of an image (centre and four corners, and their mirrors) are
averaged in probability (the softmax outputs), and an ensemble averages its members'
probabilities ("averaging the predictions of five similar CNNs"). One pass over the data feeds
every member, so each member's own error and the ensemble's come from the same batches.

Every example of the split is counted exactly once whatever the batch size and process count:
the input pipeline pads the last batches, and padding carries mask False, which weights it 0.
With several processes each process feeds its slice of every global batch and the sums come
out of one jitted step over the global arrays, so they are already totals.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from alexnet_jax import export as export_lib
from alexnet_jax import model as model_lib
from alexnet_jax import preprocess
from alexnet_jax import sharding as shard_lib

PREPROCESSING = ("crop_size", "resize_size", "mean", "std")


def metric_sums(probs, labels, weights) -> dict[str, jax.Array]:
  """Sums over the batch's real examples (weights 1, padding 0) of the per-example errors."""
  from alexnet_jax.train import label_rank

  true_prob = jnp.take_along_axis(probs, labels[:, None], axis=-1)[:, 0]
  rank = label_rank(probs, labels)
  return {"loss": (-jnp.log(jnp.maximum(true_prob, 1e-12)) * weights).sum(),
          "top1_err": ((rank >= 1) * weights).sum(),
          "top5_err": ((rank >= 5) * weights).sum()}


def make_probs_fn(model: export_lib.LoadedModel):
  """(params, model_state, uint8 images (B, H, W, 3) or views (B, V, H, W, 3)) -> probabilities
  (B, classes), averaged over the views."""
  from alexnet_jax.train import model_fns

  cfg = model.cfg
  fns = model_fns(cfg)
  mean, std = tuple(cfg.data.mean), tuple(cfg.data.std)
  dtype = model_lib.DTYPES[cfg.model.dtype]

  def probs_fn(params, model_state, images):
    x = preprocess.normalize(images, None, mean, std, dtype)
    lead = x.shape[:-3]
    logits, _ = fns.apply(params, model_state, x.reshape((-1,) + x.shape[-3:]), train=False)
    probs = jax.nn.softmax(logits).reshape(lead + logits.shape[-1:])
    return probs.mean(axis=1) if probs.ndim == 3 else probs

  return probs_fn


def make_ensemble_step(models: Sequence[export_lib.LoadedModel]):
  """(params of each, model_state of each, batch) -> {"count", "<i>/<metric>", "ensemble/..."}."""
  probs_fns = [make_probs_fn(m) for m in models]

  def step(params, model_states, batch):
    weights = batch["mask"].astype(jnp.float32)
    sums = {"count": weights.sum()}
    total = 0.0
    for i, (fn, p, s) in enumerate(zip(probs_fns, params, model_states)):
      probs = fn(p, s, batch["image"])
      total = total + probs
      sums.update({f"{i}/{k}": v for k, v in metric_sums(probs, batch["label"], weights).items()})
    if len(probs_fns) > 1:
      ensemble = metric_sums(total / len(probs_fns), batch["label"], weights)
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
  passes over evaluation data."""

  def __init__(self, models: Sequence[export_lib.LoadedModel], devices=None):
    self.models = list(models)
    devices = list(devices or jax.devices())
    strategy = shard_lib.get_strategy("data")
    mesh = shard_lib.make_mesh(strategy, (len(devices), 1), devices)
    replicated = NamedSharding(mesh, P())
    self.num_devices = len(devices)
    self.batch_sharding = shard_lib.batch_sharding(mesh, strategy)
    self.params = jax.device_put([m.params for m in self.models], replicated)
    self.model_states = jax.device_put([m.model_state for m in self.models], replicated)
    self.step = jax.jit(make_ensemble_step(self.models), out_shardings=replicated)

  def run(self, cfg, *, views: str = "center", split: str | None = None,
          batch_size: int | None = None, process_index: int | None = None,
          process_count: int | None = None) -> dict:
    """One pass over `split` of `cfg`'s dataset, with the models' own preprocessing."""
    from alexnet_jax import data

    split = split or cfg.data.eval_split
    batch_size = batch_size or cfg.eval_batch_size
    local = batch_size // (process_count or jax.process_count())
    if batch_size % (process_count or jax.process_count()) or local % self.num_devices:
      raise export_lib.ExportError(
          f"batch size {batch_size} does not split evenly over the processes and their "
          f"{self.num_devices} devices; pass --batch-size as a multiple of {self.num_devices}")
    cfg = cfg.copy_and_resolve_references()
    for field in PREPROCESSING:
      cfg.data[field] = self.models[0].cfg.data[field]
    totals: dict[str, float] = {}
    batches = data.eval_iterator(cfg, split, views=views, batch_size=batch_size,
                                 process_index=process_index, process_count=process_count)
    for batch in batches:
      sums = jax.device_get(self.step(self.params, self.model_states,
                                      shard_lib.put_batch(batch, self.batch_sharding)))
      for k, v in sums.items():
        totals[k] = totals.get(k, 0.0) + float(v)
    count = totals.pop("count", 0.0)

    def result(prefix: str) -> dict:
      return {k: totals[f"{prefix}/{k}"] / max(count, 1.0) for k in ("top1_err", "top5_err", "loss")}

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
