"""Offline demo: the `small` AlexNet (two towers, LRN, overlapping pooling) at half width on
scikit-learn's digits.

Runs on a fresh machine with no network and no dataset download:

  python launch.py train                      # same as --config configs/default.py

1,797 real 8x8 handwritten digits (10 classes), a fixed split of 1,437 train / 360 held out,
upscaled to 36 px, random 32 px crops (no mirroring: a mirrored 2 is no 2). Half width: on
these digits as accurate as the full width, in about half the time. Reaches: see README
(measured on the 2-core CPU).
"""

from alexnet_jax.configlib import base_config


def get_config():
  c = base_config()
  c.model.name = "small"
  c.model.width = 0.5
  c.model.num_classes = 10
  c.data.name = "digits"
  c.data.resize_size = 36
  c.data.crop_size = 32
  c.data.flip = False
  c.data.cache = True
  c.batch_size = 64
  c.eval_batch_size = 128
  c.num_epochs = 30.0
  c.optim.name = "sgdw"
  c.optim.learning_rate = 0.02
  c.optim.schedule = "warmup_cosine"
  c.optim.warmup_epochs = 1.0
  c.log_every_steps = 10
  c.eval_every_epochs = 5.0
  c.checkpoint_every_steps = 200
  return c
