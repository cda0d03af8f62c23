"""The 2012 recipe: the two-tower `paper` network on ILSVRC-2012, as the paper trained it.

  python launch.py train --config configs/paper.py --workdir runs/paper \
      --config.data.manual_dir=/data/imagenet/manual --config.data.data_dir=/data/tfds

Batch 128, the paper's momentum rule (learning rate inside the velocity, weight decay 5e-4 on
every weight), learning rate 0.01 divided by 10 when the validation error stops improving
(at most three times), ~90 epochs; 227x227 crops of the central 256x256, mirrors, PCA lighting.
Preprocessing differs from 2012 in one way: images are scaled to [0, 1] and standardised with the
usual ImageNet mean and std instead of subtracting the mean image.
The paper reports 40.7% top-1 / 18.2% top-5 error (10 views) for one CNN.
Reaches: unmeasured here (needs ImageNet and about a GPU-day).
"""

from alexnet_jax.configlib import base_config


def get_config():
  c = base_config()
  c.model.name = "paper"
  c.model.num_classes = 1000
  c.data.name = "imagenet2012"
  c.data.resize_size = 256
  c.data.crop_size = 227
  c.data.pca_lighting = 0.1
  c.batch_size = 128
  c.eval_batch_size = 256
  c.num_epochs = 90.0
  c.optim.name = "paper"
  c.optim.learning_rate = 0.01
  c.optim.momentum = 0.9
  c.optim.weight_decay = 5e-4
  c.optim.decay_exclude = ()  # the paper's rule is written for every weight w
  c.optim.schedule = "plateau"
  c.optim.plateau_patience = 3  # the paper gives no number; 3 epochs without improvement
  c.optim.plateau_max_drops = 3
  c.eval_every_epochs = 1.0
  c.log_every_steps = 100
  c.checkpoint_every_steps = 2000
  return c
