"""Every shipped config runs on the device counts users have: it loads, and passes the whole
check `train` makes before compiling (strategy and mesh, model options, batch sizes that split
over the devices, optimizer), on 1, 2, 4 and 8 devices."""

import jax
import pytest

from alexnet_jax import configlib, program


def test_every_config_is_checked():
  assert {"default", "fashion_mnist", "paper", "owt", "test"} <= set(configlib.shipped_configs())


@pytest.mark.parametrize("name", configlib.shipped_configs())
@pytest.mark.parametrize("devices", [1, 2, 4, 8])
def test_config_runs_on_this_many_devices(name, devices):
  program.validate(configlib.load(name), jax.devices()[:devices])
