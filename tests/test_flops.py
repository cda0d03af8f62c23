"""The FLOP counter against hand counts, the real parameter shapes, and XLA's own count."""

import jax
import jax.numpy as jnp
import pytest

from alexnet_jax import flops, program
from alexnet_jax.configlib import base_config


def model_cfg(name, **fields):
  cfg = base_config()
  cfg.model.name = name
  cfg.model.num_classes = fields.pop("num_classes", 1000)
  for key, value in fields.items():
    cfg.model[key] = value
  return cfg.model


# Multiply-adds per image, worked out by hand: output H*W x kernel H*W x in x out (x towers).
OWT_224 = {
    "conv1": 55 * 55 * 11 * 11 * 3 * 64,
    "conv2": 27 * 27 * 5 * 5 * 64 * 192,
    "conv3": 13 * 13 * 3 * 3 * 192 * 384,
    "conv4": 13 * 13 * 3 * 3 * 384 * 256,
    "conv5": 13 * 13 * 3 * 3 * 256 * 256,
    "fc6": 256 * 6 * 6 * 4096,
    "fc7": 4096 * 4096,
    "fc8": 4096 * 1000,
}
PAPER_227 = {  # two towers; conv1, conv3 and the dense layers read both towers
    "conv1": 2 * 55 * 55 * 11 * 11 * 3 * 48,
    "conv2": 2 * 27 * 27 * 5 * 5 * 48 * 128,
    "conv3": 2 * 13 * 13 * 3 * 3 * 256 * 192,
    "conv4": 2 * 13 * 13 * 3 * 3 * 192 * 192,
    "conv5": 2 * 13 * 13 * 3 * 3 * 192 * 128,
    "fc6": 2 * 256 * 6 * 6 * 2048,
    "fc7": 2 * 4096 * 2048,
    "fc8": 4096 * 1000,
}


def test_owt_matches_the_hand_count_and_torchvisions_figure():
  table = flops.layer_table(model_cfg("owt"), 224)
  assert {layer.name: layer.macs for layer in table} == OWT_224
  total = flops.forward_macs(model_cfg("owt"), 224)
  assert total == sum(OWT_224.values()) == 714_188_480  # torchvision: "0.71 GFLOPS"


@pytest.mark.parametrize("name, size, hand", [("owt", 224, OWT_224), ("paper", 227, PAPER_227)])
def test_a_training_step_counts_no_input_gradient_for_conv1(name, size, hand):
  """Forward + weight gradient + input gradient of every layer, 2 FLOPs per multiply-add, but
  conv1's input gradient (the gradient with respect to the image) is never computed."""
  by_hand = 2 * (3 * sum(hand.values()) - hand["conv1"])
  assert flops.train_flops_per_image(model_cfg(name), size) == by_hand
  if name == "owt":  # 4.14 GFLOP, not the 4.29 of "3 x forward"
    assert by_hand == 4_144_577_280


def test_xla_computes_no_gradient_for_the_image():
  """The premise: a convolution's gradient with respect to its weights alone costs one more
  pass (XLA's own count), not two, when its input needs no gradient."""
  images = jnp.ones((4, 16, 16, 3), jnp.float32)
  kernel = jnp.ones((5, 5, 3, 8), jnp.float32)
  conv = lambda w, x: jnp.square(jax.lax.conv_general_dilated(  # squared: grad needs forward
      x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))).sum()
  cost = lambda f: f.lower(kernel, images).compile().cost_analysis()["flops"]
  forward = cost(jax.jit(conv))
  weights_only = cost(jax.jit(jax.grad(conv)))
  both = cost(jax.jit(jax.grad(conv, argnums=(0, 1))))
  assert 1.9 < weights_only / forward < 2.1 and 2.9 < both / forward < 3.1


def test_paper_towers_count_twice_where_they_are_separate():
  table = flops.layer_table(model_cfg("paper"), 227)
  assert {layer.name: layer.macs for layer in table} == PAPER_227
  assert [layer.towers for layer in table] == [2, 2, 2, 2, 2, 2, 2, 1]


def test_fields_that_change_the_network_change_the_count():
  base = flops.forward_macs(model_cfg("owt"), 224)
  assert flops.forward_macs(model_cfg("owt", num_classes=10), 224) == base - 4096 * 990
  half = flops.layer_table(model_cfg("owt", width=0.5), 224)
  assert half[0].kernel == (11, 11, 3, 32) and half[1].kernel == (5, 5, 32, 96)
  # owt's adaptive pooling keeps fc6 at 6x6x256 inputs for larger images; the convs grow.
  big = {layer.name: layer for layer in flops.layer_table(model_cfg("owt"), 256)}
  assert big["fc6"].kernel == (9216, 4096) and big["conv1"].out_hw == (63, 63)
  # Non-overlapping 2x2 pools shrink conv3-5 and fc6 of the small model.
  over = {l.name: l for l in flops.layer_table(model_cfg("small", num_classes=10), 32)}
  non = {l.name: l for l in flops.layer_table(model_cfg("small", num_classes=10,
                                                      pool="nonoverlap"), 32)}
  assert over["conv3"].out_hw == (7, 7) and non["conv3"].out_hw == (8, 8)
  assert non["fc6"].kernel[0] == 4 * 4 * 64 and over["fc6"].kernel[0] == 3 * 3 * 64


@pytest.mark.parametrize("name, size", [("owt", 224), ("paper", 227), ("paper6", 227),
                                        ("bn", 227), ("small", 32)])
def test_kernel_shapes_are_the_models_own(name, size):
  cfg = base_config()
  cfg.model.name, cfg.model.num_classes, cfg.data.crop_size = name, 1000, size
  params = jax.eval_shape(program.model_fns(cfg).init, jax.random.key(0))[0]
  for layer in flops.layer_table(cfg.model, size):
    shape = params[layer.name]["kernel"].shape
    lead = (layer.towers,) if layer.towers > 1 else ()
    assert shape == lead + layer.kernel, layer.name


def taps_inside(size, kernel, stride, padding):
  """Kernel taps that land inside the image (not on zero padding), summed over one output row."""
  out = (size + 2 * padding - kernel) // stride + 1
  return sum(1 for i in range(out) for t in range(kernel) if 0 <= i * stride - padding + t < size)


def test_xla_counts_the_same_forward_flops():
  """XLA's cost model of the compiled forward pass agrees with the table, once the taps that
  fall on zero padding are left out as XLA does (the table counts every tap, the usual
  convention); XLA also counts the elementwise work, a few percent here."""
  cfg = base_config()
  cfg.model.name, cfg.model.num_classes, cfg.data.crop_size = "small", 10, 32
  fns = program.model_fns(cfg)
  params, state = fns.init(jax.random.key(0))
  images = jnp.zeros((4, 32, 32, 3), jnp.float32)
  forward = jax.jit(lambda p, x: fns.apply(p, state, x, train=False)[0])
  xla = forward.lower(params, images).compile().cost_analysis()["flops"]

  inside, size = 0, 32  # small: 5x5 pad 2, 5x5 pad 2, then 3x3 pad 1; 3x3/2 pools after 1, 2, 5
  for layer, (kernel, padding, pooled) in zip(
      flops.layer_table(cfg.model, 32),
      [(5, 2, True), (5, 2, True), (3, 1, False), (3, 1, False), (3, 1, True)]):
    kh, kw, cin, cout = layer.kernel
    inside += layer.towers * taps_inside(size, kernel, 1, padding) ** 2 * cin * cout
    size = (layer.out_hw[0] - 3) // 2 + 1 if pooled else layer.out_hw[0]
  dense = sum(layer.macs for layer in flops.layer_table(cfg.model, 32) if layer.kind == "dense")
  expected = 2 * 4 * (inside + dense)
  assert expected <= xla <= 1.05 * expected, (xla, expected)
  assert 2 * 4 * flops.forward_macs(cfg.model, 32) > expected  # padding taps counted too


def test_table_prints_every_layer_and_the_total():
  text = flops.format_table(flops.layer_table(model_cfg("owt"), 224))
  assert "conv1" in text and "fc8" in text and "714.2" in text
