"""FLOPs of the network counted from its layer table (no tracing, no compiling).

Only the convolutions and dense layers count: their multiply-adds are >99.5% of the arithmetic;
ReLU, pooling, LRN, dropout and the loss are left out, as is usual for model FLOP utilisation
(MFU). One multiply-add is two FLOPs. A training step costs, for every layer, its forward pass,
the gradient with respect to its weights and the gradient with respect to its input (the same
number of multiply-adds each), except the first layer's input gradient: conv1's input is the
image, so nobody computes it (0.07 of 0.71 G multiply-adds for `owt`; counting it, as the
"3 x forward" shorthand does, would read MFU about 3% high).

torchvision's AlexNet (`owt` here) at 224 px: 0.714 G multiply-adds forward, the figure
torchvision publishes (0.71 GFLOPS, counting multiply-adds); 4.14 GFLOP per training image.
"""

from __future__ import annotations

import dataclasses

from alexnet_jax import model as model_lib


@dataclasses.dataclass(frozen=True)
class Layer:
  name: str
  kind: str  # conv | dense
  towers: int  # copies of the layer (the paper's two towers), each with `kernel`
  kernel: tuple[int, ...]  # one tower's kernel: (kh, kw, cin, cout) or (in, out)
  out_hw: tuple[int, int]  # output height and width (1, 1 for dense layers)

  @property
  def macs(self) -> int:
    """Multiply-adds of one image through this layer (all towers)."""
    per_output = 1
    for d in self.kernel[:-1]:
      per_output *= d
    return self.towers * self.out_hw[0] * self.out_hw[1] * per_output * self.kernel[-1]


def layer_table(model_cfg, input_size: int) -> list[Layer]:
  """The conv and dense layers that `model_cfg` (a config's `model` section) builds for
  `input_size` px inputs, with their kernel shapes and output sizes, in order."""
  variant, opts = model_lib.options_from_config(model_cfg, input_size)
  model_lib.check_options(variant, opts)
  towers = variant.towers
  scale = lambda f: max(1, round(f * opts.width))
  window, stride = model_lib.POOLS[opts.pool]
  layers = []
  cin_total, size = 3, input_size
  for spec in variant.convs:
    features = scale(spec.features)
    cin = cin_total if spec.reads_both else cin_total // towers
    size = (size + 2 * spec.padding - spec.kernel) // spec.stride + 1
    layers.append(Layer(spec.name, "conv", towers, (spec.kernel, spec.kernel, cin, features),
                        (size, size)))
    if spec.pool:
      size = (size - window) // stride + 1
    cin_total = features * towers
  if variant.avgpool_to:
    size = variant.avgpool_to
  fan_in = size * size * cin_total
  names = [f"fc{6 + i}" for i in range(len(variant.fc) + 1)]
  for name, width in zip(names, variant.fc):
    layers.append(Layer(name, "dense", towers, (fan_in, scale(width)), (1, 1)))
    fan_in = scale(width) * towers
  layers.append(Layer(names[-1], "dense", 1, (fan_in, opts.num_classes), (1, 1)))
  return layers


def forward_macs(model_cfg, input_size: int) -> int:
  """Multiply-adds of one image's forward pass."""
  return sum(layer.macs for layer in layer_table(model_cfg, input_size))


def train_macs(layers: list[Layer]) -> int:
  """Multiply-adds of one image's training step through `layers` (a `layer_table`): forward,
  weight gradient and input gradient of each layer, but no input gradient for the first, whose
  input is the image."""
  return sum((2 if i == 0 else 3) * layer.macs for i, layer in enumerate(layers))


def train_flops_per_image(model_cfg, input_size: int) -> int:
  """FLOPs of one image's training step: `train_macs` x 2 FLOPs per multiply-add."""
  return 2 * train_macs(layer_table(model_cfg, input_size))


def format_table(layers: list[Layer]) -> str:
  """A printable table: name, kernel, output size, multiply-adds."""
  total = sum(layer.macs for layer in layers)
  rows = [f"{'layer':6s} {'towers':>6s} {'kernel (per tower)':>22s} {'output':>8s} "
          f"{'M mult-adds':>12s} {'share':>6s}"]
  for layer in layers:
    kernel = "x".join(str(d) for d in layer.kernel)
    out = f"{layer.out_hw[0]}x{layer.out_hw[1]}"
    rows.append(f"{layer.name:6s} {layer.towers:6d} {kernel:>22s} {out:>8s} "
                f"{layer.macs / 1e6:12.1f} {100 * layer.macs / total:5.1f}%")
  rows.append(f"{'total':6s} {'':6s} {'':>22s} {'':>8s} {total / 1e6:12.1f}")
  return "\n".join(rows)
