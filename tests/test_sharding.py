"""Sharding strategies: every strategy and mesh computes what one device computes, the compiled
programs talk only where each strategy says, and bad meshes fail before compiling.

Runs on the 8 virtual CPU devices of conftest.py, at reduced width and input size. Train steps
are compiled with XLA's backend optimisation off: the same partitioned program, compiled
several times faster.
"""

import jax
import numpy as np
import pytest

from alexnet_jax import compare
from alexnet_jax import configlib
from alexnet_jax import hlo
from alexnet_jax import program
from alexnet_jax import sharding as S

FAST = {"xla_backend_optimization_level": 0}
SMALL_INPUT = {"paper": 67, "owt": 63}  # the smallest crops that leave 1x1 after conv5's pool
STEPS = 3


def small_config(model: str, strategy: str = "data", mesh: str = ""):
  c = configlib.base_config()
  c.model.name = model
  c.model.width = 0.0625
  c.model.num_classes = 16
  c.data.crop_size = c.data.resize_size = SMALL_INPUT[model]
  c.model.allow_other_input_size = True  # the paper network, shrunk on purpose
  c.batch_size = 16
  c.eval_batch_size = 16
  c.optim.name = "sgdw"
  c.optim.learning_rate = 0.05
  c.optim.schedule = "constant"
  c.sharding.strategy = strategy
  c.sharding.mesh = mesh
  return c


def train_steps(built, steps=STEPS):
  """Run `steps` train steps on distinct synthetic batches; losses and final host params."""
  losses = []
  state = built.state
  for i in range(steps):
    batch = built.program.train_feed.put(compare.synthetic_batch(built.cfg, seed=i))
    state, metrics = built.compiled(state, batch)
    losses.append(float(metrics["loss"]))
  return losses, jax.device_get(state.params)


_hlo_cache: dict[tuple, tuple] = {}  # (model, strategy, mesh) -> (HLO text, mesh, state shardings)


@pytest.fixture(scope="module")
def reference():
  """Per model: the initial state (host copy), and the single-device losses and params."""
  refs = {}
  for model in SMALL_INPUT:
    built = compare.build(small_config(model, "data", "1x1"), [jax.devices()[0]], FAST)
    initial = jax.device_get(built.state)
    refs[model] = (initial, *train_steps(built))
  return refs


# Every strategy on each model it can hold, on its hardest mesh: both axes larger than 1 (an
# 8x1 mesh leaves weird_trick's and fsdp's second axis, and two_tower's towers, on one device),
# the wider second axis where the strategy splits parameters over it (weird_trick's FC kernels
# and fsdp's shards four ways, with data replicas), and each model on both mesh shapes. The
# structural tests below read the compiled programs of three of these cases.
CASES = (
    ("paper", "data", "4x2"),
    ("paper", "two_tower", "4x2"),  # 2 towers: the only valid second axis
    ("paper", "weird_trick", "2x4"),
    ("paper", "fsdp", "2x4"),
    ("owt", "data", "2x4"),
    ("owt", "weird_trick", "2x4"),
    ("owt", "fsdp", "4x2"),
)


@pytest.mark.parametrize("model,strategy,mesh", CASES)
def test_every_strategy_and_mesh_matches_one_device(reference, model, strategy, mesh):
  initial, ref_losses, ref_params = reference[model]
  built = compare.build(small_config(model, strategy, mesh), None, FAST, initial_state=initial)
  assert built.mesh.devices.shape == tuple(int(s) for s in mesh.split("x"))
  _hlo_cache[(model, strategy, mesh)] = (built.compiled.as_text(), built.mesh, built.shardings)
  losses, params = train_steps(built)
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-6)
  flat_ref = jax.tree_util.tree_leaves_with_path(ref_params)
  flat = jax.tree.leaves(params)
  assert len(flat) == len(flat_ref)
  for (path, want), got in zip(flat_ref, flat):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path))
  moved = max(float(np.max(np.abs(a - b))) for a, b in
              zip(jax.tree.leaves(initial.params), jax.tree.leaves(ref_params)))
  assert moved > 1e-3  # the steps really changed the parameters


def compiled_case(model, strategy, mesh):
  """HLO text, mesh and shardings of a case (from the equivalence test when it ran first)."""
  if (model, strategy, mesh) not in _hlo_cache:
    built = compare.build(small_config(model, strategy, mesh), None, FAST)
    _hlo_cache[(model, strategy, mesh)] = (built.compiled.as_text(), built.mesh, built.shardings)
  return _hlo_cache[(model, strategy, mesh)]


def parts_by_axes(text, mesh):
  """[(axes label, part)] for every tuple element of every collective in the program."""
  out = []
  for c in hlo.collectives(text, mesh.size):
    axes = hlo.axes_label(c, mesh.devices.shape, mesh.axis_names)
    out.extend((axes, c.kind, p) for p in c.parts)
  return out


def test_two_tower_devices_talk_only_where_the_towers_meet():
  text, mesh, shardings = compiled_case("paper", "two_tower", "4x2")
  # Each device holds one tower of every towered layer.
  assert shardings.params["conv4"]["kernel"].spec == S.P("model")
  assert shardings.params["conv4"]["kernel"].shard_shape((2, 3, 3, 12, 12)) == (1, 3, 3, 12, 12)
  parts = parts_by_axes(text, mesh)
  assert all(axes != "?" for axes, _, _ in parts)  # every replica group understood
  across_towers = [(kind, p) for axes, kind, p in parts if "model" in axes]
  meeting_points = {"conv3", "fc6", "fc7", "fc8"}
  for kind, p in across_towers:
    if p.layer is None:  # the loss and metrics: scalars
      assert p.bytes <= 8, (kind, p)
    else:
      assert p.layer in meeting_points, (kind, p)  # nothing before conv3, nothing in conv4-5
  # ... and the towers do meet, in both passes, at every meeting point.
  met = {(p.layer, p.backward) for _, p in across_towers if p.layer}
  assert {(layer, False) for layer in meeting_points} <= met
  assert {(layer, True) for layer in ("conv3", "fc6", "fc7")} <= met
  # Inside the towers, devices talk only to sum gradients over the data axis.
  for axes, kind, p in parts:
    if p.layer in ("conv1", "conv2", "conv4", "conv5"):
      assert axes == "data" and kind == "all-reduce" and p.backward, (axes, kind, p)


def test_weird_trick_convs_data_parallel_fc_model_parallel():
  text, mesh, shardings = compiled_case("owt", "weird_trick", "2x4")
  assert shardings.params["conv2"]["kernel"].spec == S.P()
  assert shardings.params["fc6"]["kernel"].spec == S.P(None, "model")
  assert shardings.params["fc8"]["kernel"].spec == S.P(None, "model")
  assert shardings.opt_state.inner_state[0].trace["fc7"]["kernel"].spec == S.P(None, "model")
  parts = parts_by_axes(text, mesh)
  forward = [(axes, kind, p) for axes, kind, p in parts if not p.backward and p.layer]
  # No collective in the convolutions' forward pass; the first exchange is fc6's input.
  assert not [x for x in forward if x[2].layer.startswith("conv")]
  fc6_in = [(axes, kind) for axes, kind, p in forward if p.layer == "fc6"]
  assert ("model", "all-gather") in fc6_in
  # Convolution gradients are summed over every device, FC gradients over data only.
  for axes, kind, p in parts:
    if p.backward and p.layer and p.layer.startswith("conv"):
      assert (axes, kind) == ("data+model", "all-reduce"), (axes, kind, p)
  # FC layers: gradients of the split kernels summed over data, their input gradients (partial
  # products of the split kernels) over model; never both at once.
  fc_sums = {axes for axes, kind, p in parts
             if p.backward and p.layer and p.layer.startswith("fc") and kind == "all-reduce"}
  assert fc_sums == {"data", "model"}


def test_fsdp_shards_state_and_gathers_weights_per_layer():
  text, mesh, shardings = compiled_case("paper", "fsdp", "2x4")
  kernel = shardings.params["fc7"]["kernel"]
  assert "fsdp" in str(kernel.spec)
  trace = shardings.opt_state.inner_state[0].trace["fc7"]["kernel"]
  assert trace.spec == kernel.spec  # optimizer state sharded like its parameter
  gathered = {p.layer for axes, kind, p in parts_by_axes(text, mesh)
              if kind == "all-gather" and axes == "fsdp" and not p.backward}
  sharded_layers = {name for name, leaf in shardings.params.items()
                    if "fsdp" in str(leaf["kernel"].spec)}
  assert sharded_layers >= {"conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"}
  assert sharded_layers <= gathered  # each layer's weights gathered where it runs


def test_strategies_reject_bad_input_before_compiling():
  def error(model, strategy, mesh, **fields):
    c = small_config(model, strategy, mesh)
    for key, value in fields.items():
      section, _, name = key.rpartition("__")
      (c[section] if section else c)[name] = value
    with pytest.raises(configlib.ConfigError) as e:
      program.validate(c)  # the one check, before anything compiles
    message = str(e.value)
    assert "\n" not in message
    return message

  assert "needs 16 devices but 8 are present" in error("paper", "data", "4x4")
  assert "'4x2'" in error("paper", "data", "4by2")
  assert "one tower" in error("owt", "two_tower", "4x2")
  assert "one tower" in error("paper", "two_tower", "4x2", model__name="bn")
  assert "make it 2" in error("paper", "two_tower", "2x4")
  assert "choose one of data, two_tower, weird_trick, fsdp" in error("paper", "pipeline", "")
  # The batch is split 8 ways by data/weird_trick/fsdp, 4 ways by two_tower on 4x2.
  assert "not divisible by the 8 devices" in error("paper", "weird_trick", "4x2", batch_size=12)
  assert "not divisible by the 4 devices" in error("paper", "two_tower", "4x2", batch_size=6)
  program.validate(small_config("paper", "two_tower", "4x2"))  # the valid ones pass
  assert S.setup(small_config("paper", "fsdp", ""))[1].devices.shape == (1, 8)


def test_layouts_fall_back_to_replication_when_a_dimension_does_not_divide():
  mesh = S.make_mesh(S.STRATEGIES["fsdp"], (1, 8))
  fsdp = S.STRATEGIES["fsdp"]
  assert S.spec_for("params/fc6/kernel", (2, 256, 512), mesh, fsdp) == S.P(None, None, "fsdp")
  assert S.spec_for("params/fc7/kernel", (2, 1024, 512), mesh, fsdp) == S.P(None, "fsdp")
  assert S.spec_for("params/conv1/kernel", (2, 11, 11, 3, 3), mesh, fsdp) == S.P()
  trick = S.STRATEGIES["weird_trick"]
  mesh = S.make_mesh(trick, (1, 8))
  assert S.spec_for("params/fc8/kernel", (256, 10), mesh, trick) == S.P()
  assert S.spec_for("params/fc8/kernel", (256, 16), mesh, trick) == S.P(None, "model")
