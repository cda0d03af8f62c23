"""fc7 features of a split, and the paper's Figure 4: query images and their nearest training
images by Euclidean distance between fc7 vectors.

Features are the model's `embed` output (the last hidden layer, after its ReLU, before dropout;
4096-d for `paper`, the model's fc7 width otherwise) of the centre crop, in inference mode.
The nearest-neighbour search streams over the training split batch by batch and keeps each
query's k best, so its memory does not grow with the split.
"""

from __future__ import annotations

import json
import os
import textwrap
from typing import Iterator

import numpy as np

from alexnet_jax.experiments import plotting, runs


def embed_fn(trained: runs.TrainedRun, batch_size: int):
  """uint8 images (n, H, W, 3) -> fc7 features (n, D) float32, run in chunks of `batch_size`
  padded to full size, so the jitted function compiles once (per run and batch size)."""
  key = ("embed", batch_size)
  if key not in trained.compiled:
    trained.compiled[key] = _make_embed_fn(trained, batch_size)
  return trained.compiled[key]


def _make_embed_fn(trained: runs.TrainedRun, batch_size: int):
  import jax
  import jax.numpy as jnp

  from alexnet_jax import model as model_lib
  from alexnet_jax import preprocess

  cfg = trained.cfg
  mean, std = tuple(cfg.data.mean), tuple(cfg.data.std)
  dtype = model_lib.DTYPES[cfg.model.dtype]

  @jax.jit
  def embed(params, model_state, images):
    x = preprocess.normalize(images, None, mean, std, dtype)
    return trained.fns.embed(params, model_state, x).astype(jnp.float32)

  def run(images: np.ndarray) -> np.ndarray:
    out = []
    for start in range(0, len(images), batch_size):
      chunk = images[start:start + batch_size]
      padded = np.zeros((batch_size,) + chunk.shape[1:], chunk.dtype)
      padded[:len(chunk)] = chunk
      out.append(np.asarray(embed(trained.params, trained.model_state, padded))[:len(chunk)])
    return np.concatenate(out)

  return run


def _check_single_process():
  import jax
  if jax.process_count() > 1:
    raise runs.ExperimentError("features and neighbours run in one process; start them without "
                               "jax.distributed (they read the whole split themselves)")


def split_batches(trained: runs.TrainedRun, split: str,
                  batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """(images uint8, labels) of every example of `split` in the pipeline's evaluation order
  (centre crops), padding removed."""
  from alexnet_jax import data

  _check_single_process()
  for batch in data.eval_iterator(trained.cfg, split, views="center", batch_size=batch_size,
                                  shard_index=0, shard_count=1):
    mask = batch["mask"].astype(bool)
    if mask.any():
      yield batch["image"][mask], batch["label"][mask]


def labels_path(out: str) -> str:
  """Where `write_features` puts the labels: feats.npy -> feats.labels.npy."""
  root = out[:-4] if out.endswith(".npy") else out
  return root + ".labels.npy"


def write_features(trained: runs.TrainedRun, split: str, out: str,
                   batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
  """Write (N, D) float32 features to `out` and the (N,) int32 labels beside it."""
  embed = embed_fn(trained, batch_size)
  features, labels = [], []
  for images, batch_labels in split_batches(trained, split, batch_size):
    features.append(embed(images))
    labels.append(batch_labels)
  if not features:
    raise runs.ExperimentError(f"split {split!r} has no examples")
  features, labels = np.concatenate(features), np.concatenate(labels).astype(np.int32)
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  np.save(out, features)
  np.save(labels_path(out), labels)
  return features, labels


# --- nearest neighbours ---------------------------------------------------------------------


def pick_queries(batches, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Queries from a split's (images, labels) batches: the first example of each new label, in
  split order, until `count` are picked (so they show different classes); with fewer classes
  than `count`, the earliest other examples fill up. Stops reading once done.

  Returns (positions in the split, images, labels)."""
  picked, fallback, seen_labels, offset = [], [], set(), 0
  for images, labels in batches:
    for i, label in enumerate(labels.tolist()):
      if label not in seen_labels:
        seen_labels.add(label)
        picked.append((offset + i, images[i], label))
      elif len(fallback) < count:
        fallback.append((offset + i, images[i], label))
      if len(picked) == count:
        break
    offset += len(images)
    if len(picked) == count:
      break
  chosen = sorted(picked + fallback[:count - len(picked)], key=lambda q: q[0])
  if not chosen:
    raise runs.ExperimentError("the query split has no examples")
  positions, images, labels = zip(*chosen)
  return np.array(positions), np.stack(images), np.array(labels, np.int32)


def nearest(trained: runs.TrainedRun, *, query_split: str, db_split: str, queries: int, k: int,
            batch_size: int = 256) -> dict:
  """The `k` training images nearest each query in fc7 space (Euclidean distance); queries
  from `pick_queries`.

  Returns query positions, images, labels; and for each query the neighbours' positions in
  `db_split` (its evaluation order), distances (Euclidean), labels and images.
  """
  from alexnet_jax import data

  info = data.dataset_info(trained.cfg)
  if query_split not in info.num_examples or db_split not in info.num_examples:
    raise runs.ExperimentError(f"splits {query_split!r} and {db_split!r}: this dataset has "
                               f"{', '.join(info.num_examples)}")
  embed = embed_fn(trained, batch_size)
  wanted, q_images, q_labels = pick_queries(split_batches(trained, query_split, batch_size),
                                            queries)
  q_feats = embed(q_images).astype(np.float64)

  nq = len(q_images)
  best_d = np.full((nq, 0), np.inf)  # squared distances, ascending
  best_pos = np.zeros((nq, 0), np.int64)  # positions in db_split's evaluation order
  kept: dict[int, tuple[np.ndarray, int]] = {}  # position -> (image, label) of current best
  offset = 0
  for images, labels in split_batches(trained, db_split, batch_size):
    feats = embed(images).astype(np.float64)
    d = (np.square(q_feats).sum(1)[:, None] - 2 * q_feats @ feats.T
         + np.square(feats).sum(1)[None, :])
    positions = np.broadcast_to(offset + np.arange(len(images)), d.shape)
    cand_d = np.concatenate([best_d, np.maximum(d, 0.0)], axis=1)
    cand_pos = np.concatenate([best_pos, positions], axis=1)
    order = np.argsort(cand_d, axis=1, kind="stable")[:, :k]  # ties: the earlier example
    best_d = np.take_along_axis(cand_d, order, axis=1)
    best_pos = np.take_along_axis(cand_pos, order, axis=1)
    live = {int(p) for p in best_pos.ravel()}
    kept = {p: kept[p] if p in kept else (images[p - offset], int(labels[p - offset]))
            for p in live}
    offset += len(images)
  best_images = np.stack([np.stack([kept[int(p)][0] for p in row]) for row in best_pos])
  best_labels = np.array([[kept[int(p)][1] for p in row] for row in best_pos], np.int32)
  same = float((best_labels == q_labels[:, None]).mean())
  return {
      "query_split": query_split, "db_split": db_split, "db_size": offset,
      "query_positions": wanted.tolist(), "query_labels": q_labels.tolist(),
      "neighbour_positions": best_pos.tolist(), "distances": np.sqrt(best_d).tolist(),
      "neighbour_labels": best_labels.tolist(), "same_label_fraction": same,
      "query_images": q_images, "neighbour_images": best_images,
  }


QUERY_COLOUR = "tab:blue"  # the query's frame and label: neutral
WRONG_COLOUR = "tab:red"  # a neighbour of another class than its query's


def draw(result: dict, path: str, *, class_names=None, title: str = "") -> str:
  """Rows: a query (left, framed) then its neighbours, nearest first, with distance and label;
  a neighbour's label is red when its class is not the query's."""
  q_images, n_images = result["query_images"], result["neighbour_images"]
  nq, k = n_images.shape[:2]
  name = (lambda c: class_names[c]) if class_names else str
  width = 1.0 * (k + 1) + 0.3
  fig = plotting.new_figure(width, 1.1 * nq + 0.8)
  axes = fig.subplots(nq, k + 1, squeeze=False)
  for r in range(nq):
    plotting.show_image(axes[r, 0], q_images[r], f"query: {name(result['query_labels'][r])}",
                        color=QUERY_COLOUR)
    for side in axes[r, 0].spines.values():
      side.set(color=QUERY_COLOUR, linewidth=2)
    for c in range(k):
      label = result["neighbour_labels"][r][c]
      ok = label == result["query_labels"][r]
      plotting.show_image(axes[r, c + 1], n_images[r, c],
                          f"{name(label)}  d={result['distances'][r][c]:.3g}",
                          color="black" if ok else WRONG_COLOUR)
  title = title or (f"nearest {result['db_split']} images in fc7 space "
                    f"({100 * result['same_label_fraction']:.0f}% share the query's label)")
  # Wrapped to the figure's width (about 13 characters per inch at this size): a long title
  # would otherwise run off the right edge, which a tight bounding box does not bring back.
  fig.suptitle(textwrap.fill(title + "; red: another class than the query's",
                             max(20, int(13 * width))), fontsize=9)
  return plotting.save(fig, path)


def run(workdir: str, out: str | None = None, *, query_split: str | None = None,
        db_split: str | None = None, queries: int = 8, k: int = 6,
        batch_size: int = 256) -> tuple[str, dict]:
  """Figure 4 for a trained work directory: the PNG, and a JSON of the numbers beside it."""
  from alexnet_jax import data

  if queries < 1 or k < 1:
    raise runs.ExperimentError(f"--queries {queries} and --k {k} must be >= 1")
  trained = runs.load_trained(workdir)
  cfg = trained.cfg
  query_split = query_split or cfg.data.eval_split
  db_split = db_split or cfg.data.train_split
  result = nearest(trained, query_split=query_split, db_split=db_split, queries=queries, k=k,
                   batch_size=batch_size)
  info = data.dataset_info(cfg)
  names = list(info.class_names) if len(info.class_names) == cfg.model.num_classes else None
  out = out or os.path.join(workdir, "neighbours.png")
  path = draw(result, out, class_names=names,
              title=f"{cfg.model.name} at step {trained.step}: {query_split} queries (framed) and "
                    f"their nearest {db_split} images by fc7 distance; "
                    f"{100 * result['same_label_fraction']:.0f}% share the query's label")
  numbers = {k_: v for k_, v in result.items() if not k_.endswith("_images")}
  with open(os.path.splitext(path)[0] + ".json", "w") as f:
    json.dump(runs.jsonable({"workdir": workdir, "step": trained.step, **numbers}), f, indent=1)
  return path, result
