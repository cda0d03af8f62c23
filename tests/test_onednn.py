"""Convolutions through XLA:CPU's oneDNN custom call compute what XLA's own convolutions do."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alexnet_jax import model as M
from alexnet_jax.backend import ops, xla
from alexnet_jax.backend.cpu import onednn
from alexnet_jax.configlib import base_config

from runs import config_with


def test_available_on_this_cpu():
  # jaxlib 0.10 on x86-64 has the op; if a later jaxlib drops or changes it, `auto` falls back
  # to XLA's convolutions and this test says so.
  assert onednn.available()


@pytest.mark.parametrize("fault", ["wrong numbers", "an error"])
def test_not_available_where_the_custom_call_computes_otherwise_or_fails(monkeypatch, fault):
  def wrong(x, kernel, stride, padding, kernel_layout="HWIO"):
    if fault == "an error":
      raise RuntimeError("no such custom call")
    return 1.01 * onednn.xla_conv(x, kernel, stride, padding, kernel_layout)

  monkeypatch.setattr(onednn, "onednn_conv", wrong)
  assert onednn.available.__wrapped__() is False  # the probe itself, not the cached answer


# (batch, size, in, out, kernel, stride, padding): AlexNet's shapes shrunk, plus odd ones.
CASES = [
    (2, 35, 3, 8, 11, 4, 2),  # owt conv1
    (2, 31, 3, 8, 11, 4, 0),  # paper conv1 (no padding)
    (3, 9, 5, 12, 5, 1, 2),  # conv2
    (2, 7, 12, 10, 3, 1, 1),  # conv3-5
    (2, 8, 4, 6, 3, 2, 1),  # strided, even size
    (1, 6, 4, 5, 1, 1, 1),  # padding > kernel - 1: XLA's input gradient
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
def test_forward_and_gradients_match_xla(case):
  n, size, cin, cout, k, stride, padding = case
  kx, kw, kg = jax.random.split(jax.random.key(size * k), 3)
  x = jax.random.normal(kx, (n, size, size, cin))
  w = jax.random.normal(kw, (k, k, cin, cout)) * 0.2
  want = onednn.xla_conv(x, w, stride, padding)
  got = jax.jit(onednn.conv2d, static_argnums=(2, 3))(x, w, stride, padding)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  g = jax.random.normal(kg, want.shape)
  loss = lambda conv: jax.jit(jax.grad(lambda x, w: jnp.vdot(conv(x, w, stride, padding), g),
                                       (0, 1)))
  (dx, dw), (dx_ref, dw_ref) = loss(onednn.conv2d)(x, w), loss(onednn.xla_conv)(x, w)
  np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(dw, dw_ref, rtol=1e-5, atol=1e-4)


def test_the_custom_call_is_what_runs():
  x, w = jnp.ones((1, 6, 6, 2)), jnp.ones((3, 3, 2, 4))
  forward = jax.jit(lambda x, w: onednn.conv2d(x, w, 1, 1)).lower(x, w).compile().as_text()
  assert onednn.TARGET in forward and "convolution(" not in forward
  # Input gradient through oneDNN too; the weight gradient stays an XLA convolution.
  grads = jax.jit(jax.grad(lambda x, w: (onednn.conv2d(x, w, 1, 1) ** 2).sum(), (0, 1)))
  text = grads.lower(x, w).compile().as_text()
  assert text.count(onednn.TARGET) >= 2 and "convolution(" in text


def test_vmap_over_kernels_is_a_loop_of_convolutions():
  x = jax.random.normal(jax.random.key(0), (2, 7, 7, 4))
  ws = jax.random.normal(jax.random.key(1), (2, 3, 3, 4, 6))  # two towers' kernels
  ours = lambda ws: jax.vmap(lambda w: onednn.conv2d(x, w, 1, 1))(ws)
  ref = lambda ws: jax.vmap(lambda w: onednn.xla_conv(x, w, 1, 1))(ws)
  np.testing.assert_allclose(ours(ws), ref(ws), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(jax.grad(lambda ws: ours(ws).sum())(ws),
                             jax.grad(lambda ws: ref(ws).sum())(ws), rtol=1e-5, atol=1e-4)


FAST = {"xla_backend_optimization_level": 0}


def _model_cfg(name, **fields):
  cfg = base_config().model
  cfg.name, cfg.num_classes, cfg.width, cfg.dropout = name, 10, 0.25, 0.0
  for key, value in fields.items():
    cfg[key] = value
  return cfg


@pytest.mark.parametrize("name, size, tower_impl", [
    ("owt", 224, "unrolled"), ("paper", 227, "unrolled"), ("small", 32, "vmap")])
def test_models_compute_the_same_with_either_implementation(name, size, tower_impl):
  x = jax.random.normal(jax.random.key(2), (2, size, size, 3))

  def logits_and_grads(conv_impl):
    model = M.create_model(_model_cfg(name, conv_impl=conv_impl, tower_impl=tower_impl), size,
                           nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    loss = lambda p: jnp.sum(nnx.merge(graphdef, p, rest)(x) ** 2)
    # XLA's backend optimisation off (both sides alike): the same numbers, compiled faster.
    return jax.jit(jax.value_and_grad(loss), compiler_options=FAST)(params)

  (loss, grads), (loss_ref, grads_ref) = logits_and_grads("onednn"), logits_and_grads("xla")
  np.testing.assert_allclose(loss, loss_ref, rtol=1e-4)
  # Max pooling sends each gradient to its window's maximum: where two values nearly tie,
  # last-bit differences between the two convolutions can pick the other one, which moves a few
  # gradients (by up to ~6% of a kernel gradient's norm for `paper` at this width). A wrong
  # convolution would point elsewhere altogether: compare directions and sizes.
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref)):
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.99
    assert abs(np.linalg.norm(a) / np.linalg.norm(b) - 1) < 0.05


def test_model_wiring():
  small = lambda **f: M.create_model(_model_cfg("small", **f), 32, nnx.Rngs(0))
  spec = M.VARIANTS["small"].convs[1]
  assert small(conv_impl="onednn")._conv_function(spec) is onednn.conv2d_if_float32
  assert small(conv_impl="xla")._conv_function(spec) is xla.conv2d
  # bfloat16 stays with XLA: the same function as the plain convolution.
  x = jnp.ones((1, 8, 8, 4), jnp.bfloat16)
  w = jnp.ones((3, 3, 4, 2), jnp.float32)
  np.testing.assert_array_equal(onednn.conv2d_if_float32(x, w, 1, 1), xla.conv2d(x, w, 1, 1))
  conv = jax.jit(onednn.conv2d_if_float32, static_argnums=(2, 3))
  lowered = lambda x: conv.lower(x, w, 1, 1).as_text()
  assert onednn.TARGET not in lowered(x)
  assert onednn.TARGET in lowered(x.astype(jnp.float32))


def test_auto_takes_onednn_on_one_cpu_device_only(monkeypatch):
  assert jax.device_count() == 8  # the suite's virtual devices: meshes keep XLA's convolutions
  assert ops.resolve_conv_impl("auto") == "xla"
  monkeypatch.setattr(jax, "device_count", lambda: 1)
  assert ops.resolve_conv_impl("auto") == "onednn"
  monkeypatch.setattr(onednn, "available", lambda: False)
  assert ops.resolve_conv_impl("auto") == "xla"
  assert ops.resolve_conv_impl("xla") == "xla"


def test_bad_choices_name_the_field(monkeypatch):
  def check(**fields):  # what program.validate runs
    M.check_options(*M.options_from_config(_model_cfg("small", **fields), 32))

  with pytest.raises(ValueError, match="config.model.conv_impl='mkl'"):
    check(conv_impl="mkl")
  monkeypatch.setattr(onednn, "available", lambda: False)
  with pytest.raises(ValueError, match="config.model.conv_impl=onednn: .*use auto or xla"):
    check(conv_impl="onednn")


def test_a_train_step_on_one_device_matches_xla():
  """The jit-compiled, donated train step (optimizer included) on one CPU device."""
  from alexnet_jax import bench

  def one_step(conv_impl):
    cfg = config_with(**{"model.conv_impl": conv_impl, "batch_size": 8, "model.dropout": 0.0})
    setup = bench.build(cfg, devices=jax.devices()[:1])
    bench.run_steps(setup, 2)
    return setup.state.params

  ours, ref = one_step("onednn"), one_step("xla")
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
