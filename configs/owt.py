"""torchvision's AlexNet (the single-tower "one weird trick" layout) with torchvision's recipe.

  python launch.py train --config configs/owt.py --workdir runs/owt \
      --config.data.manual_dir=/data/imagenet/manual --config.data.data_dir=/data/tfds

Batch 256, SGD with momentum 0.9 and coupled weight decay 1e-4 (PyTorch's SGD), learning rate
0.01 divided by 10 every 30 epochs, 90 epochs, 224 px crops. One difference from torchvision's
reference script: the crops are the paper's (random 224 of the central 256, mirrored) rather
than RandomResizedCrop. torchvision's published weights: 43.48% top-1 / 20.93% top-5 error.
Reaches: unmeasured here (needs ImageNet).
"""

from alexnet_jax.configlib import base_config


def get_config():
  c = base_config()
  c.model.name = "owt"
  c.model.num_classes = 1000
  c.data.name = "imagenet2012"
  c.data.resize_size = 256
  c.data.crop_size = 224
  c.data.pca_lighting = 0.0
  c.batch_size = 256
  c.eval_batch_size = 256
  c.num_epochs = 90.0
  c.optim.name = "sgd"
  c.optim.learning_rate = 0.01
  c.optim.weight_decay = 1e-4
  c.optim.decay_exclude = ()  # torchvision decays every parameter
  c.optim.schedule = "step"
  c.optim.step_epochs = 30.0
  c.log_every_steps = 100
  c.checkpoint_every_steps = 2000
  return c
