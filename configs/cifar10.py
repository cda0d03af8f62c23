"""The `small` two-tower AlexNet on CIFAR-10 (32x32, 50k train / 10k test).

  python -c "import tensorflow_datasets as tfds; tfds.builder('cifar10').download_and_prepare()"
  python launch.py train --config configs/cifar10.py --workdir runs/cifar10

Images are upscaled to 36 px and randomly cropped to 32, mirrored, with PCA lighting.
Reaches: unmeasured here (needs the 160 MB download).
"""

from alexnet_jax.configlib import base_config


def get_config():
  c = base_config()
  c.model.name = "small"
  c.model.width = 2.0
  c.model.num_classes = 10
  c.data.name = "cifar10"
  c.data.eval_split = "test"
  c.data.resize_size = 36
  c.data.crop_size = 32
  c.data.cache = True
  c.batch_size = 128
  c.eval_batch_size = 512
  c.num_epochs = 60.0
  c.optim.name = "sgdw"
  c.optim.learning_rate = 0.05
  c.optim.schedule = "warmup_cosine"
  c.optim.warmup_epochs = 2.0
  c.log_every_steps = 50
  return c
