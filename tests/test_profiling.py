"""config.profile_steps: parsing, and a trace of only the requested steps of a jitted loop."""

import glob
import gzip
import json
import logging
import os

import jax
import jax.numpy as jnp
import pytest

from alexnet_jax import configlib, profiling, program


@pytest.mark.parametrize("spec, steps", [("", None), ("  ", None), ("5", (5, 5)),
                                         ("10-12", (10, 12)), (" 3 - 4 ", (3, 4)), ("1", (1, 1))])
def test_parse(spec, steps):
  assert profiling.parse(spec) == steps


@pytest.mark.parametrize("spec", ["abc", "0", "5-3", "-2", "1-2-3", "1.5", "3-", "0-2", "2,3"])
def test_a_bad_spec_is_one_line_naming_the_field(spec):
  cfg = configlib.base_config()
  cfg.profile_steps = spec
  with pytest.raises(configlib.ConfigError) as e:
    program.validate(cfg)
  message = str(e.value)
  assert message.startswith(f"config.profile_steps={spec!r}: ") and "\n" not in message


def test_the_field_is_off_by_default_and_takes_overrides():
  cfg = configlib.base_config()
  assert cfg.profile_steps == ""
  configlib.apply_overrides(cfg, ["profile_steps=10-12"])
  assert profiling.parse(cfg.profile_steps) == (10, 12)


def loop(profiler, steps):
  """A small jitted training-like loop, driven as the train loop drives the profiler."""
  f = jax.jit(lambda x: jnp.tanh(x @ x) * 0.5)
  x = jnp.ones((64, 64))
  for step in range(1, steps + 1):
    profiler.step_started(step)
    x = f(x)
    profiler.step_finished(step, x)
  profiler.close()


def traced(workdir):
  """The trace files written, and the step numbers annotated in the trace."""
  xplanes = glob.glob(os.path.join(workdir, "profile", "plugins", "profile", "*", "*.xplane.pb"))
  perfetto = glob.glob(os.path.join(workdir, "profile", "plugins", "profile", "*",
                                    "perfetto_trace.json.gz"))
  steps = []
  for path in perfetto:
    with gzip.open(path) as f:
      for event in json.load(f)["traceEvents"]:
        if event.get("name") == "train":
          steps.append(int(event["args"]["step_num"]))
  return xplanes, perfetto, sorted(steps)


def test_only_the_requested_steps_are_traced(tmp_path, monkeypatch, caplog):
  order = []
  for name in ("block_until_ready", "profiler.stop_trace"):
    module, attr = (jax.profiler, "stop_trace") if "." in name else (jax, name)
    original = getattr(module, attr)
    monkeypatch.setattr(module, attr, lambda *a, _o=original, _n=name: (order.append(_n),
                                                                        _o(*a))[1])
  with caplog.at_level(logging.INFO, logger="alexnet_jax.profiling"):
    loop(profiling.StepProfiler("3-4", str(tmp_path)), 6)
  xplanes, perfetto, steps = traced(str(tmp_path))
  assert len(xplanes) == 1 and len(perfetto) == 1  # one trace, for XProf/TensorBoard and Perfetto
  assert steps == [3, 4]
  assert order == ["block_until_ready", "profiler.stop_trace"]  # step 4's work is in the trace
  assert f"profile of steps 3-4 written to {os.path.dirname(xplanes[0])}" in caplog.text


def test_one_step_and_a_range_cut_short(tmp_path, caplog):
  loop(profiling.StepProfiler("2", str(tmp_path / "one")), 4)
  assert traced(str(tmp_path / "one"))[2] == [2]
  # Training ends (or is stopped) inside the range: close() still writes what was traced.
  with caplog.at_level(logging.INFO, logger="alexnet_jax.profiling"):
    loop(profiling.StepProfiler("3-9", str(tmp_path / "short")), 4)
  assert traced(str(tmp_path / "short"))[2] == [3, 4]
  assert "steps from 3 (stopped before 9)" in caplog.text


def test_off_or_out_of_reach_writes_nothing(tmp_path, caplog):
  loop(profiling.StepProfiler("", str(tmp_path / "off")), 3)
  loop(profiling.StepProfiler("5", str(tmp_path / "disabled"), enabled=False), 6)
  assert not os.path.exists(tmp_path / "off") and not os.path.exists(tmp_path / "disabled")
  with caplog.at_level(logging.WARNING, logger="alexnet_jax.profiling"):
    loop(profiling.StepProfiler("50-60", str(tmp_path / "late")), 3)
  assert not os.path.exists(tmp_path / "late")
  assert "config.profile_steps='50-60': training never reached those steps" in caplog.text
