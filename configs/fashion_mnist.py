"""The `small` two-tower AlexNet (LRN, overlapping pooling, dropout) on Fashion-MNIST, offline.

  apt-get install dataset-fashion-mnist     # Zalando's four IDX files, 30 MB, no other download
  python launch.py train --config configs/fashion_mnist.py --workdir runs/fashion_mnist

60,000 training and 10,000 test images of 28x28 clothing in 10 classes, read from Debian's
/usr/share/datasets/fashion-mnist/ (another folder: --config.data.folder=DIR). Grey images,
repeated to 3 channels, at their own 28 px (no upscaling, no random crops), mirrored (clothes
are left-right symmetric, unlike digits); no PCA lighting (it would tint grey images).
Evaluated on the 10,000 test images ("validation" names them too).

Reaches 91.79% top-1 accuracy on the test images (8.21% error, top-5 error 0.11%), short of
the 92% goal; one run, 18 epochs, 2026-12-03, on the shared 2-core machine while four other
jobs ran (30 min wall, 390-1,200 images/s; at the 1,000-1,200 images/s of its quieter stretches
the 1.08 million training images take 15 to 18 minutes, an estimate, not a measurement):

  python launch.py train --config configs/fashion_mnist.py --workdir runs/fashion_mnist \
      --config.progress=false

The same day, the same network with dropout 0.2 and 20 epochs reached 91.82%. With these
budgets the test error stops near 8.2% while the training error (with dropout and mirroring)
falls to about 4%: more epochs or less dropout alone do not find the missing 0.2 points.
"""

from alexnet_jax.configlib import base_config


def get_config():
  c = base_config()
  c.model.name = "small"
  c.model.num_classes = 10
  c.model.dropout = 0.1  # the paper's 0.5 fits too slowly for this budget
  c.data.name = "fashion_mnist"
  c.data.eval_split = "test"
  c.data.resize_size = 28
  c.data.crop_size = 28
  c.data.random_crop = False  # the whole 28 px image: random crops fitted too slowly
  c.data.flip = True
  c.data.pca_lighting = 0.0
  c.data.mean = (0.286,) * 3  # Fashion-MNIST's training set: 72.9 / 255
  c.data.std = (0.353,) * 3  # 90.0 / 255
  c.data.cache = True
  c.batch_size = 128
  c.eval_batch_size = 500
  c.num_epochs = 18.0
  c.optim.name = "sgdw"
  c.optim.learning_rate = 0.1
  c.optim.schedule = "warmup_cosine"
  c.optim.warmup_epochs = 0.5
  c.log_every_steps = 100
  c.eval_every_epochs = 5.0
  c.checkpoint_every_steps = 0
  return c
