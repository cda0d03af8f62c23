"""Tiny config for the tests: the `small` model at a quarter width on digits at 32 px, a few steps.

  python launch.py train --config configs/test.py --workdir /tmp/alexnet_test
"""

from alexnet_jax.configlib import base_config


def get_config():
  c = base_config()
  c.model.name = "small"
  c.model.width = 0.25
  c.model.num_classes = 10
  c.data.name = "digits"
  c.data.resize_size = 36
  c.data.crop_size = 32
  c.data.flip = False
  c.data.cache = True
  c.data.shuffle_buffer = 2048
  c.batch_size = 32
  c.eval_batch_size = 64
  c.num_epochs = 1.0
  c.optim.name = "sgdw"
  c.optim.learning_rate = 0.02
  c.optim.schedule = "constant"
  c.log_every_steps = 5
  c.eval_every_epochs = 1.0
  c.checkpoint_every_steps = 20
  c.progress = False
  return c
