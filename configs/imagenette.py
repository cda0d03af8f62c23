"""torchvision's layout (`owt`) on Imagenette: 10 easy ImageNet classes, ~9.5k train / 3.9k val.

  python -c "import tensorflow_datasets as tfds; tfds.builder('imagenette/full-size-v2').download_and_prepare()"
  python launch.py train --config configs/imagenette.py --workdir runs/imagenette

Reaches: unmeasured here (needs the 1.5 GB download).
"""

from alexnet_jax.configlib import base_config


def get_config():
  c = base_config()
  c.model.name = "owt"
  c.model.num_classes = 10
  c.model.init = "he"
  c.data.name = "imagenette/full-size-v2"
  c.data.resize_size = 256
  c.data.crop_size = 224
  c.batch_size = 128
  c.eval_batch_size = 256
  c.num_epochs = 60.0
  c.optim.name = "sgdw"
  c.optim.learning_rate = 0.02
  c.optim.weight_decay = 5e-4
  c.optim.schedule = "warmup_cosine"
  c.optim.warmup_epochs = 2.0
  c.log_every_steps = 20
  return c
