"""The `small` two-tower AlexNet (LRN, overlapping pooling, dropout) on Fashion-MNIST, offline.

  apt-get install dataset-fashion-mnist     # Zalando's four IDX files, 30 MB, no other download
  python launch.py train --config configs/fashion_mnist.py --workdir runs/fashion_mnist

60,000 training and 10,000 test images of 28x28 clothing in 10 classes, read from Debian's
/usr/share/datasets/fashion-mnist/ (another folder: --config.data.folder=DIR). Grey images,
repeated to 3 channels, at their own 28 px (no upscaling, no random crops), mirrored (clothes
are left-right symmetric, unlike digits); no PCA lighting (it would tint grey images).
Evaluated on the 10,000 test images ("validation" names them too).

Reaches 91.53% top-1 accuracy on the test images (8.47% error, top-5 error 0.09%), short of
the 92% goal; one run, 15 epochs, 36.6 min wall (start-up included) under `nice -n 10` on the
2-core CPU shared with three other engineers' jobs (225-640 images/s; about 950 when the machine
was quiet, so some 16 min of training alone). The command:

  nice -n 10 python launch.py train --config configs/fashion_mnist.py --workdir /tmp/fm_run2 \
      --config.progress=false

An earlier recipe (upscaled to 30 px, random 28 px crops, dropout 0.3, 12 epochs) reached 90.35%:
both runs ended with training error about as high as test error, so this network underfits
Fashion-MNIST in such budgets, and less regularisation or more epochs are where the missing
half point is likely to be.
"""

from alexnet_jax.configlib import base_config


def get_config():
  c = base_config()
  c.model.name = "small"
  c.model.num_classes = 10
  c.model.dropout = 0.25  # the paper's 0.5 fits too slowly for this budget
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
  c.num_epochs = 15.0
  c.optim.name = "sgdw"
  c.optim.learning_rate = 0.1
  c.optim.schedule = "warmup_cosine"
  c.optim.warmup_epochs = 0.5
  c.log_every_steps = 100
  c.eval_every_epochs = 5.0
  c.checkpoint_every_steps = 0
  return c
