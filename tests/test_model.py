"""The network: layer table, parameter totals, shapes, LRN, towers, initialisation, ablations."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alexnet_jax import model as M
from alexnet_jax.backend import xla
from alexnet_jax.configlib import base_config


def build(name, *, input_size=None, num_classes=1000, seed=0, **fields):
  cfg = base_config().model
  cfg.name, cfg.num_classes = name, num_classes
  for k, v in fields.items():
    cfg[k] = v
  return M.create_model(cfg, input_size or M.VARIANTS[name].input_size, nnx.Rngs(seed))


def abstract(name, **kw):
  """The model's parameters as shapes only: counting needs no random numbers."""
  return nnx.eval_shape(lambda: build(name, **kw))


def flat_params(model):
  return {"/".join(map(str, k)): np.asarray(v) for k, v in
          nnx.to_flat_state(nnx.state(model, nnx.Param))}


def forward(model, x, **kw):
  graphdef, state = nnx.split(model)
  return jax.jit(lambda s, x: nnx.merge(graphdef, s)(x, **kw))(state, x)


# The paper's layer table (PAPER.md), written out here independently of model.py:
# (name, kernel, in channels per tower, out channels per tower, reads both towers)
PAPER_TABLE = [
    ("conv1", 11, 3, 48, True),
    ("conv2", 5, 48, 128, False),
    ("conv3", 3, 256, 192, True),
    ("conv4", 3, 192, 192, False),
    ("conv5", 3, 192, 128, False),
]


def count_table(convs, towers, fc_in, fc_widths, classes):
  total = sum(towers * (k * k * cin * cout + cout) for _, k, cin, cout, _ in convs)
  for width in fc_widths:  # per tower, each reading every tower's units
    total += towers * (fc_in * width + width)
    fc_in = towers * width
  return total + fc_in * classes + classes


def test_parameter_totals_match_the_layer_tables():
  paper = count_table(PAPER_TABLE, 2, 6 * 6 * 256, [2048, 2048], 1000)
  assert paper == 60_965_224  # the often-quoted "60 million"
  assert M.count_params(abstract("paper")) == paper
  paper6 = paper + 2 * (3 * 3 * 128 * 128 + 128)
  assert M.count_params(abstract("paper6")) == paper6
  owt_convs = [("c1", 11, 3, 64, 1), ("c2", 5, 64, 192, 1), ("c3", 3, 192, 384, 1),
               ("c4", 3, 384, 256, 1), ("c5", 3, 256, 256, 1)]
  owt = count_table(owt_convs, 1, 6 * 6 * 256, [4096, 4096], 1000)
  assert owt == 61_100_840  # torchvision's alexnet
  assert M.count_params(abstract("owt")) == owt
  # bn: the paper's widths in one tower; BatchNorm's scale and bias replace each conv bias.
  bn_convs = [("c1", 11, 3, 96, 1), ("c2", 5, 96, 256, 1), ("c3", 3, 256, 384, 1),
              ("c4", 3, 384, 384, 1), ("c5", 3, 384, 256, 1)]
  bn = count_table(bn_convs, 1, 6 * 6 * 256, [4096, 4096], 1000)
  bn += sum(cout for *_, cout, _ in bn_convs)  # + scale and bias, - the conv bias
  assert M.count_params(abstract("bn")) == bn


def test_paper_parameters_carry_an_explicit_tower_axis():
  shapes = {"/".join(map(str, k)): v.shape for k, v in
            nnx.to_flat_state(nnx.state(abstract("paper"), nnx.Param))}
  for name, k, cin, cout, _ in PAPER_TABLE:
    assert shapes[f"{name}/kernel"] == (2, k, k, cin, cout)
    assert shapes[f"{name}/bias"] == (2, cout)
  assert shapes["fc6/kernel"] == (2, 9216, 2048)
  assert shapes["fc7/kernel"] == (2, 4096, 2048)
  assert shapes["fc8/kernel"] == (4096, 1000)


@pytest.mark.parametrize("name,size,classes", [
    ("paper", 227, 1000), ("paper6", 227, 1000), ("owt", 224, 1000), ("bn", 227, 1000),
    ("small", 32, 10), ("cnn4", 32, 10), ("paper", 224 + 3, 17)])
def test_full_size_output_shapes(name, size, classes):
  """The forward pass traced on shapes only (tests/test_train.py runs a full-size train step of
  each variant and checks its loss is finite)."""
  model = abstract(name, input_size=size, num_classes=classes)
  graphdef, state = nnx.split(model)
  logits = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x, train=False), state,
                          jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32))
  assert logits.shape == (2, classes) and logits.dtype == jnp.float32


def test_owt_accepts_other_sizes_through_adaptive_pooling():
  model = build("owt", input_size=256, num_classes=5)
  assert forward(model, jnp.ones((1, 256, 256, 3)), train=False).shape == (1, 5)


def lrn_reference(a, k, n, alpha, beta):
  """The paper's formula, one channel at a time."""
  out = np.empty_like(a)
  channels = a.shape[-1]
  for i in range(channels):
    lo, hi = max(0, i - n // 2), min(channels - 1, i + n // 2)
    s = np.sum(a[..., lo:hi + 1] ** 2, axis=-1)
    out[..., i] = a[..., i] / (k + alpha * s) ** beta
  return out


@pytest.mark.parametrize("k,n,alpha,beta", [(2.0, 5, 1e-4, 0.75), (1.0, 3, 0.5, 0.5)])
def test_lrn_matches_the_formula(k, n, alpha, beta):
  a = np.random.default_rng(0).normal(0, 20, size=(2, 3, 3, 11)).astype(np.float32)
  got = np.asarray(M.local_response_norm(jnp.asarray(a), k, n, alpha, beta))
  np.testing.assert_allclose(got, lrn_reference(a, k, n, alpha, beta), rtol=1e-5)


def test_lrn_alpha_is_not_divided_by_n():
  a = np.zeros((1, 1, 1, 5), np.float32)
  a[..., 2] = 10.0
  got = float(M.local_response_norm(jnp.asarray(a))[0, 0, 0, 2])
  assert got == pytest.approx(10.0 / (2 + 1e-4 * 100) ** 0.75, rel=1e-6)


def test_max_pool_overlapping_and_not():
  x = np.arange(2 * 7 * 7 * 1, dtype=np.float32).reshape(2, 7, 7, 1)
  over = np.asarray(xla.max_pool(jnp.asarray(x), 3, 2))
  non = np.asarray(xla.max_pool(jnp.asarray(x), 2, 2))
  assert over.shape == (2, 3, 3, 1) and non.shape == (2, 3, 3, 1)
  for i in range(3):
    for j in range(3):
      assert over[0, i, j, 0] == x[0, 2 * i:2 * i + 3, 2 * j:2 * j + 3, 0].max()
      assert non[0, i, j, 0] == x[0, 2 * i:2 * i + 2, 2 * j:2 * j + 2, 0].max()


def test_adaptive_avg_pool_matches_pytorch_bins():
  x = np.random.default_rng(1).normal(size=(1, 13, 13, 2)).astype(np.float32)
  got = np.asarray(M.adaptive_avg_pool(jnp.asarray(x), 6))
  for i in range(6):
    for j in range(6):
      r0, r1 = math.floor(i * 13 / 6), math.ceil((i + 1) * 13 / 6)
      c0, c1 = math.floor(j * 13 / 6), math.ceil((j + 1) * 13 / 6)
      np.testing.assert_allclose(got[0, i, j], x[0, r0:r1, c0:c1].mean(axis=(0, 1)), rtol=1e-5)


# --- towers ---------------------------------------------------------------------------------


def tower_outputs(model, params, x):
  """Run the model recording every towered segment's output (T, N, ...), in order."""
  outputs = []

  def recording_map(segment):
    def run(x, p):
      y = jax.vmap(segment, in_axes=(None, 0))(x, p)
      outputs.append(np.asarray(y))
      return y
    return run

  graphdef, _, rest = nnx.split(model, nnx.Param, ...)
  recording = nnx.merge(graphdef, params, rest)
  recording.placement = M.Placement(tower_map=recording_map)
  recording(x, train=False)
  return outputs  # [after conv1-conv2, after conv3-conv5, fc6, fc7]


def perturb(params, layer, tower):
  new = jax.tree.map(lambda a: a, params)
  kernel = np.array(new[layer]["kernel"])
  kernel[tower] += np.random.default_rng(7).normal(0, 0.05, kernel[tower].shape)
  new[layer]["kernel"] = jnp.asarray(kernel)
  return new


def test_towers_talk_only_where_the_paper_says():
  model = build("paper", num_classes=10, width=0.25, input_size=99)
  _, params, _ = nnx.split(model, nnx.Param, ...)
  params = nnx.to_pure_dict(params)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 99, 99, 3)), jnp.float32)
  base = tower_outputs(model, params, x)
  assert [o.shape[0] for o in base] == [2, 2, 2, 2]

  # Changing tower 0's conv1 changes tower 0's input to conv2. conv2 reads its own tower only:
  # tower 1's conv2 output is unchanged. conv3 reads both towers: tower 1's conv3 output changes.
  out = tower_outputs(model, perturb(params, "conv1", 0), x)
  assert not np.allclose(out[0][0], base[0][0])
  np.testing.assert_array_equal(out[0][1], base[0][1])
  assert not np.allclose(out[1][1], base[1][1])

  # Changing tower 0's conv3 changes tower 0's input to conv4 (and so conv5); both read their
  # own tower only: tower 1 is unchanged through conv5. fc6 reads both: tower 1's fc6 changes.
  out = tower_outputs(model, perturb(params, "conv3", 0), x)
  assert not np.allclose(out[1][0], base[1][0])
  np.testing.assert_array_equal(out[1][1], base[1][1])
  assert not np.allclose(out[2][1], base[2][1])

  # Changing tower 0's conv4 changes tower 0's input to conv5; tower 1's conv5 is unchanged.
  out = tower_outputs(model, perturb(params, "conv4", 0), x)
  assert not np.allclose(out[1][0], base[1][0])
  np.testing.assert_array_equal(out[1][1], base[1][1])

  # fc7 reads both towers' fc6 units.
  out = tower_outputs(model, perturb(params, "fc6", 0), x)
  np.testing.assert_array_equal(out[2][1], base[2][1])
  assert not np.allclose(out[3][1], base[3][1])


def test_towered_model_equals_its_grouped_convolution_form():
  """Each own-tower layer is a grouped convolution (Caffe's `group: 2`) on merged channels."""
  model = build("paper", num_classes=10, width=0.25, input_size=67)
  p = nnx.to_pure_dict(nnx.split(model, nnx.Param, ...)[1])
  x = jnp.asarray(np.random.default_rng(2).normal(size=(1, 27, 27, 24)), jnp.float32)
  k = p["conv2"]["kernel"]  # (2, 5, 5, 12, 32)
  towered = M.merge_towers(jax.vmap(lambda xt, kt: xla.conv2d(xt, kt, 1, 2))(
      jnp.stack([x[..., :12], x[..., 12:]]), k))
  grouped = jax.lax.conv_general_dilated(
      x, jnp.concatenate([k[0], k[1]], axis=-1), (1, 1), [(2, 2)] * 2,
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=2)
  np.testing.assert_allclose(towered, grouped, rtol=1e-5, atol=1e-5)


# --- initialisation -------------------------------------------------------------------------


# The paper's initialisation is checked on its full-size network in test_train.py, where the
# same state then trains a step (initialising 61 million weights is the expensive part).


def test_pytorch_initialisation_of_owt():
  p = flat_params(build("owt"))
  fan_in = {"conv1": 11 * 11 * 3, "conv3": 3 * 3 * 192, "fc6": 9216, "fc8": 4096}
  for name, fan in fan_in.items():
    bound = 1 / math.sqrt(fan)
    for kind in ("kernel", "bias"):
      a = p[f"{name}/{kind}"]
      assert np.abs(a).max() <= bound
    assert p[f"{name}/kernel"].std() == pytest.approx(bound / math.sqrt(3), rel=0.05)


def test_seeds_give_different_initialisations_and_same_seed_same():
  a, b, c = (flat_params(build("small", num_classes=10, seed=s)) for s in (0, 0, 1))
  np.testing.assert_array_equal(a["conv3/kernel"], b["conv3/kernel"])
  assert not np.allclose(a["conv3/kernel"], c["conv3/kernel"])


# --- ablations and modes --------------------------------------------------------------------


def test_lrn_switch_and_identity_lrn():
  x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 32, 32, 3)), jnp.float32)
  with_lrn = forward(build("small", num_classes=10), x, train=False)
  without = forward(build("small", num_classes=10, norm="none"), x, train=False)
  # LRN with k=1, alpha=0 is the identity, so it must equal the network without LRN.
  identity = forward(build("small", num_classes=10, lrn_k=1.0, lrn_alpha=0.0), x, train=False)
  np.testing.assert_allclose(identity, without, rtol=1e-5, atol=1e-6)
  assert not np.allclose(with_lrn, without)


def test_pooling_and_activation_fields_change_the_network():
  x = jnp.asarray(np.random.default_rng(4).normal(size=(2, 32, 32, 3)), jnp.float32)
  base = forward(build("small", num_classes=10), x, train=False)
  non = build("small", num_classes=10, pool="nonoverlap")
  # 32 -> pool 2/2 -> 16 -> 8 -> 4, so fc6 reads 4*4*64 units instead of 3*3*64.
  assert flat_params(non)["fc6/kernel"].shape[1] == 4 * 4 * 64
  assert not np.allclose(forward(non, x, train=False), base)
  tanh = build("small", num_classes=10, activation="tanh")
  feats = jax.jit(lambda s, x: nnx.merge(*nnx.split(tanh)[:1], s).embed(x)[0])(
      nnx.split(tanh)[1], x)
  assert float(jnp.abs(feats).max()) <= 1.0


def test_dropout_only_in_training_and_at_the_set_rate():
  model = build("small", num_classes=10, dropout=0.5)
  x = jnp.asarray(np.random.default_rng(5).normal(size=(4, 32, 32, 3)), jnp.float32)
  eval_a = forward(model, x, train=False)
  eval_b = forward(model, x, train=True)  # no key: no dropout
  np.testing.assert_array_equal(eval_a, eval_b)
  k1 = forward(model, x, train=True, dropout_key=jax.random.key(1))
  k1_again = forward(model, x, train=True, dropout_key=jax.random.key(1))
  k2 = forward(model, x, train=True, dropout_key=jax.random.key(2))
  np.testing.assert_array_equal(k1, k1_again)
  assert not np.allclose(k1, k2) and not np.allclose(k1, eval_a)
  dropped = M.dropout(jnp.ones((100_000,)), 0.3, jax.random.key(0))
  assert float((dropped == 0).mean()) == pytest.approx(0.3, abs=0.01)
  assert float(dropped.mean()) == pytest.approx(1.0, abs=0.02)  # inverted dropout keeps the mean


def test_batchnorm_variant_updates_statistics_only_in_training():
  model = build("bn", num_classes=10, width=0.1, input_size=67)
  graphdef, params, stats = nnx.split(model, nnx.Param, ...)
  x = jnp.asarray(np.random.default_rng(6).normal(2.0, 1.0, size=(4, 67, 67, 3)), jnp.float32)

  def run(train):
    m = nnx.merge(graphdef, params, stats)
    m(x, train=train)
    return nnx.to_pure_dict(nnx.state(m, nnx.BatchStat))

  before = nnx.to_pure_dict(stats)
  after_eval, after_train = run(False), run(True)
  np.testing.assert_array_equal(after_eval["conv1_bn"]["mean"], before["conv1_bn"]["mean"])
  assert not np.allclose(after_train["conv1_bn"]["mean"], before["conv1_bn"]["mean"])


def test_batchnorm_variant_is_convolution_batchnorm_relu_pool_per_layer():
  """BatchNorm is a step of the one segment code path: after each convolution, before ReLU."""
  graphdef, state = nnx.split(build("bn", num_classes=10, width=0.1, input_size=67))
  x = jnp.asarray(np.random.default_rng(9).normal(1.0, 1.0, size=(3, 67, 67, 3)), jnp.float32)

  def train(state):  # running statistics away from their initial (0, 1)
    model = nnx.merge(graphdef, state)
    model(x, train=True)
    return nnx.state(model)

  def model_and_by_hand(state):
    model = nnx.merge(graphdef, state)
    h = x
    window, stride = M.POOLS["overlap"]
    for spec in model.conv_specs:
      assert getattr(model, spec.name).bias is None  # BatchNorm's own bias replaces it
      h = xla.conv2d(h, getattr(model, spec.name).kernel[...], spec.stride, spec.padding)
      h = jax.nn.relu(getattr(model, spec.name + "_bn")(h, use_running_average=True))
      if spec.pool:
        h = xla.max_pool(h, window, stride)
    h = h.reshape(h.shape[0], -1)
    for name in ("fc6", "fc7", "fc8"):
      layer = getattr(model, name)
      h = h @ layer.kernel[...] + layer.bias[...]
      h = jax.nn.relu(h) if name != "fc8" else h
    return model(x, train=False), h

  ours, by_hand = jax.jit(model_and_by_hand)(jax.jit(train)(state))
  np.testing.assert_allclose(ours, by_hand, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["small", "bn"])
def test_the_placement_is_bound_when_the_model_is_built(name):
  """A strategy's tower map and constraints are given once, at build; a call carries the
  model's inputs only."""
  import inspect
  assert set(inspect.signature(M.AlexNet.__call__).parameters) == {
      "self", "x", "train", "dropout_key"}
  assert set(inspect.signature(M.AlexNet.embed).parameters) == {
      "self", "x", "train", "dropout_key"}
  points, mapped = [], []
  record = lambda point, x: points.append(point) or x

  def tower_map(segment):
    mapped.append(segment)
    return M.vmap_towers(segment)

  cfg = base_config().model
  cfg.name, cfg.num_classes, cfg.width = name, 10, 0.25
  graphdef, state = nnx.split(nnx.eval_shape(
      lambda: M.create_model(cfg, 67, nnx.Rngs(0), M.Placement(tower_map, record))))
  jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x, train=False), state,
                 jax.ShapeDtypeStruct((2, 67, 67, 3), jnp.float32))
  assert points[0] == "conv1" and points[-1] == "logits"
  assert {"conv3", "fc6", "fc7", "fc8", "conv1/kernel", "conv2/kernel", "fc6/bias"} <= set(points)
  if name == "small":  # towers: mapped by the placement's map, placed where they merge
    assert len(mapped) == 4 and {"conv3/towers", "fc6/towers", "fc8/towers"} <= set(points)
    assert "conv2" not in points  # inside a segment the tower map places the towers
  else:  # one tower: nothing is mapped, every layer's input is placed, and BatchNorm's
    # convolutions have no bias to place
    assert mapped == [] and {"conv2", "conv5"} <= set(points) and "conv1/bias" not in points


def test_bfloat16_compute_keeps_float32_parameters():
  model = build("small", num_classes=10, dtype="bfloat16")
  assert all(v.dtype == np.float32 for v in flat_params(model).values())
  logits = forward(model, jnp.ones((2, 32, 32, 3)), train=False)
  assert logits.dtype == jnp.float32 and np.all(np.isfinite(logits))


@pytest.mark.parametrize("field,value,needle", [
    ("name", "vgg", "config.model.name"),
    ("norm", "group", "config.model.norm"),
    ("pool", "avg", "config.model.pool"),
    ("dropout", -0.1, "config.model.dropout"),
    ("activation", "gelu", "config.model.activation"),
])
def test_bad_model_fields_name_the_field(field, value, needle):
  cfg = base_config().model
  cfg[field] = value
  with pytest.raises(ValueError, match=needle):
    M.check_options(*M.options_from_config(cfg, 32))


def check(name, *, input_size=None, **fields):
  """check_options on `name` with `fields` (what program.validate and export's loader run)."""
  cfg = base_config().model
  cfg.name = name
  for k, v in fields.items():
    cfg[k] = v
  M.check_options(*M.options_from_config(cfg, input_size or M.VARIANTS[name].input_size))


def test_batchnorm_with_towers_and_too_small_inputs_are_rejected():
  with pytest.raises(ValueError, match="single-tower"):
    check("paper", norm="batch")
  with pytest.raises(ValueError, match="crop_size=32 is too small"):
    check("paper", input_size=32)


def test_unrolled_and_vmapped_towers_compute_the_same_function():
  x = jnp.asarray(np.random.default_rng(8).normal(size=(2, 67, 67, 3)), jnp.float32)
  a = build("paper", num_classes=10, width=0.25, input_size=67, tower_impl="unrolled")
  b = build("paper", num_classes=10, width=0.25, input_size=67, tower_impl="vmap")
  np.testing.assert_allclose(forward(a, x, train=False), forward(b, x, train=False),
                             rtol=1e-5, atol=1e-6)
