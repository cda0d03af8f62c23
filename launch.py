#!/usr/bin/env python3
"""alexnet_jax's command line. `python launch.py --help` lists the commands.

  python launch.py train                                  # offline demo (configs/default.py)
  python launch.py train --config configs/paper.py --workdir runs/paper --config.batch_size=256
"""

import sys

from alexnet_jax.cli import entry_point

if __name__ == "__main__":
  sys.exit(entry_point())
