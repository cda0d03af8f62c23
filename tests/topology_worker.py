"""One process of a topology test: trains configs/test.py on synthetic data (made on the host
and fed by the rows each process's devices hold, as real batches are; no TensorFlow to load)
under several strategies, one after the other, through `train.train_and_evaluate` (the loop
`launch.py train` runs), each in its own work directory under OUTDIR.

  python tests/topology_worker.py OUTDIR data=4x1,two_tower=2x2 \
      [--coordinator_address HOST:PORT --num_processes N --process_id I]

Several strategies share one process start (JAX, TensorFlow and the dataset load once).
"""

import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from alexnet_jax import backend, configlib, distributed  # noqa: E402

STEPS = 3  # one epoch of 3 batches of 32, then the held-out evaluation
EVAL_EXAMPLES = 80  # two evaluation batches of 64, the second with 48 padded rows masked out


def main() -> int:
  backend.start_up()  # this machine's XLA flags, before JAX starts, as launch.py sets them
  parser = argparse.ArgumentParser()
  parser.add_argument("outdir")
  parser.add_argument("strategies", help="name=mesh pairs, comma-separated")
  distributed.add_arguments(parser)
  args = parser.parse_args()
  distributed.initialize(args)

  from alexnet_jax import train

  for item in args.strategies.split(","):
    name, mesh = item.split("=")
    cfg = configlib.load_config(os.path.join(REPO, "configs", "test.py"))
    configlib.apply_overrides(cfg, [
        f"sharding.strategy={name}", f"sharding.mesh={mesh}", "data.name=synthetic",
        f"data.synthetic_train_size={STEPS * cfg.batch_size}",
        f"data.synthetic_eval_size={EVAL_EXAMPLES}", "num_epochs=1",
        "log_every_steps=1", "checkpoint_every_steps=0", "eval_every_epochs=1"])
    # train_and_evaluate writes the run's record (config.json, for export) as `launch.py train`
    # does: from process 0, atomically, while every process reads it to check the run.
    train.train_and_evaluate(cfg, os.path.join(args.outdir, name))
  return 0


if __name__ == "__main__":
  sys.exit(main())
