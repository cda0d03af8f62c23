"""`launch.py compare` and the HLO reading behind it."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest

from alexnet_jax import cli
from alexnet_jax import hlo
from runs import FAST_COMPILE_FLAGS  # tests/runs.py: faster compiles, the same program

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST_MODEL_PARAMS = 24_154  # configs/test.py: the `small` model at width 0.25, 10 classes


@pytest.fixture(scope="module")
def compare_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("compare")
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count=8 {FAST_COMPILE_FLAGS}")
  out = subprocess.run(
      [sys.executable, "launch.py", "compare", "--config", "configs/test.py",
       "--strategies", "data,two_tower,weird_trick,fsdp", "--steps", "3", "--warmup", "1",
       "--workdir", str(workdir)],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
  with open(workdir / "compare.csv") as f:
    rows = {r["strategy"]: r for r in csv.DictReader(f)}
  return workdir, rows, out.stdout


@pytest.mark.long(seconds=20)
def test_compare_writes_table_csv_and_chart(compare_run):
  workdir, rows, stdout = compare_run
  assert list(rows) == ["data", "two_tower", "weird_trick", "fsdp"]
  assert {s: r["mesh"] for s, r in rows.items()} == {
      "data": "8x1", "two_tower": "4x2", "weird_trick": "1x8", "fsdp": "1x8"}
  md = (workdir / "compare.md").read_text()
  assert "| strategy | mesh | step ms" in md and md in stdout
  for name in rows:
    assert f"| {name} |" in md
  png = (workdir / "compare.png").read_bytes()
  assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
  for r in rows.values():
    median = float(r["step_ms_median"])
    assert 0 < float(r["step_ms_p10"]) <= median <= float(r["step_ms_p90"])
    assert float(r["images_per_s"]) == pytest.approx(32 / (median / 1000), rel=1e-3)
    assert float(r["compile_s"]) > 0


def layer_bytes():
  """Float32 bytes of each layer's parameters in configs/test.py's model."""
  import jax

  from alexnet_jax import configlib, program
  cfg = configlib.load_config(os.path.join(REPO, "configs", "test.py"))
  shapes = jax.eval_shape(program.model_fns(cfg).init, jax.random.key(0))[0]
  return {layer: sum(4 * int(np.prod(x.shape)) for x in jax.tree.leaves(leaves))
          for layer, leaves in shapes.items()}


def test_compare_memory_per_device(compare_run):
  _, rows, _ = compare_run
  full = 4 * TEST_MODEL_PARAMS
  params = {s: int(r["params_bytes_per_device"]) for s, r in rows.items()}
  assert params["data"] == full  # replicated
  assert params["fsdp"] < full / 4  # sharded 8 ways (but for the indivisible small tensors)
  sizes = layer_bytes()
  convs = sum(v for k, v in sizes.items() if k.startswith("conv"))
  # FC kernels split 8 ways by output unit (fc8's 10 classes do not split: replicated).
  assert params["weird_trick"] == convs + (sizes["fc6"] + sizes["fc7"]) // 8 + sizes["fc8"]
  # One tower per device: half of every towered layer, the classifier (fc8) whole.
  assert params["two_tower"] == (full - sizes["fc8"]) // 2 + sizes["fc8"]
  for s, r in rows.items():
    # sgdw's optimizer state: one momentum trace per parameter, plus a few scalars.
    assert 0 <= int(r["opt_state_bytes_per_device"]) - params[s] < 64
    assert int(r["peak_bytes_per_device"]) >= 2 * params[s]


def test_compare_collectives_match_the_hand_count(compare_run):
  _, rows, _ = compare_run
  data = rows["data"]
  # Data parallel: one gradient all-reduce of the whole model, plus the metrics' scalars.
  assert int(data["hand_bytes_total"]) == 4 * TEST_MODEL_PARAMS
  assert int(data["all-gather_count"]) == int(data["collective-permute_count"]) == 0
  assert int(data["all-reduce_bytes"]) == pytest.approx(int(data["hand_bytes_total"]), rel=0.01)
  # Two towers: across the model axis only where the towers meet (and the scalar loss).
  tower = rows["two_tower"]
  for kind in ("all-reduce", "collective-permute", "all-gather"):
    for group in tower[f"{kind}_layers"].split("; "):
      axes, _, layers = group.partition(": ")
      if "model" in axes:
        assert set(layers.replace(" (bwd)", "").split()) <= {
            "conv3", "fc6", "fc7", "fc8", "loss/metrics"}, (kind, group)
  total = int(tower["collective_bytes_total"])
  assert total == pytest.approx(int(tower["hand_bytes_total"]), rel=0.01)
  # FSDP gathers every sharded layer's weights: the hand count of weights is what moves.
  fsdp = rows["fsdp"]
  assert int(fsdp["all-gather_bytes"]) == pytest.approx(int(fsdp["hand_bytes_weights"]), rel=0.01)
  # (conv4, 12 x 12 channels per tower here, has no dimension the 8 devices divide: replicated.)
  assert {"conv2", "conv3", "conv5", "fc6", "fc7", "fc8"} <= set(
      fsdp["all-gather_layers"].partition(": ")[2].split())
  # One weird trick: the first exchange of activations is fc6's input.
  trick = rows["weird_trick"]
  assert "fc6" in trick["all-gather_layers"].split()
  assert not any(f"conv{i} " in trick["all-gather_layers"] + " " for i in range(1, 6))


def test_compare_rejects_bad_input_before_compiling(capsys):
  assert cli.main(["compare", "--config", "configs/test.py", "--strategies", "data,ring"]) == 2
  assert "config.sharding.strategy='ring'" in capsys.readouterr().err
  assert cli.main(["compare", "--config", "configs/test.py", "--mesh", "3x3"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "compare data: config.sharding.mesh='3x3' needs 9 devices" in err[0]
  assert cli.main(["compare", "--config", "configs/test.py", "--strategies", "two_tower",
                   "--config.model.name=owt", "--config.data.crop_size=63"]) == 2
  assert "compare two_tower" in capsys.readouterr().err


# --- the HLO reader, on lines as XLA prints them ----------------------------------------------


def test_replica_group_spellings():
  groups = lambda text: hlo.parse_groups(text, 8)
  assert groups("replica_groups={{0,2,4,6},{1,3,5,7}}, use_global_device_ids=true") == (
      (0, 2, 4, 6), (1, 3, 5, 7))
  assert groups("replica_groups={}, to_apply=%add") == (tuple(range(8)),)
  assert groups("replica_groups=[4,2]<=[8], dimensions={0}") == ((0, 1), (2, 3), (4, 5), (6, 7))
  assert groups("replica_groups=[2,4]<=[4,2]T(1,0), dims") == ((0, 2, 4, 6), (1, 3, 5, 7))
  assert groups("replica_groups=mesh['axis_0'=4,'axis_1'=2] {'axis_0'}, use_global") == (
      (0, 2, 4, 6), (1, 3, 5, 7))
  # A (2, 4) data x fsdp mesh written as a (4, 2) mesh of transposed ids, grouped on axis 0.
  assert groups("replica_groups=mesh['axis_0'=4,'axis_1'=2], device_ids=([2,4]T(1,0)) "
                "{'axis_0'}, channel_id=3") == ((0, 1, 2, 3), (4, 5, 6, 7))
  assert groups("source_target_pairs={{1,0},{3,2}}, metadata={}") == ((1, 0), (3, 2))


def test_collectives_sizes_layers_and_axes():
  text = "\n".join([
      '  %all-reduce.48 = (f32[256,128]{1,0}, f32[], bf16[4]{0}) all-reduce(%a, %b, %c), '
      'channel_id=5, replica_groups={{0,2,4,6},{1,3,5,7}}, use_global_device_ids=true, '
      'to_apply=%add, metadata={op_name="jit(train_step)/(transpose(jvp(conv3))/shard_map/'
      'conv5/psum_invariant:jvp()/reduce_sum:transpose(jvp(fc6))/dot_general)"}',
      '  %collective-permute = f32[1,4,3,3,8]{4,3,2,1,0} collective-permute(%x), channel_id=4, '
      'source_target_pairs={{1,0},{3,2},{5,4},{7,6}}, metadata={op_name="jit(f)/jvp(conv3)/slice"}',
      '  %add.1 = f32[8]{0} add(%p, %q)',
      '  %psum.3 = f32[9]{0} all-reduce(%y), channel_id=1, replica_groups={{0},{1},{2},{3}}, '
      'use_global_device_ids=true, to_apply=%add',  # a sum over a size-1 axis: no traffic
  ])
  found = hlo.collectives(text, 8)
  assert [c.kind for c in found] == ["all-reduce", "collective-permute"]
  ar, cp = found
  assert [p.bytes for p in ar.parts] == [256 * 128 * 4, 4, 8]
  assert [hlo.part_label(p) for p in ar.parts] == ["conv5 (bwd)", "loss/metrics", "fc6 (bwd)"]
  assert ar.axes_spanned((4, 2), ("data", "model")) == {"data"}
  assert cp.bytes == 4 * 3 * 3 * 8 * 4 and hlo.part_label(cp.parts[0]) == "conv3"
  assert cp.axes_spanned((4, 2), ("data", "model")) == {"model"}
  summary = hlo.summarize(found, (4, 2), ("data", "model"))
  assert summary["all-reduce"].layer_text() == "data: conv5 (bwd) fc6 (bwd) loss/metrics"
  assert summary["collective-permute"].count == 1 and summary["all-gather"].count == 0
