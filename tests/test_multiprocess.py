"""Several processes as one program, in the layouts users run: one process per device (as under
`srun`, one task per GPU), several processes of several devices, one process of all devices.
Every layout must train and evaluate exactly as one process holding the same devices.

Processes talk over loopback with gloo collectives; each has its own virtual CPU devices
(XLA_FLAGS) and the tests' faster-compiling XLA flags (the same partitioned program).

- scripts/slurm_train.sbatch under a stand-in `srun`: two_tower on a 1x2 mesh over 2 tasks of 1
  device (each tower in its own process, so both processes must load the same rows), against
  1 process of 2 devices; then resumed from a damaged checkpoint with the explicit flags;
- the matrix: the hardest strategies (two_tower, fsdp) in the layouts 1 process x 4 devices,
  2 x 2 and 4 x 1, on synthetic data (the same feed by rows as real data; the sbatch test above
  covers digits through tf.data);
- bench, compare and evaluate under 2 processes report the global batch's figures.
"""

import json
import os
import re
import socket
import stat
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from alexnet_jax import cli
from alexnet_jax import distributed

from runs import FAST_COMPILE_FLAGS  # tests/runs.py
import topology_worker  # tests/: the matrix's worker, whose steps and evaluation size it checks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 4  # configs/test.py: 1,437 digits / batch 32 = 44 steps per epoch; 0.1 epoch -> 4 steps
HELD_OUT = 360  # digits' held-out split
TRAIN_ARGS = ("--config", "configs/test.py", "--config.num_epochs=0.1",
              "--config.log_every_steps=1", "--config.checkpoint_every_steps=2",
              "--config.sharding.strategy=two_tower", "--config.sharding.mesh=1x2")


# --- launching groups of processes ----------------------------------------------------------


_handed_out: set[int] = set()  # groups started together must not share a coordinator port


def free_slurm_port() -> int:
  """A free port in the range JAX derives from a SLURM job id (61440 + id % 4096)."""
  for port in range(61440 + os.getpid() % 3000, 65536):
    if port in _handed_out:
      continue
    with socket.socket() as s:
      try:
        s.bind(("127.0.0.1", port))
      except OSError:
        continue
      _handed_out.add(port)
      return port
  raise RuntimeError("no free port")


def process_env(devices: int, extra: dict | None = None) -> dict:
  # No launcher variables but this test's own (pytest itself may run under SLURM).
  base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMPI_"))}
  return dict(base, **(extra or {}), PYTHONPATH=REPO, JAX_PLATFORMS="cpu",
              XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} "
                        f"{FAST_COMPILE_FLAGS}")


def start(cmd, devices, *, env=None) -> subprocess.Popen:
  # Output to a file, not a pipe: a process whose pipe is full blocks until the test reads it,
  # which it does one process at a time; its peers then time out at JAX's shutdown barrier.
  log = tempfile.TemporaryFile("w+")
  p = subprocess.Popen(cmd, cwd=REPO, env=process_env(devices, env), stdout=log,
                       stderr=subprocess.STDOUT, text=True)
  p.log = log
  return p


def start_group(cmd, processes: int, devices: int, *, env=None) -> list[subprocess.Popen]:
  """`processes` copies of `cmd`, joined with the explicit flags (none for one process)."""
  if processes == 1:
    return [start(cmd, devices, env=env)]
  port = free_slurm_port()
  return [start([*cmd, "--coordinator_address", f"127.0.0.1:{port}", "--num_processes",
                 str(processes), "--process_id", str(i)], devices, env=env)
          for i in range(processes)]


def finish(procs, timeout: float = 600) -> list[str]:
  outputs = []
  try:
    for p in procs:
      p.wait(timeout=timeout)
      p.log.seek(0)
      outputs.append(p.log.read())
      p.log.close()
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  # Every failed process's output: the first to fail is not always the first in the list (its
  # peers are then killed by JAX's coordination service, with nothing said about why).
  failed = [f"process {i} exited {p.returncode}:\n{out[-2500:]}"
            for i, (p, out) in enumerate(zip(procs, outputs)) if p.returncode != 0]
  assert not failed, "\n".join(failed)
  return outputs


def launch(*args) -> list[str]:
  return [sys.executable, os.path.join(REPO, "launch.py"), *args]


def records(workdir) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def held_out(output):
  m = re.search(r"held-out \(validation, (\d+) examples\): top-1 error ([\d.]+)%.*"
                r"top-5 error ([\d.]+)%, loss (\d+\.\d+)", output)
  assert m, output[-2000:]
  return int(m.group(1)), float(m.group(2)), float(m.group(3)), float(m.group(4))


def assert_same_training(got_dir, want_dir, steps, examples=HELD_OUT):
  """The same record at every step: losses, norms and the evaluation, to float tolerance."""
  got, want = records(got_dir), records(want_dir)
  assert [r["split"] for r in got] == ["train"] * steps + ["eval"]  # written once, by process 0
  assert [(r["step"], r["split"]) for r in got] == [(r["step"], r["split"]) for r in want]
  for a, b in zip(got, want):
    keys = (("loss", "top1_err", "grad_norm", "param_norm") if a["split"] == "train"
            else ("loss", "top1_err", "top5_err"))
    for key in keys:
      assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (got_dir, a["step"], key)
  assert got[-1]["count"] == want[-1]["count"] == examples


# --- one process per device: the two-tower split with each tower in its own process ---------


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
  """The reference: 1 process holding 2 devices, two_tower on the 1x2 mesh."""
  workdir = tmp_path_factory.mktemp("one_process") / "run"
  (out,) = finish([start(launch("train", *TRAIN_ARGS, "--workdir", str(workdir)), 2)])
  return workdir, out


FAKE_SRUN = """#!/bin/bash
# A stand-in for SLURM's srun on one machine: starts SLURM_NTASKS copies of the command with the
# variables a real step gives its tasks, waits for all, and fails if any failed.
set -u
env > "$SRUN_RECORD"
pids=()
for ((i = 0; i < SLURM_NTASKS; i++)); do
  while [[ "$1" == --* ]]; do shift; done  # srun's own options
  SLURM_PROCID=$i SLURM_LOCALID=$i SLURM_STEP_NUM_TASKS=$SLURM_NTASKS \\
    SLURM_STEP_NODELIST=127.0.0.1 SLURM_STEP_NUM_NODES=1 "$@" > "$SRUN_RECORD.task$i" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
"""


# The multi-process groups run one after another on one worker (one xdist group): side by side
# they oversubscribe the two cores, and processes waiting on their peers' collectives spin.
@pytest.mark.long(seconds=115)  # the whole group: the tests below using one_process and matrix
@pytest.mark.xdist_group("multiprocess")
# The group's first test starts the late-first-step pair (below): its 40 s wait then passes
# while this test and the matrix run, not after them with a core idle.
@pytest.mark.usefixtures("late_first_step")
def test_one_task_per_device_under_sbatch_trains_like_one_process_and_resumes(one_process,
                                                                             tmp_path):
  """scripts/slurm_train.sbatch under the stand-in srun: two_tower with each tower in its own
  process (SLURM's variables), then the same command with the explicit flags resumes it."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  srun = bin_dir / "srun"
  srun.write_text(FAKE_SRUN)
  srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
  port = free_slurm_port()
  record = tmp_path / "srun.env"
  workdir = tmp_path / "slurm"
  env = process_env(1, {
      "PATH": f"{bin_dir}:{os.environ['PATH']}", "SRUN_RECORD": str(record),
      "SLURM_JOB_ID": str(port - 61440), "SLURM_NTASKS": "2", "SLURM_CPUS_PER_TASK": "3",
      "SLURM_SUBMIT_DIR": REPO, "PYTHON": sys.executable})
  result = subprocess.run(
      ["bash", os.path.join(REPO, "scripts", "slurm_train.sbatch"), "configs/test.py",
       str(workdir), *TRAIN_ARGS[2:]], cwd=REPO, env=env, capture_output=True, text=True,
      timeout=600)
  out0, out1 = [(tmp_path / f"srun.env.task{i}").read_text() for i in range(2)]
  assert result.returncode == 0, result.stderr[-2000:] + out0[-3000:]
  assert "process 0 of 2 (slurm): 1 local / 2 global devices" in out0
  ref_dir, ref_out = one_process
  assert held_out(out0) == held_out(out1) == held_out(ref_out)
  assert held_out(out0)[0] == HELD_OUT  # every held-out digit counted once
  assert_same_training(workdir, ref_dir, STEPS)
  # The towers sit in different processes: each loads the whole batch (its data group's rows).
  assert "each process loads rows block 0 of 1" in out0
  assert "process 1 of 2" not in out1  # the others stay quiet
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]  # saved together, once each
  # srun did not inherit --cpus-per-task from sbatch on every SLURM version: passed explicitly.
  assert "SRUN_CPUS_PER_TASK=3" in record.read_text()
  script = open(os.path.join(REPO, "scripts", "slurm_train.sbatch")).read()
  # A warning signal before the time limit reaches the tasks (SIGTERM: they save and stop).
  assert re.search(r"^#SBATCH --signal=TERM@\d+$", script, re.M)

  # The last checkpoint damaged: both processes (started with the explicit flags this time)
  # agree to set it aside and resume from step 2.
  for name in os.listdir(workdir / "checkpoints" / "4" / "state" / "d"):
    os.remove(workdir / "checkpoints" / "4" / "state" / "d" / name)
  cmd = launch("train", *TRAIN_ARGS, "--workdir", str(workdir))
  out0, out1 = finish(start_group(cmd, 2, 1))
  assert "process 0 of 2 (explicit flags): 1 local / 2 global devices" in out0
  assert re.search(r"checkpoints/4 is damaged .*; moved to .*damaged; restored .*checkpoints/2 "
                   "instead", out0), out0[-3000:]
  assert "resuming at step 2" in out0
  assert held_out(out0) == held_out(out1) == held_out(ref_out)
  assert len(os.listdir(workdir / "checkpoints" / "damaged")) == 1


# --- the matrix: the hardest strategies in every layout of 4 devices ----------------------

# The hardest meshes: two_tower's data groups span processes in the 4 x 1 layout (each process
# loads its group's rows, not its own quarter: the case process_rows exists for), fsdp's
# parameters and optimizer state are sharded over every process and gathered layer by layer.
# data and weird_trick load the batch as fsdp does (split over every device: one block per
# process); tests/test_sharding.py checks every strategy on one process's 8 devices.
STRATEGIES = "two_tower=2x2,fsdp=1x4"
LAYOUTS = {"1x4": (1, 4), "2x2": (2, 2), "4x1": (4, 1)}  # processes x devices each


# --- a peer late to the first step ----------------------------------------------------------

LATE_STEP_S = 40  # gloo gives a process 30 s to meet its peers at a program's first collective

LATE_STEP = f"""
import argparse, time
from alexnet_jax import configlib, distributed
p = argparse.ArgumentParser()
distributed.add_arguments(p)
args = p.parse_args()
distributed.initialize(args)
import jax
from alexnet_jax import program as program_lib
from alexnet_jax.data import synthetic
cfg = configlib.load_config("configs/test.py")
configlib.apply_overrides(cfg, ["data.name=synthetic", "sharding.strategy=data"])
program = program_lib.build(cfg, compiler_options={{"xla_backend_optimization_level": 0}})
state = program.create_state()
feed = program.train_feed
batch = feed.put(synthetic.block(synthetic.synthetic_batch(cfg, cfg.batch_size),
                                 feed.rows.index, feed.rows.count))
if jax.process_index() == 1:
  time.sleep({LATE_STEP_S})  # as a process whose compile takes longer on a loaded host
state, metrics = program.train_step(state, batch)
print("first step's loss", float(metrics["loss"]))
"""


@pytest.fixture(scope="module")
def late_first_step():
  """Two processes, one 40 s late to the program's first train step (started, not waited for:
  the group's other tests run meanwhile)."""
  return start_group([sys.executable, "-c", LATE_STEP], 2, 1)


@pytest.mark.xdist_group("multiprocess")
def test_a_peer_late_to_the_first_step_is_waited_for(late_first_step, matrix):
  """Each process compiles the step, then waits for every peer before running it: without that
  wait the early process fails after gloo's 30 s ("Gloo context initialization failed") and
  its peer hangs until JAX's shutdown barrier gives up, as a CI run did under load."""
  outputs = finish(late_first_step)
  losses = [re.search(r"first step's loss (\S+)", out) for out in outputs]
  assert all(losses) and losses[0].group(1) == losses[1].group(1), outputs


@pytest.fixture(scope="module")
def matrix(tmp_path_factory, late_first_step):
  """Every layout trained and evaluated (all at once: the processes wait on each other)."""
  root = tmp_path_factory.mktemp("matrix")
  groups = {}
  for layout, (processes, devices) in LAYOUTS.items():
    cmd = [sys.executable, os.path.join(REPO, "tests", "topology_worker.py"),
           str(root / layout), STRATEGIES]
    groups[layout] = start_group(cmd, processes, devices)
  for procs in groups.values():
    finish(procs, timeout=900)
  return root


def final_params(workdir):
  from alexnet_jax import export
  return export.from_workdir(str(workdir)).params


@pytest.mark.xdist_group("multiprocess")
@pytest.mark.parametrize("layout", ["2x2", "4x1"])
@pytest.mark.parametrize("strategy", [s.split("=")[0] for s in STRATEGIES.split(",")])
def test_every_strategy_trains_alike_in_every_layout(matrix, layout, strategy):
  got, want = matrix / layout / strategy, matrix / "1x4" / strategy
  assert_same_training(got, want, topology_worker.STEPS, topology_worker.EVAL_EXAMPLES)
  import jax
  for a, b in zip(jax.tree.leaves(final_params(got)), jax.tree.leaves(final_params(want))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# --- bench, compare and evaluate under 2 processes -----------------------------------------


@pytest.mark.xdist_group("multiprocess")
def test_bench_compare_and_evaluate_report_the_global_batch(one_process, tmp_path):
  ref_dir, _ = one_process
  params = tmp_path / "ref.safetensors"
  assert cli.main(["export", "--workdir", str(ref_dir), "--out", str(params)]) == 0
  bench = finish(start_group(launch("bench", "--config", "configs/test.py", "--batch", "16",
                                    "--steps", "2", "--warmup", "1",
                                    "--config.sharding.strategy=two_tower",
                                    "--config.sharding.mesh=1x2"), 2, 1))
  assert "bench: small (test), batch 16 (8 per device x 2 cpu devices)" in bench[0]
  assert "throughput:" in bench[0] and bench[1].count("throughput:") == 0  # one report
  compare = finish(start_group(launch("compare", "--config", "configs/test.py",
                                      "--strategies", "data,two_tower",
                                      "--mesh", "data=2x1,two_tower=1x2", "--steps", "1",
                                      "--warmup", "1", "--workdir", str(tmp_path / "compare")),
                               2, 1))
  assert "in 2 processes" in compare[0] and "wrote compare.md" in compare[0]
  rows = (tmp_path / "compare" / "compare.csv").read_text().splitlines()
  assert [r.split(",")[:4] for r in rows[1:]] == [["data", "2x1", "2", "32"],
                                                   ["two_tower", "1x2", "2", "32"]]
  single = finish([start(launch("evaluate", "--params", str(params), "--config",
                                "configs/test.py"), 2)])[0]
  double = finish(start_group(launch("evaluate", "--params", str(params), "--config",
                                     "configs/test.py"), 2, 1))[0]
  table = lambda out: [line for line in out.splitlines() if "ref.safetensors" in line]
  assert f"{HELD_OUT} examples" in double and table(double) == table(single)


# --- a late peer ------------------------------------------------------------------------------

LATE_PEER = """
import argparse, time
import numpy as np
from alexnet_jax import distributed
p = argparse.ArgumentParser()
distributed.add_arguments(p)
args = p.parse_args()
distributed.initialize(args)
import jax
from jax.experimental import multihost_utils
if jax.process_index() == 1:
  time.sleep(5)  # held up before its work, as process 0 is by writing the run's files
distributed.wait_for_peers("start")
multihost_utils.process_allgather(np.int32(1))  # the first collective
"""


def test_a_late_peer_is_waited_for_before_the_first_collective():
  """A process 5 s behind its peer at wait_for_peers: both exit 0 under the default limit; with
  ALEXNET_JAX_PEER_TIMEOUT=2 the same delay is fatal at that barrier. (gloo alone would give
  the late one 30 s: 40 s late, a run failed with "Gloo context initialization failed:
  DEADLINE_EXCEEDED", checked by hand.)"""
  cmd = [sys.executable, "-c", LATE_PEER]
  # Both groups at once (their own coordinator ports): the test waits out one delay, not two.
  waited = start_group(cmd, 2, 1)
  limited = start_group(cmd, 2, 1, env={"ALEXNET_JAX_PEER_TIMEOUT": "2"})
  try:
    finish(waited)
  finally:
    with pytest.raises(AssertionError, match="alexnet_jax: start #1"):
      finish(limited)


# --- launch flags ---------------------------------------------------------------------------


def test_cluster_detection_needs_a_multi_process_launch(monkeypatch):
  for name in list(os.environ):
    if name.startswith(("SLURM_", "OMPI_", "KUBERNETES_", "JOB_COMPLETION")):
      monkeypatch.delenv(name)
  assert distributed.detect_cluster() is None
  monkeypatch.setenv("SLURM_JOB_ID", "123")
  monkeypatch.setenv("SLURM_PROCID", "0")
  monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "1")  # an allocation's shell or a 1-task srun
  assert distributed.detect_cluster() is None
  monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "8")
  assert distributed.detect_cluster() == "slurm"
  for name in ("SLURM_JOB_ID", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS"):
    monkeypatch.delenv(name)
  monkeypatch.setenv("OMPI_MCA_orte_hnp_uri", "1531576320.0;tcp://10.0.0.1:34911")
  monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
  assert distributed.detect_cluster() == "ompi"


def test_partial_distributed_flags_are_one_line_errors(capsys):
  assert cli.main(["train", "--config", "configs/test.py", "--num_processes", "2"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "go together" in err[0]
  assert cli.main(["train", "--config", "configs/test.py", "--coordinator_address", "h:1",
                   "--num_processes", "2", "--process_id", "2"]) == 2
  assert "--process_id 2 is not in [0, 2)" in capsys.readouterr().err


def test_a_bad_peer_timeout_is_a_one_line_error(monkeypatch, capsys):
  monkeypatch.setenv("ALEXNET_JAX_PEER_TIMEOUT", "5m")
  assert cli.main(["train", "--config", "configs/test.py", "--coordinator_address", "h:1",
                   "--num_processes", "2", "--process_id", "1"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "ALEXNET_JAX_PEER_TIMEOUT='5m' is not a whole number" in err[0]
