"""The `small` two-tower AlexNet (LRN, overlapping pooling, dropout) on Fashion-MNIST, offline.

  apt-get install dataset-fashion-mnist     # Zalando's four IDX files, 30 MB, no other download
  python launch.py train --config configs/fashion_mnist.py --workdir runs/fashion_mnist

60,000 training and 10,000 test images of 28x28 clothing in 10 classes, read from Debian's
/usr/share/datasets/fashion-mnist/ (another folder: --config.data.folder=DIR). Grey images,
repeated to 3 channels; upscaled to 32 px, random 28 px crops, mirrored (clothes are
left-right symmetric, unlike digits); no PCA lighting (it would tint grey images).
Evaluated on the test set.
Reaches: see README (measured on the 2-core CPU).
"""

from alexnet_jax.configlib import base_config


def get_config():
  c = base_config()
  c.model.name = "small"
  c.model.num_classes = 10
  c.data.name = "fashion_mnist"
  c.data.eval_split = "test"
  c.data.resize_size = 32
  c.data.crop_size = 28
  c.data.flip = True
  c.data.pca_lighting = 0.0
  c.data.mean = (0.286,) * 3  # Fashion-MNIST's training set: 72.9 / 255
  c.data.std = (0.353,) * 3  # 90.0 / 255
  c.data.cache = True
  c.batch_size = 128
  c.eval_batch_size = 500
  c.num_epochs = 10.0
  c.optim.name = "sgdw"
  c.optim.learning_rate = 0.05
  c.optim.schedule = "warmup_cosine"
  c.optim.warmup_epochs = 1.0
  c.log_every_steps = 100
  c.eval_every_epochs = 5.0
  c.checkpoint_every_steps = 0
  return c
