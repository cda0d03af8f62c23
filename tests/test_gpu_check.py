"""The GPU check (scripts/gpu_check.sh -> launch.py gpu-check) end to end on the CPU at tiny sizes,
with TensorFlow, tensorflow-datasets, scikit-learn, tensorboardX and matplotlib impossible to
import (a GPU host has none of them): every summary line is printed, and ok; its time limits."""

import json
import os
import subprocess
import sys
import time

import pytest

from runs import FAST_COMPILE_FLAGS, import_blocker

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ABSENT_ON_GPU_HOSTS = ("tensorflow", "tensorflow_datasets", "sklearn", "tensorboardX", "matplotlib")
TINY = [
    "--models", "owt,paper", "--batches", "8", "--dtypes", "bfloat16", "--steps", "2",
    "--warmup", "1", "--rounds", "1", "--torch-variants", "eager,eager_cl",
    "--torch-compile-batches", "", "--train-batch", "8", "--train-steps", "12",
    "--profile-steps", "2-3", "--budget", "1200",
    # Both sides' networks at 1/8 width, 67 px, 10 classes (compiles and steps take seconds);
    # `paper` at 67 px is another network than the paper's, which the config must say.
    "--config.model.width=0.125", "--config.data.crop_size=67", "--config.model.num_classes=10",
    "--config.model.allow_other_input_size=true",
]
# What the tiny run must print: one line per figure. On a CPU `auto` picks sliced pooling,
# reduce_window LRN and conv1 as is, so those are the base row and the other values the variants.
EXPECTED = (
    ["env devices", "env versions", "env xla_flags", "env cpu_only_paths", "env packages"]
    + [f"bench {m} b8 bfloat16" for m in ("owt", "paper")]
    + ["train throughput", "train resume", "profile", "torch owt b8 bfloat16"]
    + [f"compare paper b8 bfloat16 {s}" for s in ("data", "two_tower", "weird_trick", "fsdp")]
    + [f"variant paper b8 bfloat16 {v}" for v in (
        "pool_impl=reduce_window", "tower_impl=vmap", "conv1_impl=space_to_depth",
        "lrn_impl=matmul", "lrn_impl=slices")]
)


def environment(tmp_path, *blocked):
  site = tmp_path / "site"
  site.mkdir(exist_ok=True)
  (site / "sitecustomize.py").write_text(import_blocker(*blocked))
  return dict(os.environ, PYTHONPATH=f"{site}{os.pathsep}{REPO}", JAX_PLATFORMS="cpu",
              PYTHON=sys.executable,
              # One device, as on the GPU host; faster compiles (tests/runs.py).
              XLA_FLAGS=FAST_COMPILE_FLAGS)


@pytest.fixture(scope="module")
def check(tmp_path_factory):
  root = tmp_path_factory.mktemp("gpu_check")
  out = root / "out"
  result = subprocess.run(["bash", "scripts/gpu_check.sh", "--out", str(out), *TINY], cwd=REPO,
                          env=environment(root, *ABSENT_ON_GPU_HOSTS), capture_output=True,
                          text=True, timeout=1200)
  return result, out


def summary_lines(stdout):
  """{key: (status, text)} of the summary lines printed."""
  lines = {}
  for line in stdout.splitlines():
    status, _, rest = line.partition(" ")
    if status in ("ok", "FAIL", "TIMEOUT", "SKIPPED"):
      key, _, text = rest.strip().partition(": ")
      assert key not in lines, f"{key} printed twice"
      lines[key] = (status, text)
  return lines


@pytest.mark.long(seconds=75)
def test_every_figure_has_an_ok_line_and_the_summary_files(check):
  result, out = check
  assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
  lines = summary_lines(result.stdout)
  assert list(lines) == EXPECTED
  bad = {k: v for k, v in lines.items() if v[0] != "ok"}
  assert not bad, bad
  assert f"GPU check done: {len(EXPECTED)} figures, {len(EXPECTED)} ok" in result.stdout
  summary = json.loads((out / "summary.json").read_text())
  assert [(l["key"], l["status"], l["text"]) for l in summary["lines"]] == [
      (k, *lines[k]) for k in EXPECTED]
  md = (out / "summary.md").read_text()
  for key in EXPECTED:
    assert f"| {key} | ok |" in md


def test_the_figures_say_what_they_measured(check):
  result, out = check
  lines = {k: text for k, (_, text) in summary_lines(result.stdout).items()}
  assert "TensorFlow imported: no" in lines["env packages"]
  assert "jax " in lines["env versions"] and "torch " in lines["env versions"]
  assert "pool_impl -> slices, lrn_impl -> reduce_window, conv1_impl -> direct" in (
      lines["env cpu_only_paths"])
  for model in ("owt", "paper"):
    bench = json.loads((out / "bench" / f"{model}_b8_bfloat16.json").read_text())
    assert bench["batch"] == 8 and bench["dtype"] == "bfloat16" and bench["model"] == model
    assert f"{bench['images_per_second']:,.0f} images/s" in lines[f"bench {model} b8 bfloat16"]
    assert "MFU" in lines[f"bench {model} b8 bfloat16"]
  torch_line = lines["torch owt b8 bfloat16"]
  assert "torch eager channels_last" in torch_line and "ours / best PyTorch" in torch_line
  rows = json.loads((out / "torch" / "owt_b8_bfloat16.json").read_text())["rows"]
  assert [r["label"] for r in rows] == ["ours (alexnet_jax)", "torch eager",
                                        "torch eager channels_last"]
  assert rows[1]["ready"]["settings"] == {}  # no GPU settings on a CPU
  # `launch.py train --config.data.name=synthetic` with TensorFlow unimportable: stopped by
  # SIGTERM, resumed from its checkpoint, bitwise an uninterrupted run (same devices, program),
  # both under XLA's deterministic ops (GPUs need them for that), the throughput run without.
  assert "stopped by SIGTERM after step" in lines["train resume"]
  assert ("final evaluation's loss against an uninterrupted run's, all with "
          "--xla_gpu_deterministic_ops=true: bitwise equal") in lines["train resume"]
  assert (out / "train" / "reference" / "metrics.jsonl").exists()
  # The throughput run logs every 12 // 6 = 2 steps, as training does (not every step: that
  # would wait for each step), and its rate leaves out the first interval (the compile).
  assert "median of the rates over steps 3-12, logged every 2" in lines["train throughput"]
  logged = [json.loads(r) for r in (out / "train" / "uninterrupted" / "metrics.jsonl").open()]
  assert [r["step"] for r in logged if r["split"] == "train"] == [2, 4, 6, 8, 10, 12]
  evals = [json.loads(r) for r in (out / "train" / "stopped" / "metrics.jsonl").open()]
  evals = [r for r in evals if r["split"] == "eval"]
  assert [r["count"] for r in evals] == [16]  # every synthetic held-out example (2 x batch 8)
  check = subprocess.run([sys.executable, "-c", "import tensorflow"], capture_output=True,
                         text=True, env=environment(out.parent, *ABSENT_ON_GPU_HOSTS))
  assert "is blocked in this test" in check.stderr  # the blocker the check ran under works
  assert "xplane.pb" in lines["profile"] and "perfetto_trace.json.gz" in lines["profile"]
  assert (out / "compare" / "compare.csv").exists()
  assert not (out / "compare" / "compare.png").exists()  # no matplotlib: the tables only
  assert "the base row" in lines["variant paper b8 bfloat16 tower_impl=vmap"]


def test_a_part_past_its_limit_is_killed_with_its_children(tmp_path):
  from alexnet_jax import cli, gpu_check

  args = cli.build_parser().parse_args(["gpu-check", "--out", str(tmp_path), "--limit", "1"])
  (tmp_path / "logs").mkdir()
  child = tmp_path / "child.pid"
  start = time.monotonic()
  outcome = gpu_check.Check(args, []).run("bench", "hang", [
      "bash", "-c", f"sleep 60 & echo $! > {child}; wait"])
  assert outcome.status == "TIMEOUT" and time.monotonic() - start < 10
  pid = int(child.read_text())

  def dead() -> bool:
    try:
      with open(f"/proc/{pid}/status") as f:
        return "State:\tZ" in f.read()  # killed, not yet reaped by its new parent
    except FileNotFoundError:
      return True  # killed and gone

  # SIGKILL was sent to the whole group; on a loaded machine the child may need a moment to run
  # and die (it reads "R" meanwhile). A child left out of the kill would still be sleeping.
  deadline = time.monotonic() + 10
  while not dead() and time.monotonic() < deadline:
    time.sleep(0.05)
  assert dead()
  assert "killed after its time limit" in outcome.why()


def test_parts_past_the_budget_are_skipped_and_reported(tmp_path):
  result = subprocess.run(
      [sys.executable, "launch.py", "gpu-check", "--out", str(tmp_path / "out"), "--budget", "0",
       "--parts", "bench,train", "--models", "owt", "--batches", "8", "--dtypes", "float32"],
      cwd=REPO, env=environment(tmp_path), capture_output=True, text=True, timeout=120)
  assert result.returncode == 1
  lines = summary_lines(result.stdout)
  assert {k: v[0] for k, v in lines.items()} == {
      "env": "SKIPPED", "bench owt b8 float32": "SKIPPED", "train throughput": "SKIPPED",
      "train resume": "SKIPPED"}
  assert "--budget" in lines["env"][1]


def test_a_bad_argument_is_one_line(tmp_path):
  result = subprocess.run(
      [sys.executable, "launch.py", "gpu-check", "--out", str(tmp_path), "--parts", "bench,gpu"],
      cwd=REPO, env=environment(tmp_path), capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
      "error: --parts gpu: choose from env,bench,torch,train,profile,compare,variants")
  assert "Traceback" not in result.stderr


def test_the_script_says_which_wheels_to_bring_when_a_package_is_missing(tmp_path):
  wheels = os.path.join(REPO, "wheels")
  if os.path.isdir(wheels) and any(n.startswith("ml_collections-") for n in os.listdir(wheels)):
    pytest.skip("this checkout has wheels/: the script would install them")
  result = subprocess.run(["bash", "scripts/gpu_check.sh", "--out", str(tmp_path / "out")],
                          cwd=REPO, env=environment(tmp_path, "ml_collections"),
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  assert result.stderr.strip() == (
      f"error: {sys.executable} cannot import ml_collections and wheels/ has no ml_collections "
      "wheel; on a machine with network access run 'pip download ml_collections tqdm --no-deps "
      "-d wheels/' in the repository root and bring wheels/ along")
