"""Several processes (hosts) as one JAX program: `jax.distributed.initialize`, before any JAX call.

How the processes find each other, in this order:
  1. explicit flags: --coordinator_address HOST:PORT --num_processes N --process_id I
     (every process gets the same address and count, and its own id);
  2. a cluster launcher's environment, left to JAX's own detection: SLURM (`srun`, one task
     per GPU), Open MPI (`mpirun`), Kubernetes (an indexed Job/JobSet; needs the `kubernetes`
     package);
  3. otherwise one process: nothing to initialise.

After initialisation every process sees all devices of all processes (`jax.devices()`), and its
own (`jax.local_devices()`); each process loads the rows of every batch that its devices hold
under the strategy's batch sharding (sharding.process_rows: 1/N of it for data parallelism, the
same rows as its tower partner for two_tower), and only process 0 writes metrics and logs.
"""

from __future__ import annotations

import argparse
import collections
import logging
import os

from alexnet_jax import configlib

log = logging.getLogger("alexnet_jax.distributed")

# How long a process waits for a late peer before a program's first collective
# (wait_for_peers). Set-up can legitimately differ by minutes between hosts (one reads its
# dataset's index from a slow shared disk). A peer that fails before the barrier does not
# hold the others for this long: they stop with an error when its exit times out at JAX's
# shutdown barrier (5 minutes). ALEXNET_JAX_PEER_TIMEOUT (seconds) sets another limit.
PEER_TIMEOUT_S = 1800


def peer_timeout() -> int:
  value = os.environ.get("ALEXNET_JAX_PEER_TIMEOUT", "")
  if not value:
    return PEER_TIMEOUT_S
  try:
    seconds = int(value)
  except ValueError:
    seconds = 0
  if seconds < 1:
    raise configlib.ConfigError(f"ALEXNET_JAX_PEER_TIMEOUT={value!r} is not a whole number of "
                                "seconds >= 1: set it to one, or unset it for the default "
                                f"({PEER_TIMEOUT_S})")
  return seconds


_barriers_passed: collections.Counter = collections.Counter()


def wait_for_peers(name: str) -> None:
  """Hold until every process has reached this point (nothing to wait for in one process).

  Called before a program's first collective. gloo, the CPU collectives, gives a process 30 s
  (fixed inside XLA) to join a new group of peers, and a process held up by work only it does
  (process 0 writes the run's files) on a loaded machine can be later than that; this barrier,
  on JAX's coordination service, waits up to peer_timeout() instead. Every process must pass
  the same barriers in the same order.
  """
  import jax

  if jax.process_count() == 1:
    return
  # The coordination service's client: JAX has no public barrier that is not itself a
  # collective (Orbax waits on this client the same way).
  from jax._src import distributed as jax_distributed

  _barriers_passed[name] += 1
  jax_distributed.global_state.client.wait_at_barrier(
      f"alexnet_jax: {name} #{_barriers_passed[name]}", timeout_in_ms=peer_timeout() * 1000)


class StartTogether:
  """A jitted function whose processes start running it together.

  A compiled program meets its peers at its first collective of each group of devices, and gloo
  gives a process 30 s to be met there. Compiling the program comes just before, and takes each
  process its own time: on a loaded host one process of a group can take a minute longer than
  another, and the early one then fails ("Gloo context initialization failed") while the others
  hang until JAX's shutdown barrier gives up. So in a run of several processes the first call
  compiles, waits for every peer (wait_for_peers), then runs; so does `compile`, for callers that
  run the executable themselves (bench, compare). In one process this is the jitted function.
  Later calls must keep the first call's shapes and shardings (a new compile would not wait).
  """

  def __init__(self, jitted, name: str):
    self.jitted = jitted
    self.name = name
    self._started = False

  def compile(self, *args):
    """The executable for `args`, once every process has compiled it."""
    compiled = self.jitted.lower(*args).compile()
    wait_for_peers(f"{self.name} compiled")
    self._started = True
    return compiled

  def __call__(self, *args):
    if not self._started:
      import jax
      if jax.process_count() > 1:
        self.compile(*args)  # jit's own cache keeps it: the call below does not compile again
      self._started = True
    return self.jitted(*args)

  def __getattr__(self, name):  # lower, trace, eval_shape...: the jitted function's
    return getattr(self.jitted, name)


def add_arguments(p: argparse.ArgumentParser) -> None:
  g = p.add_argument_group("several processes (hosts); under SLURM, Open MPI or Kubernetes "
                           "these are detected")
  g.add_argument("--coordinator_address", default="",
                 help="HOST:PORT of process 0, the same for every process")
  g.add_argument("--num_processes", type=int, default=0, help="how many processes in all")
  g.add_argument("--process_id", type=int, default=-1, help="this process's id, 0..N-1")


def _int_env(name: str) -> int:
  try:
    return int(os.environ.get(name, "0"))
  except ValueError:
    return 0


def detect_cluster() -> str | None:
  """The launcher that started several processes of this job, or None.

  Only multi-process launches count: a shell inside a SLURM allocation (or a one-task `srun`)
  is one process and must not wait for peers.
  """
  if "SLURM_PROCID" in os.environ and _int_env("SLURM_STEP_NUM_TASKS") > 1:
    return "slurm"
  if "OMPI_MCA_orte_hnp_uri" in os.environ and _int_env("OMPI_COMM_WORLD_SIZE") > 1:
    return "ompi"
  if "KUBERNETES_SERVICE_HOST" in os.environ and "JOB_COMPLETION_INDEX" in os.environ:
    return "k8s"
  return None


def initialize(args: argparse.Namespace) -> bool:
  """Join the other processes if this is a multi-process launch. Call before any JAX call.

  Returns True when running as one of several processes.
  """
  import jax

  explicit = [args.coordinator_address, args.num_processes > 0, args.process_id >= 0]
  cluster = None
  if any(explicit):
    if not all(explicit):
      raise configlib.ConfigError(
          "--coordinator_address, --num_processes and --process_id go together: give all "
          "three (the same address and count on every process, its own id to each)")
    if not 0 <= args.process_id < args.num_processes:
      raise configlib.ConfigError(f"--process_id {args.process_id} is not in "
                                  f"[0, {args.num_processes})")
    kwargs = dict(coordinator_address=args.coordinator_address,
                  num_processes=args.num_processes, process_id=args.process_id)
  else:
    cluster = detect_cluster()
    if cluster is None:
      return False
    if cluster == "k8s":
      import importlib.util
      if importlib.util.find_spec("kubernetes") is None:
        raise configlib.ConfigError(
            "Kubernetes indexed job detected, but JAX needs the `kubernetes` package to find "
            "its peers: pip install kubernetes, or pass --coordinator_address, "
            "--num_processes and --process_id")
      kwargs = {}  # JAX's own detection (its Kubernetes finder has no name to ask for)
    else:
      kwargs = dict(cluster_detection_method=cluster)
      # JAX gives each process GPU number <local rank> of its node; a launcher that already
      # shows each task just its own GPU leaves that GPU as number 0.
      visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
      if visible and len(visible.split(",")) == 1:
        kwargs["local_device_ids"] = [0]
  peer_timeout()  # a bad value is refused before any peer waits on this one
  # Collectives between CPU devices of different processes (the GPU backend has its own);
  # gloo is JAX 0.10's default, named here so that no other default is picked up.
  try:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  except AttributeError:  # a JAX without the option: its own default
    pass
  jax.distributed.initialize(**kwargs)
  if jax.process_index() != 0:  # one voice: the others log only warnings and errors
    logging.getLogger("alexnet_jax").setLevel(logging.WARNING)
  log.info("process %d of %d (%s): %d local / %d global devices", jax.process_index(),
           jax.process_count(), cluster or "explicit flags", jax.local_device_count(),
           jax.device_count())
  return True
