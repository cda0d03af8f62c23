"""LRN's formulations (config.model.lrn_impl): the paper's formula, value and gradient, each way."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alexnet_jax import configlib
from alexnet_jax import model as M
from alexnet_jax import program
from alexnet_jax.backend import ops, xla

IMPLS = ("reduce_window", "matmul", "slices")
# (k, n, alpha, beta): the paper's, and one where the normalisation dominates.
PARAMS = [(2.0, 5, 1e-4, 0.75), (1.0, 3, 0.5, 0.5)]


def lrn_formula(a, k, n, alpha, beta):
  """b_i = a_i / (k + alpha * sum_{j=max(0, i-n/2)}^{min(N-1, i+n/2)} a_j^2)^beta, in float64."""
  a = a.astype(np.float64)
  out = np.empty_like(a)
  channels = a.shape[-1]
  for i in range(channels):
    lo, hi = max(0, i - n // 2), min(channels - 1, i + n // 2)
    out[..., i] = a[..., i] / (k + alpha * np.sum(a[..., lo:hi + 1] ** 2, axis=-1)) ** beta
  return out


def lrn_formula_grad(a, g, k, n, alpha, beta):
  """The gradient of sum(g * b) with respect to a, differentiated by hand, in float64:
  d/da_m = g_m D_m^-beta - 2 alpha beta a_m sum_{i: |i-m| <= n/2} g_i a_i D_i^(-beta-1),
  where D_i = k + alpha * (the window sum of squares around i)."""
  a, g = a.astype(np.float64), g.astype(np.float64)
  channels = a.shape[-1]
  d = np.empty_like(a)
  for i in range(channels):
    lo, hi = max(0, i - n // 2), min(channels - 1, i + n // 2)
    d[..., i] = k + alpha * np.sum(a[..., lo:hi + 1] ** 2, axis=-1)
  through_sum = g * a * d ** (-beta - 1)
  grad = g * d ** -beta
  for m in range(channels):
    lo, hi = max(0, m - n // 2), min(channels - 1, m + n // 2)
    grad[..., m] -= 2 * alpha * beta * a[..., m] * np.sum(through_sum[..., lo:hi + 1], axis=-1)
  return grad


def activations(shape, seed=0, scale=20.0):
  """ReLU-like inputs large enough that alpha * sum of squares is of the order of k."""
  rng = np.random.default_rng(seed)
  return np.maximum(rng.normal(0, scale, size=shape), 0).astype(np.float32)


def test_the_hand_gradient_is_the_formulas():
  """The reference gradient against central differences of the reference formula."""
  k, n, alpha, beta = 1.0, 3, 0.5, 0.5
  a = np.random.default_rng(1).normal(0, 2, size=(1, 1, 1, 6))
  g = np.random.default_rng(2).normal(size=a.shape)
  eps = 1e-6
  numeric = np.empty_like(a)
  for m in range(a.shape[-1]):
    step = np.zeros_like(a)
    step[..., m] = eps
    numeric[..., m] = np.sum(g * (lrn_formula(a + step, k, n, alpha, beta)
                                  - lrn_formula(a - step, k, n, alpha, beta))) / (2 * eps)
  np.testing.assert_allclose(lrn_formula_grad(a, g, k, n, alpha, beta), numeric, rtol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("k,n,alpha,beta", PARAMS)
@pytest.mark.parametrize("channels", [11, 2])  # 2 < n: every window is cut by both edges
def test_float32_value_and_gradient_are_the_formulas(impl, k, n, alpha, beta, channels):
  a = activations((2, 3, 3, channels))
  g = np.random.default_rng(3).normal(size=a.shape).astype(np.float32)
  lrn = lambda x: M.local_response_norm(x, k, n, alpha, beta, impl)
  out, vjp = jax.vjp(lrn, jnp.asarray(a))
  np.testing.assert_allclose(out, lrn_formula(a, k, n, alpha, beta), rtol=2e-6, atol=1e-7)
  expected = lrn_formula_grad(a, g, k, n, alpha, beta)
  np.testing.assert_allclose(vjp(jnp.asarray(g))[0], expected, rtol=1e-5,
                             atol=1e-6 * np.abs(expected).max())


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("k,n,alpha,beta", PARAMS)
def test_bfloat16_value_and_gradient_are_the_formulas(impl, k, n, alpha, beta):
  """bfloat16 in, bfloat16 out, float32 inside: within bfloat16's rounding of the exact result
  for the same (rounded) inputs, and equal to today's reduce_window to the last bit but one."""
  a = jnp.asarray(activations((2, 3, 3, 11), seed=4), jnp.bfloat16)
  g = jnp.asarray(np.random.default_rng(5).normal(size=a.shape), jnp.bfloat16)
  a64, g64 = np.asarray(a, np.float64), np.asarray(g, np.float64)
  lrn = lambda impl: (lambda x: M.local_response_norm(x, k, n, alpha, beta, impl))
  out, vjp = jax.vjp(lrn(impl), a)
  grad = vjp(g)[0]
  assert out.dtype == grad.dtype == jnp.bfloat16
  bf16_ulp = 2.0 ** -8  # relative spacing of bfloat16 values
  np.testing.assert_allclose(np.asarray(out, np.float64), lrn_formula(a64, k, n, alpha, beta),
                             rtol=bf16_ulp)
  expected = lrn_formula_grad(a64, g64, k, n, alpha, beta)
  # The gradient sums several terms rounded to bfloat16 on the way (the cotangents' dtype).
  np.testing.assert_allclose(np.asarray(grad, np.float64), expected, rtol=4 * bf16_ulp,
                             atol=4 * bf16_ulp * np.abs(expected).max())
  today_out, today_vjp = jax.vjp(lrn("reduce_window"), a)
  np.testing.assert_allclose(np.asarray(out, np.float64), np.asarray(today_out, np.float64),
                             rtol=bf16_ulp)
  np.testing.assert_allclose(np.asarray(grad, np.float64),
                             np.asarray(today_vjp(g)[0], np.float64),
                             rtol=2 * bf16_ulp, atol=2 * bf16_ulp * np.abs(expected).max())


def test_the_matmul_is_a_matrix_product_and_so_is_its_gradient():
  """What makes it fit GPUs: dots in the compiled program, forward and backward, no reduce_window."""
  x = jnp.ones((2, 5, 5, 16), jnp.float32)
  lrn = lambda x: M.local_response_norm(x, impl="matmul")
  for f in (lrn, jax.grad(lambda x: lrn(x).sum())):
    hlo = jax.jit(f).lower(x).as_text()
    assert "dot_general" in hlo and "reduce_window" not in hlo
  hlo = jax.jit(lambda x: M.local_response_norm(x, impl="reduce_window")).lower(x).as_text()
  assert "reduce_window" in hlo and "dot_general" not in hlo


def test_auto_takes_reduce_window_on_cpus_and_gpus(monkeypatch):
  assert jax.default_backend() == "cpu"  # the tests run on CPU
  assert ops.resolve_lrn_impl("auto") == "reduce_window"
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")  # measured fastest there too
  assert ops.resolve_lrn_impl("auto") == "reduce_window"
  assert ops.resolve_lrn_impl("slices") == "slices"
  assert ops.resolve_lrn_impl("matmul") == "matmul"


def build_small(lrn_impl, dtype="float32"):
  cfg = configlib.base_config().model
  cfg.name, cfg.num_classes, cfg.width, cfg.lrn_impl, cfg.dtype = "small", 10, 0.5, lrn_impl, dtype
  return M.create_model(cfg, 32, nnx.Rngs(0))


def test_the_model_computes_the_same_logits_and_gradients_each_way():
  assert ops.pool_function("auto") is not xla.max_pool  # the only other reduce_window on CPU
  x = jnp.asarray(activations((2, 32, 32, 3), seed=6, scale=1.0))
  graphdef, params = nnx.split(build_small("reduce_window"))

  def loss_and_grad(impl):
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: build_small(impl)))  # lrn_impl is static
    loss = lambda p: jnp.sum(nnx.merge(graphdef, p)(x, train=False) ** 2)
    step = jax.jit(jax.value_and_grad(loss))
    return *step(params), step.lower(params).as_text()

  base_loss, base_grad, base_hlo = loss_and_grad("reduce_window")
  for impl in ("matmul", "slices"):
    loss, grad, hlo = loss_and_grad(impl)
    assert "reduce_window" not in hlo and "reduce_window" in base_hlo  # the field is used
    np.testing.assert_allclose(loss, base_loss, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4,
                                                         atol=1e-5 * np.abs(b).max()),
                 grad, base_grad)


@pytest.mark.parametrize("field,value,needle", [
    ("lrn_impl", "fft", "config.model.lrn_impl='fft': choose auto, reduce_window, matmul, slices"),
    ("lrn_n", 4, "config.model.lrn_n=4: must be odd"),
])
def test_a_bad_lrn_field_is_one_line_naming_it(field, value, needle):
  cfg = configlib.base_config()
  cfg.model[field] = value
  with pytest.raises(configlib.ConfigError) as e:
    program.validate(cfg)
  assert needle in str(e.value) and "\n" not in str(e.value)
