"""The `small` two-tower AlexNet on Tiny ImageNet (200 classes, 64x64, 100k train / 10k val).

Tiny ImageNet is not in tensorflow-datasets; download tiny-imagenet-200.zip from
http://cs231n.stanford.edu/tiny-imagenet-200.zip, unzip it, and point the folder source at it:

  python launch.py train --config configs/tiny_imagenet.py --workdir runs/tiny \
      --config.data.folder=/data/tiny-imagenet-200

Reaches: unmeasured here (needs the download).
"""

from alexnet_jax.configlib import base_config


def get_config():
  c = base_config()
  c.model.name = "small"
  c.model.width = 2.0
  c.model.num_classes = 200
  c.data.name = "folder"
  c.data.folder = "tiny-imagenet-200"
  c.data.resize_size = 72
  c.data.crop_size = 64
  c.data.cache = True
  c.batch_size = 256
  c.eval_batch_size = 512
  c.num_epochs = 60.0
  c.optim.name = "sgdw"
  c.optim.learning_rate = 0.05
  c.optim.schedule = "warmup_cosine"
  c.optim.warmup_epochs = 2.0
  c.log_every_steps = 50
  return c
