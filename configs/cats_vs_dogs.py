"""The `paper` network with two outputs on tensorflow-datasets' cats_vs_dogs (23k images).

cats_vs_dogs has only a train split: 90% trains, the last 10% is held out.

  python -c "import tensorflow_datasets as tfds; tfds.builder('cats_vs_dogs').download_and_prepare()"
  python launch.py train --config configs/cats_vs_dogs.py --workdir runs/cats_vs_dogs

Reaches: unmeasured here (needs the 800 MB download).
"""

from alexnet_jax.configlib import base_config


def get_config():
  c = base_config()
  c.model.name = "paper"
  c.model.num_classes = 2
  c.model.init = "he"
  c.data.name = "cats_vs_dogs"
  c.data.train_split = "train[:90%]"
  c.data.eval_split = "train[90%:]"
  c.data.resize_size = 256
  c.data.crop_size = 227
  c.batch_size = 128
  c.eval_batch_size = 256
  c.num_epochs = 30.0
  c.optim.name = "sgdw"
  c.optim.learning_rate = 0.01
  c.optim.schedule = "warmup_cosine"
  c.optim.warmup_epochs = 1.0
  c.log_every_steps = 50
  return c
