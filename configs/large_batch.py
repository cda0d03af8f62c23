"""Large-batch AlexNet-BN (You et al. 2017): BatchNorm instead of LRN, LARS, bfloat16 compute,
linear learning-rate scaling with a warm-up (Goyal et al. 2017), then a cosine decay.

  python launch.py train --config configs/large_batch.py --workdir runs/large_batch \
      --config.data.manual_dir=/data/imagenet/manual --config.batch_size=8192

The learning rate scales with the batch: base 0.02 per 256 images (LARS' trust ratio keeps each
layer's step proportionate). You et al. report AlexNet-BN at batch 8k-32k matching batch 512.
Reaches: unmeasured here (needs ImageNet and a multi-GPU host).
"""

from alexnet_jax.configlib import base_config


def get_config(batch_size: str = "8192"):
  c = base_config()
  c.model.name = "bn"
  c.model.num_classes = 1000
  c.model.dtype = "bfloat16"
  c.data.name = "imagenet2012"
  c.data.resize_size = 256
  c.data.crop_size = 227
  c.batch_size = int(batch_size)
  c.eval_batch_size = 1024
  c.num_epochs = 90.0
  c.optim.name = "lars"
  c.optim.learning_rate = 0.02 * c.batch_size / 256
  c.optim.weight_decay = 5e-4
  c.optim.decay_exclude = ("bias", "scale")
  c.optim.schedule = "warmup_cosine"
  c.optim.warmup_epochs = 5.0
  c.log_every_steps = 20
  c.checkpoint_every_steps = 500
  return c
