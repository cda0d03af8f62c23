"""Every shipped config runs on the device counts users have: it loads, and passes the whole
check `train` makes before compiling (strategy and mesh, model options, batch sizes that split
over the devices, optimizer), on 1, 2, 4 and 8 devices."""

import os

import jax
import pytest

from alexnet_jax import configlib, program

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(name for name in os.listdir(os.path.join(REPO, "configs"))
                 if name.endswith(".py") and name != "__init__.py")


def test_every_config_is_checked():
  assert {"default.py", "fashion_mnist.py", "paper.py", "owt.py", "test.py"} <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("devices", [1, 2, 4, 8])
def test_config_runs_on_this_many_devices(name, devices):
  cfg = configlib.load_config(os.path.join(REPO, "configs", name))
  program.validate(cfg, jax.devices()[:devices])
