"""The AlexNet variants as layer tables, and the options a config chooses on top of one.

model.py builds the network from these; configs choose a variant by name (config.model.name).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Conv:
  name: str
  features: int  # per tower
  kernel: int
  stride: int = 1
  padding: int = 0
  reads_both: bool = False  # True: reads every tower's channels; False: only its own tower's
  lrn: bool = False  # where LRN follows the ReLU (when the model's norm is "lrn")
  pool: bool = False  # max pooling after (overlapping 3x3/2 by default)
  bias: float = 0.0  # the paper's initial bias


@dataclasses.dataclass(frozen=True)
class Variant:
  name: str
  towers: int
  convs: tuple[Conv, ...]
  fc: tuple[int, ...]  # fc6, fc7 widths per tower; fc8 (the classifier) follows
  input_size: int  # the size the variant is defined for (configs set data.crop_size to it)
  norm: str  # lrn | batch | none
  init: str  # paper | pytorch | he
  fc_bias: float = 1.0
  avgpool_to: int = 0  # torchvision's AdaptiveAvgPool2d((6, 6)) before fc6; 0 = none
  dropout_on: tuple[str, ...] = ("fc7", "fc8")  # layers whose *inputs* get dropout


def _paper_convs(conv1_padding: int = 0) -> tuple[Conv, ...]:
  return (
      Conv("conv1", 48, 11, 4, conv1_padding, reads_both=True, lrn=True, pool=True),
      Conv("conv2", 128, 5, 1, 2, lrn=True, pool=True, bias=1.0),
      Conv("conv3", 192, 3, 1, 1, reads_both=True),
      Conv("conv4", 192, 3, 1, 1, bias=1.0),
      Conv("conv5", 128, 3, 1, 1, pool=True, bias=1.0),
  )


VARIANTS: dict[str, Variant] = {
    # The 2012 network (PAPER.md). 227x227 input: 224 needs conv1 padding 2, as torchvision has.
    "paper": Variant("paper", 2, _paper_convs(), (2048, 2048), 227, "lrn", "paper"),
    # The seven-CNN entry's variant: a sixth convolution over the last pooling layer. The paper
    # gives no details; here it is 3x3, 128 per tower, own tower only, like conv4 and conv5.
    "paper6": Variant(
        "paper6", 2, _paper_convs() + (Conv("conv6", 128, 3, 1, 1, bias=1.0),), (2048, 2048), 227,
        "lrn", "paper"),
    # One weird trick / torchvision: one tower, no LRN, adaptive average pooling, dropout before
    # fc6 and fc7, PyTorch's default initialisation.
    "owt": Variant(
        "owt", 1,
        (
            Conv("conv1", 64, 11, 4, 2, reads_both=True, pool=True),
            Conv("conv2", 192, 5, 1, 2, pool=True),
            Conv("conv3", 384, 3, 1, 1),
            Conv("conv4", 256, 3, 1, 1),
            Conv("conv5", 256, 3, 1, 1, pool=True),
        ),
        (4096, 4096), 224, "none", "pytorch", avgpool_to=6, dropout_on=("fc6", "fc7")),
    # AlexNet-BN of the large-batch literature (You et al. 2017): the paper's layer widths in one
    # tower, BatchNorm after every convolution instead of LRN.
    "bn": Variant(
        "bn", 1,
        tuple(dataclasses.replace(c, features=2 * c.features, reads_both=True)
              for c in _paper_convs()),
        (4096, 4096), 227, "batch", "he"),
    # The same shape for 32-64 px inputs (tests, the offline demo): two towers, LRN, 3x3/2 pools.
    "small": Variant(
        "small", 2,
        (
            Conv("conv1", 16, 5, 1, 2, reads_both=True, lrn=True, pool=True),
            Conv("conv2", 32, 5, 1, 2, lrn=True, pool=True, bias=1.0),
            Conv("conv3", 48, 3, 1, 1, reads_both=True),
            Conv("conv4", 48, 3, 1, 1, bias=1.0),
            Conv("conv5", 32, 3, 1, 1, pool=True, bias=1.0),
        ),
        (128, 128), 32, "lrn", "he"),
    # The paper's Figure 1 network (ReLU vs tanh on CIFAR-10): "a four-layer convolutional
    # network", three convolutions and a classifier as in cuda-convnet's CIFAR-10 layouts. No
    # towers, no LRN, no dropout: the figure compares activations with no regularisation.
    "cnn4": Variant(
        "cnn4", 1,
        (
            Conv("conv1", 32, 5, 1, 2, reads_both=True, pool=True),
            Conv("conv2", 32, 5, 1, 2, pool=True),
            Conv("conv3", 64, 5, 1, 2, pool=True),
        ),
        (), 32, "none", "pytorch", fc_bias=0.0, dropout_on=()),
}

# --- what a config chooses -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Options:
  """What a config chooses on top of a variant (the paper's ablations are these fields)."""
  num_classes: int
  input_size: int
  norm: str
  pool: str = "overlap"
  activation: str = "relu"
  dropout: float = 0.5
  width: float = 1.0
  init: str = "paper"
  dtype: str = "float32"
  tower_impl: str = "unrolled"  # model.TOWER_IMPLS: how towers are mapped when no strategy says
  pool_impl: str = "auto"  # backend.ops.POOL_IMPLS
  conv1_impl: str = "auto"  # backend.ops.CONV1_IMPLS
  conv_impl: str = "auto"  # backend.ops.CONV_IMPLS
  lrn_impl: str = "auto"  # backend.ops.LRN_IMPLS
  lrn: tuple[float, int, float, float] = (2.0, 5, 1e-4, 0.75)  # k, n, alpha, beta


def options_from_config(model_cfg, input_size: int) -> tuple[Variant, Options]:
  """The variant and options a config's `model` section and `data.crop_size` ask for."""
  if model_cfg.name not in VARIANTS:
    raise ValueError(f"config.model.name={model_cfg.name!r} is not a model; choose one of "
                     f"{', '.join(VARIANTS)}")
  variant = VARIANTS[model_cfg.name]
  norm = variant.norm if model_cfg.norm == "default" else model_cfg.norm
  init = variant.init if model_cfg.init == "default" else model_cfg.init
  opts = Options(
      num_classes=model_cfg.num_classes, input_size=input_size, norm=norm, pool=model_cfg.pool,
      activation=model_cfg.activation, dropout=model_cfg.dropout, width=model_cfg.width,
      init=init, dtype=model_cfg.dtype, tower_impl=model_cfg.tower_impl,
      pool_impl=model_cfg.pool_impl, conv1_impl=model_cfg.conv1_impl,
      conv_impl=model_cfg.conv_impl, lrn_impl=model_cfg.lrn_impl,
      lrn=(model_cfg.lrn_k, model_cfg.lrn_n, model_cfg.lrn_alpha, model_cfg.lrn_beta))
  return variant, opts
