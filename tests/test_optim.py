"""Optimizers and schedules against hand-written numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import optim
from alexnet_jax.configlib import base_config


def optim_cfg(**fields):
  cfg = base_config().optim
  for k, v in fields.items():
    cfg[k] = v
  return cfg


def params_and_grads(seed=0):
  rng = np.random.default_rng(seed)
  params = {"conv1": {"kernel": rng.normal(size=(3, 3, 2)).astype(np.float32),
                      "bias": rng.normal(size=(2,)).astype(np.float32)}}
  grads = [{"conv1": {"kernel": rng.normal(size=(3, 3, 2)).astype(np.float32),
                      "bias": rng.normal(size=(2,)).astype(np.float32)}} for _ in range(6)]
  return params, grads


def run(tx, params, grads, lrs):
  params = jax.tree.map(jnp.asarray, params)
  state = tx.init(params)
  for g, lr in zip(grads, lrs):
    state = optim.set_learning_rate(state, lr)
    updates, state = tx.update(jax.tree.map(jnp.asarray, g), state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
  return jax.tree.map(np.asarray, params)


LRS = [0.01, 0.01, 0.01, 0.001, 0.001, 0.001]  # a drop by 10 after three steps


def test_paper_rule_matches_the_papers_update_across_a_learning_rate_drop():
  params, grads = params_and_grads()
  tx = optim.make_optimizer(optim_cfg(name="paper", decay_exclude=()))
  got = run(tx, params, grads, LRS)
  for name in ("kernel", "bias"):
    w = params["conv1"][name].astype(np.float64)
    v = np.zeros_like(w)
    for g, lr in zip(grads, LRS):  # v <- 0.9 v - 0.0005 lr w - lr g ; w <- w + v
      v = 0.9 * v - 0.0005 * lr * w - lr * g["conv1"][name]
      w = w + v
    np.testing.assert_allclose(got["conv1"][name], w, rtol=1e-5, atol=1e-7)


def test_paper_rule_differs_from_lr_outside_momentum_after_a_drop():
  """optax.sgd(momentum) scales the whole trace by the new rate; the paper does not."""
  params, grads = params_and_grads()
  paper = run(optim.make_optimizer(optim_cfg(name="paper", weight_decay=0.0)), params, grads, LRS)
  w = params["conv1"]["kernel"].astype(np.float64)
  trace = np.zeros_like(w)
  for g, lr in zip(grads, LRS):
    trace = 0.9 * trace + g["conv1"]["kernel"]
    w = w - lr * trace
  assert not np.allclose(paper["conv1"]["kernel"], w, rtol=1e-6, atol=1e-8)


def test_sgdw_decays_outside_the_momentum_and_respects_the_mask():
  params, grads = params_and_grads(1)
  tx = optim.make_optimizer(optim_cfg(name="sgdw", weight_decay=0.01, decay_exclude=("bias",)))
  got = run(tx, params, grads, LRS)
  for name, wd in (("kernel", 0.01), ("bias", 0.0)):
    w = params["conv1"][name].astype(np.float64)
    trace = np.zeros_like(w)
    for g, lr in zip(grads, LRS):
      trace = 0.9 * trace + g["conv1"][name]
      w = w - lr * (trace + wd * w)
    np.testing.assert_allclose(got["conv1"][name], w, rtol=1e-5, atol=1e-7)


def test_lars_scales_each_layer_by_its_trust_ratio():
  params, grads = params_and_grads(2)
  tx = optim.make_optimizer(optim_cfg(name="lars", weight_decay=1e-4, momentum=0.9,
                                      lars_trust=0.001, decay_exclude=("bias",)))
  got = run(tx, params, grads, [0.5] * 3)
  # kernel: decayed and trust-scaled; bias: neither (plain momentum SGD).
  w = params["conv1"]["kernel"].astype(np.float64)
  b = params["conv1"]["bias"].astype(np.float64)
  vw, vb = np.zeros_like(w), np.zeros_like(b)
  for g in grads[:3]:
    u = g["conv1"]["kernel"] + 1e-4 * w
    u = u * 0.001 * np.linalg.norm(w) / np.linalg.norm(u)
    vw = 0.9 * vw + u
    w = w - 0.5 * vw
    vb = 0.9 * vb + g["conv1"]["bias"]
    b = b - 0.5 * vb
  np.testing.assert_allclose(got["conv1"]["kernel"], w, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(got["conv1"]["bias"], b, rtol=1e-5, atol=1e-7)


def test_decay_mask_by_path():
  params = {"conv1": {"kernel": 0, "bias": 0}, "conv1_bn": {"scale": 0, "bias": 0},
            "fc8": {"kernel": 0}}
  mask = optim.decay_mask(params, ("bias", "scale"))
  assert mask == {"conv1": {"kernel": True, "bias": False},
                  "conv1_bn": {"scale": False, "bias": False}, "fc8": {"kernel": True}}
  assert optim.decay_mask(params, ()) == jax.tree.map(lambda _: True, params)


def test_step_schedule_divides_every_30_epochs():
  f = optim.make_schedule(optim_cfg(schedule="step", learning_rate=0.1), 10, 1000)
  lrs = [float(f(jnp.asarray(s))) for s in (0, 299, 300, 599, 600)]
  np.testing.assert_allclose(lrs, [0.1, 0.1, 0.01, 0.01, 0.001], rtol=1e-6)


def test_warmup_then_cosine_and_linear_warmup_of_other_schedules():
  f = optim.make_schedule(optim_cfg(schedule="warmup_cosine", learning_rate=1.0,
                                    warmup_epochs=1.0), 10, 110)
  assert float(f(0)) == 0.0
  assert float(f(5)) == pytest.approx(0.5)
  assert float(f(10)) == pytest.approx(1.0)
  assert float(f(60)) == pytest.approx(0.5, abs=1e-6)  # halfway through the cosine
  assert float(f(110)) == pytest.approx(0.0, abs=1e-6)
  g = optim.make_schedule(optim_cfg(schedule="step", learning_rate=1.0, warmup_epochs=1.0), 10, 100)
  assert [float(g(s)) for s in (0, 4, 9, 10)] == pytest.approx([0.1, 0.5, 1.0, 1.0])


def test_plateau_drops_exactly_when_the_metric_stalls_at_most_three_times():
  p = optim.Plateau(factor=0.1, patience=2, max_drops=3)
  errors = [0.9, 0.8, 0.8, 0.81,   # two evaluations without improvement -> drop 1
            0.7, 0.75, 0.7,        # improvement, then two stalls -> drop 2
            0.69, 0.69, 0.69,      # drop 3
            0.69, 0.69, 0.69, 0.69]  # no more drops
  drops = [p.observe(e) for e in errors]
  assert [i for i, d in enumerate(drops) if d] == [3, 6, 9]
  assert p.drops == 3 and p.scale == pytest.approx(1e-3)
  # The bookkeeping survives a save and load.
  q = optim.Plateau(factor=0.1, patience=2, max_drops=3)
  q.load_state_dict(p.state_dict())
  assert (q.best, q.drops, q.bad_evals) == (p.best, p.drops, p.bad_evals)


def test_plateau_patience_one_drops_on_the_first_stall():
  p = optim.Plateau(patience=1)
  assert [p.observe(e) for e in (0.5, 0.4, 0.45, 0.3, 0.3)] == [False, False, True, False, True]


@pytest.mark.parametrize("field,value", [("name", "adam"), ("schedule", "linear")])
def test_unknown_names_are_rejected(field, value):
  cfg = optim_cfg(**{field: value})
  with pytest.raises(ValueError, match=f"config.optim.{field}"):
    optim.make_optimizer(cfg) if field == "name" else optim.make_schedule(cfg, 10, 100)


def test_sgd_couples_decay_into_the_momentum_like_pytorch():
  params, grads = params_and_grads(3)
  tx = optim.make_optimizer(optim_cfg(name="sgd", weight_decay=0.01, decay_exclude=()))
  got = run(tx, params, grads, LRS)
  w = params["conv1"]["kernel"].astype(np.float64)
  buf = np.zeros_like(w)
  for g, lr in zip(grads, LRS):  # torch.optim.SGD: d = g + wd*w; buf = m*buf + d; w -= lr*buf
    buf = 0.9 * buf + (g["conv1"]["kernel"] + 0.01 * w)
    w = w - lr * buf
  np.testing.assert_allclose(got["conv1"]["kernel"], w, rtol=1e-5, atol=1e-7)
