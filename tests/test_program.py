"""One program under every command: `bench` and `compare` compile exactly the train step that
`train` runs, for every strategy (the same compiled HLO text for the same config and mesh), and
the program's feed refuses a batch that does not match the rows its devices hold.
"""

import re

import jax
import numpy as np
import pytest

from alexnet_jax import bench, compare, program, sharding, train
from alexnet_jax.data import synthetic
from runs import config_with

FAST = {"xla_backend_optimization_level": 0}
# Meshes where each strategy does something (a second axis > 1), on the 8 virtual devices.
CASES = [("data", "4x2"), ("two_tower", "4x2"), ("weird_trick", "2x4"), ("fsdp", "2x4")]


class _Built(Exception):
  """Stops train_and_evaluate once its program is built."""


def train_program(cfg, workdir, monkeypatch) -> program.Program:
  """The Program that `train.train_and_evaluate` builds for `cfg` (taken from the real call)."""
  real_build, built = program.build, []

  def capture(*args, **kwargs):
    built.append(real_build(*args, **{**kwargs, "compiler_options": FAST}))
    raise _Built

  monkeypatch.setattr(program, "build", capture)
  with pytest.raises(_Built):
    train.train_and_evaluate(cfg, str(workdir))
  monkeypatch.setattr(program, "build", real_build)
  return built[0]


def program_text(compiled) -> str:
  """The compiled HLO without source locations (which name the calling file)."""
  text = re.sub(r",? ?metadata=\{[^{}]*\}", "", compiled.as_text())
  kept, in_table = [], False
  for line in text.splitlines():
    if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
      in_table = True
    elif in_table and not line:
      in_table = False
    elif not in_table:
      kept.append(line)
  return "\n".join(kept)


@pytest.mark.parametrize("strategy,mesh", CASES)
def test_bench_and_compare_compile_the_train_step_train_runs(strategy, mesh, tmp_path,
                                                             monkeypatch):
  cfg = config_with(**{"sharding.strategy": strategy, "sharding.mesh": mesh})
  ran = train_program(cfg, tmp_path, monkeypatch)
  feed = ran.train_feed
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=feed.sharding)
           for k, v in synthetic.synthetic_batch(cfg, cfg.batch_size).items()}
  train_hlo = program_text(ran.train_step.lower(ran.abstract_state(), batch).compile())
  bench_hlo = program_text(bench.build(cfg, compiler_options=FAST).step)
  compare_hlo = program_text(compare.build(cfg, None, FAST).compiled)
  assert "all-reduce" in train_hlo  # a real partitioned program, not an empty text
  assert bench_hlo == train_hlo
  assert compare_hlo == train_hlo


def test_feed_states_the_global_shape_and_rows_per_process():
  cfg = config_with(**{"sharding.strategy": "two_tower", "sharding.mesh": "4x2"})
  strategy, mesh = sharding.setup(cfg)
  feed = sharding.batch_feed(mesh, strategy, 32)
  # One process holds every device here: it loads the whole batch.
  assert feed.rows == sharding.Rows(0, 1) and feed.local_batch == 32
  batch = synthetic.synthetic_batch(cfg, 32)
  placed = feed.put(batch)
  assert placed["image"].shape == (32, 32, 32, 3)
  # Each tower device of a data group holds the same 8 rows: the model axis replicates them.
  shards = {d: s.data for s in placed["label"].addressable_shards for d in [s.device]}
  for row in mesh.devices:
    np.testing.assert_array_equal(np.asarray(shards[row[0]]), np.asarray(shards[row[1]]))
  with pytest.raises(ValueError, match="has 16 rows on process 0, but its devices hold 32"):
    feed.put(synthetic.block(batch, 0, 2))  # half a batch is an error, never a smaller batch


def test_train_validates_its_config_once_before_writing_anything(tmp_path, monkeypatch):
  """The field checks, the model's option checks and the strategy/mesh set-up each run once on
  the way from `train_and_evaluate` to the built program; nothing is written before them."""
  from collections import Counter

  from alexnet_jax import configlib, workdir
  from alexnet_jax import model as model_lib

  counts, events = Counter(), []
  for module, name in ((configlib, "validate"), (model_lib, "check_options"),
                       (sharding, "setup"), (workdir, "open_run")):
    def counted(*args, _real=getattr(module, name), _name=name, **kwargs):
      counts[_name] += 1
      events.append(_name)
      return _real(*args, **kwargs)
    monkeypatch.setattr(module, name, counted)
  cfg = config_with(**{"sharding.strategy": "two_tower", "sharding.mesh": "4x2"})
  train_program(cfg, tmp_path / "run", monkeypatch)
  assert counts == {"validate": 1, "check_options": 1, "setup": 1, "open_run": 1}
  assert events.index("open_run") > events.index("validate")  # checked, then written
