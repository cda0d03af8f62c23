"""The loss and the error metrics, in one place for training, evaluation and the experiments.

Padding examples (the last evaluation batches) carry weight 0, so every real example of a split
is counted exactly once whatever the batch size, device count or process layout.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def label_rank(scores: jax.Array, labels: jax.Array) -> jax.Array:
  """How many classes score strictly higher than the true one (0 = top-1 correct).

  The true class is left out by its index, not by `>`: where `scores` is computed inside the
  same fused program (an ensemble's mean of probabilities), XLA may compute the picked true
  score and the same element in the comparison with different rounding, and the true class
  would then outrank itself.
  """
  true_score = jnp.take_along_axis(scores, labels[:, None], axis=-1)
  others = jnp.arange(scores.shape[-1]) != labels[:, None]
  return jnp.sum((scores > true_score) & others, axis=-1)


def train_metrics(logits, labels, mask) -> dict[str, jax.Array]:
  """Means over the batch's real examples: the cross-entropy loss and top-1/top-5 error."""
  weights = mask.astype(jnp.float32)
  count = jnp.maximum(weights.sum(), 1.0)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  rank = label_rank(logits, labels)
  return {
      "loss": (losses * weights).sum() / count,
      "top1_err": ((rank >= 1) * weights).sum() / count,
      "top5_err": ((rank >= 5) * weights).sum() / count,
  }


def probability_sums(probs, labels, weights) -> dict[str, jax.Array]:
  """Sums over the batch's real examples (weights 1, padding 0) of the per-example loss and
  errors, from class probabilities (averaged over views or ensemble members already)."""
  true_prob = jnp.take_along_axis(probs, labels[:, None], axis=-1)[:, 0]
  rank = label_rank(probs, labels)
  return {"loss": (-jnp.log(jnp.maximum(true_prob, 1e-12)) * weights).sum(),
          "top1_err": ((rank >= 1) * weights).sum(),
          "top5_err": ((rank >= 5) * weights).sum()}


def view_probabilities(logits: jax.Array, lead: tuple[int, ...]) -> jax.Array:
  """Logits of (B * V) images -> probabilities (B, classes), averaged over the V views of each
  image as the paper does for its 10 views (`lead` is (B,) or (B, V))."""
  probs = jax.nn.softmax(logits).reshape(tuple(lead) + logits.shape[-1:])
  return probs.mean(axis=1) if probs.ndim == 3 else probs


def totals(sums_per_batch) -> dict[str, float]:
  """Add up per-batch sums (dicts with a "count"); -> means per example, plus "count"."""
  added: dict[str, float] = {}
  for sums in sums_per_batch:
    for k, v in sums.items():
      added[k] = added.get(k, 0.0) + float(v)
  count = added.pop("count", 0.0)
  result = {k: v / max(count, 1.0) for k, v in added.items()}
  result["count"] = count
  return result
