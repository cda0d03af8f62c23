"""The fast layer forms compute what the plain ones do, gradients included (ties too)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alexnet_jax import model as M
from alexnet_jax.backend import ops, xla
from alexnet_jax.backend import sliced_pool
from alexnet_jax.configlib import base_config


def grads(pool, x, cotangent):
  return jax.grad(lambda x: jnp.sum(pool(x) * cotangent))(x)


@pytest.mark.parametrize("window, stride, size", [(3, 2, 14), (2, 2, 13)])
def test_sliced_max_pool_equals_reduce_window_with_ties(window, stride, size):
  key_x, key_g = jax.random.split(jax.random.key(size))
  # ReLU outputs rounded to quarters: many windows hold their maximum twice or more (zeros).
  x = jnp.round(jax.nn.relu(jax.random.normal(key_x, (3, size, size + 1, 5))) * 4) / 4
  reference = xla.max_pool(x, window, stride)
  ours = sliced_pool.max_pool(x, window, stride)
  np.testing.assert_array_equal(ours, reference)
  # Integer cotangents: where windows overlap, sums are exact in any order, so equality below
  # checks where each gradient goes, not the order of float additions.
  g = jax.random.randint(key_g, reference.shape, -8, 9).astype(jnp.float32)
  # select_and_scatter's gradient: each window's gradient to its first maximum, row-major.
  np.testing.assert_array_equal(grads(lambda v: sliced_pool.max_pool(v, window, stride), x, g),
                                grads(lambda v: xla.max_pool(v, window, stride), x, g))


def test_sliced_max_pool_gradient_goes_to_the_first_maximum():
  x = jnp.zeros((1, 3, 3, 1))  # one window, all equal
  g = jax.grad(lambda v: sliced_pool.max_pool(v, 3, 2).sum())(x)
  expected = np.zeros((1, 3, 3, 1))
  expected[0, 0, 0, 0] = 1.0
  np.testing.assert_array_equal(g, expected)
  x = x.at[0, 1, 2, 0].set(1.0).at[0, 2, 0, 0].set(1.0)  # two maxima: (1, 2) comes first
  g = jax.grad(lambda v: sliced_pool.max_pool(v, 3, 2).sum())(x)
  assert g[0, 1, 2, 0] == 1.0 and g.sum() == 1.0


def test_sliced_max_pool_in_bfloat16():
  x = jax.random.normal(jax.random.key(1), (2, 13, 13, 4)).astype(jnp.bfloat16)
  np.testing.assert_array_equal(sliced_pool.max_pool(x, 3, 2), xla.max_pool(x, 3, 2))
  g = jnp.ones((2, 6, 6, 4), jnp.bfloat16)
  np.testing.assert_array_equal(grads(lambda v: sliced_pool.max_pool(v, 3, 2), x, g),
                                grads(lambda v: xla.max_pool(v, 3, 2), x, g))


@pytest.mark.parametrize("size, padding", [(224, 2), (227, 0)])
def test_space_to_depth_conv1_equals_the_strided_convolution(size, padding):
  key_x, key_w, key_g = jax.random.split(jax.random.key(size), 3)
  x = jax.random.normal(key_x, (1, size, size, 3))
  w = jax.random.normal(key_w, (11, 11, 3, 4)) * 0.05
  direct = lambda x, w: xla.conv2d(x, w, 4, padding)
  folded = lambda x, w: xla.conv2d_space_to_depth(x, w, 4, padding)
  ref = direct(x, w)
  np.testing.assert_allclose(folded(x, w), ref, atol=2e-5, rtol=1e-5)
  g = jax.random.normal(key_g, ref.shape)
  dw_ref = jax.grad(lambda w: jnp.sum(direct(x, w) * g))(w)
  dw = jax.grad(lambda w: jnp.sum(folded(x, w) * g))(w)
  np.testing.assert_allclose(dw, dw_ref, atol=1e-3, rtol=1e-4)


def build(**fields):
  cfg = base_config().model
  cfg.name, cfg.num_classes, cfg.width = "small", 10, 0.5
  for key, value in fields.items():
    cfg[key] = value
  return M.create_model(cfg, 32, nnx.Rngs(0))


def jaxpr_text(model, x, *, grad=True):
  """The printed jaxpr of the model's gradient or forward pass (nested jaxprs included)."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  forward = lambda params: jnp.sum(nnx.merge(graphdef, params, rest)(x))
  return str(jax.make_jaxpr(jax.grad(forward) if grad else forward)(params))


def test_model_pool_and_conv1_choices_are_wired_in():
  x = jnp.zeros((2, 32, 32, 3))
  plain = jaxpr_text(build(pool_impl="reduce_window"), x)
  assert "reduce_window_max" in plain and "select_and_scatter_add" in plain
  sliced = jaxpr_text(build(pool_impl="slices"), x)
  assert "reduce_window_max" not in sliced and "select_and_scatter_add" not in sliced
  assert "custom_vjp_call" in jaxpr_text(build(pool_impl="slices"), x, grad=False)
  # conv1 of `small` has stride 1: space_to_depth leaves it alone. owt's (stride 4) folds.
  small_conv1 = M.VARIANTS["small"].convs[0]
  assert build(conv1_impl="space_to_depth")._conv_function(small_conv1) is xla.conv2d
  owt = nnx.eval_shape(lambda: M.create_model(_owt_cfg(conv1_impl="space_to_depth"), 224,
                                              nnx.Rngs(0)))
  assert owt._conv_function(owt.conv_specs[0]) is xla.conv2d_space_to_depth
  assert owt.conv1.kernel.shape == (11, 11, 3, 64)  # the parameter keeps its shape


def test_auto_conv1_folds_on_gpus_only(monkeypatch):
  owt = nnx.eval_shape(lambda: M.create_model(_owt_cfg(), 224, nnx.Rngs(0)))
  assert owt.opts.conv1_impl == "auto"  # the default
  assert jax.default_backend() == "cpu"  # the tests run on CPU
  assert owt._conv_function(owt.conv_specs[0]) is not xla.conv2d_space_to_depth
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")  # measured faster there
  assert owt._conv_function(owt.conv_specs[0]) is xla.conv2d_space_to_depth
  assert ops.resolve_conv1_impl("direct") == "direct"


def _owt_cfg(**fields):
  cfg = base_config().model
  cfg.name, cfg.num_classes = "owt", 10
  for key, value in fields.items():
    cfg[key] = value
  return cfg


def test_auto_pooling_takes_slices_on_cpus_and_gpus(monkeypatch):
  assert ops.pool_function("auto") is sliced_pool.max_pool  # the tests run on CPU
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")  # measured faster there too
  assert ops.pool_function("auto") is sliced_pool.max_pool
  assert ops.pool_function("reduce_window") is xla.max_pool


@pytest.mark.parametrize("field, value", [("pool_impl", "fft"), ("conv1_impl", "winograd")])
def test_unknown_implementations_name_the_field(field, value):
  cfg = base_config().model
  cfg[field] = value
  with pytest.raises(ValueError, match=f"config.model.{field}={value!r}"):
    M.check_options(*M.options_from_config(cfg, 32))  # what program.validate runs
