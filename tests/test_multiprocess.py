"""Several processes as one program: `launch.py train` over 2 processes on loopback (2 virtual CPU
devices each, collectives through gloo) trains exactly as 1 process on 4 devices.

Both runs use the paper's two-tower split on a 2x2 mesh: each process is one data group holding
both towers, so the batch, the gradient sums and the checkpoint all cross processes.
"""

import json
import os
import re
import socket
import subprocess
import sys

import pytest

from alexnet_jax import cli
from alexnet_jax import distributed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 4  # configs/test.py: 1,437 digits / batch 32 = 44 steps per epoch; 0.1 epoch -> 4 steps


def _free_slurm_port() -> int:
  """A free port in the range JAX derives from a SLURM job id (61440 + id % 4096)."""
  for port in range(61440 + os.getpid() % 3000, 65536):
    with socket.socket() as s:
      try:
        s.bind(("127.0.0.1", port))
      except OSError:
        continue
      return port
  raise RuntimeError("no free port")


def _launch(workdir, devices, *extra, env=None):
  # No launcher variables but this test's own (pytest itself may run under SLURM).
  base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMPI_"))}
  env = dict(base, **(env or {}), PYTHONPATH=REPO, JAX_PLATFORMS="cpu",
             # Backend optimisation off: the same program, compiled several times faster.
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} "
                       "--xla_backend_optimization_level=0")
  cmd = [sys.executable, os.path.join(REPO, "launch.py"), "train", "--config", "configs/test.py",
         "--workdir", str(workdir), "--config.num_epochs=0.1", "--config.log_every_steps=1",
         "--config.sharding.strategy=two_tower", "--config.sharding.mesh=2x2", *extra]
  return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _finish(procs):
  outputs = []
  try:
    for p in procs:
      out, _ = p.communicate(timeout=400)
      outputs.append(out)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  return outputs


def _records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _held_out(output):
  m = re.search(r"top-1 error ([\d.]+)%.*top-5 error ([\d.]+)%, loss (\d+\.\d+)", output)
  assert m, output[-2000:]
  return tuple(float(x) for x in m.groups())


def test_two_processes_train_like_one_process_on_four_devices(tmp_path):
  port = _free_slurm_port()
  multi, single = tmp_path / "two_processes", tmp_path / "one_process"
  procs = [
      # Process 0 is told where everything is; process 1 finds it from SLURM's variables, as
      # under `srun` (the coordinator is the first node of the step, its port from the job id).
      _launch(multi, 2, "--coordinator_address", f"127.0.0.1:{port}", "--num_processes", "2",
              "--process_id", "0"),
      _launch(multi, 2, env=dict(SLURM_JOB_ID=str(port - 61440), SLURM_STEP_NODELIST="127.0.0.1",
                                 SLURM_NTASKS="2", SLURM_STEP_NUM_TASKS="2", SLURM_PROCID="1",
                                 SLURM_LOCALID="1", SLURM_STEP_NUM_NODES="1")),
      _launch(single, 4),
  ]
  out0, out1, out_single = _finish(procs)

  # Every process reports the same held-out result as the single process ...
  assert _held_out(out0) == _held_out(out1) == _held_out(out_single)
  # ... and the same loss at every step (process 0 writes the record for all of them).
  multi_records, single_records = _records(multi), _records(single)
  assert [r["split"] for r in multi_records] == ["train"] * STEPS + ["eval"]  # written once
  assert len(single_records) == len(multi_records)
  for a, b in zip(multi_records, single_records):
    assert (a["step"], a["split"]) == (b["step"], b["split"])
    keys = ("loss", "top1_err", "grad_norm", "param_norm") if a["split"] == "train" else (
        "loss", "top1_err", "top5_err", "count")
    for key in keys:
      assert a[key] == pytest.approx(b[key], rel=1e-5), (a["step"], key)
  assert "process 0 of 2 (explicit flags): 2 local / 4 global devices" in out0
  assert "process 1 of 2" not in out1  # the others stay quiet ...
  assert "alexnet_jax.train: step" in out0 and "alexnet_jax.train: step" not in out1
  # ... and both wrote the final checkpoint together.
  assert os.listdir(multi / "checkpoints") == [str(STEPS)]


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
