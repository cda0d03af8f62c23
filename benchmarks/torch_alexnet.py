"""The PyTorch peer: torchvision's AlexNet layout and training step, built by hand with torch.nn.

Same layer names and shapes as torchvision.models.alexnet (features.{0,3,6,8,10},
classifier.{1,4,6}; 61,100,840 parameters), so no torchvision is needed (none is built for CPU
here). The step is torchvision's recipe, the one `configs/owt.py` runs: cross-entropy, SGD with
momentum 0.9 and weight decay 1e-4 coupled into the gradient, dropout 0.5 before fc6 and fc7.

Variants: eager or `torch.compile`; NCHW or channels_last; float32, or bfloat16 autocast with
float32 master weights (as `--dtype bfloat16` does in JAX).

    python benchmarks/torch_alexnet.py --batch 32 --steps 20 [--compile] [--channels-last]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics
import time

import torch
from torch import nn


def alexnet(num_classes: int = 1000, dropout: float = 0.5) -> nn.Module:
  """torchvision.models.alexnet's architecture (torchvision/models/alexnet.py)."""

  class AlexNet(nn.Module):
    def __init__(self):
      super().__init__()
      self.features = nn.Sequential(
          nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
          nn.MaxPool2d(kernel_size=3, stride=2),
          nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True),
          nn.MaxPool2d(kernel_size=3, stride=2),
          nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
          nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
          nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
          nn.MaxPool2d(kernel_size=3, stride=2),
      )
      self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
      self.classifier = nn.Sequential(
          nn.Dropout(p=dropout), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
          nn.Dropout(p=dropout), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
          nn.Linear(4096, num_classes),
      )

    def forward(self, x):
      x = self.avgpool(self.features(x))
      return self.classifier(torch.flatten(x, 1))

  return AlexNet()


@dataclasses.dataclass(frozen=True)
class Variant:
  compile: bool = False
  channels_last: bool = False
  dtype: str = "float32"  # float32 | bfloat16 (autocast; weights stay float32)

  @property
  def label(self) -> str:
    parts = ["torch", "compile" if self.compile else "eager"]
    if self.channels_last:
      parts.append("channels_last")
    if self.dtype != "float32":
      parts.append(self.dtype)
    return " ".join(parts)


class TorchBench:
  """One model, optimizer and synthetic batch; `run(n)` times n training steps."""

  def __init__(self, batch: int, variant: Variant, *, image_size: int = 224,
               num_classes: int = 1000, seed: int = 0):
    torch.manual_seed(seed)
    self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    self.variant = variant
    model = alexnet(num_classes).to(self.device)
    self.inputs = torch.randn(batch, 3, image_size, image_size, device=self.device)
    if variant.channels_last:
      model = model.to(memory_format=torch.channels_last)
      self.inputs = self.inputs.contiguous(memory_format=torch.channels_last)
    self.labels = torch.randint(0, num_classes, (batch,), device=self.device)
    self.model = model
    self.forward = torch.compile(model) if variant.compile else model
    self.optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    self.autocast_dtype = torch.bfloat16 if variant.dtype == "bfloat16" else None
    start = time.perf_counter()
    self.run(2)  # torch.compile compiles on the first call (and again for the backward)
    self.warmup_seconds = time.perf_counter() - start

  def step(self) -> None:
    self.optimizer.zero_grad(set_to_none=True)
    autocast = (torch.autocast(self.device.type, dtype=self.autocast_dtype)
                if self.autocast_dtype else contextlib.nullcontext())
    with autocast:
      loss = nn.functional.cross_entropy(self.forward(self.inputs), self.labels)
    loss.backward()
    self.optimizer.step()

  def run(self, count: int) -> list[float]:
    times = []
    for _ in range(count):
      start = time.perf_counter()
      self.step()
      if self.device.type == "cuda":
        torch.cuda.synchronize()
      times.append(time.perf_counter() - start)
    return times


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--compile", action="store_true")
  p.add_argument("--channels-last", action="store_true")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  args = p.parse_args()
  variant = Variant(args.compile, args.channels_last, args.dtype)
  bench = TorchBench(args.batch, variant)
  times = bench.run(args.steps)
  median = statistics.median(times)
  print(f"{variant.label}: batch {args.batch}, warm-up {bench.warmup_seconds:.1f} s, step median "
        f"{1000 * median:.1f} ms (min {1000 * min(times):.1f}, max {1000 * max(times):.1f}), "
        f"{args.batch / median:,.1f} images/s on {bench.device} "
        f"({torch.get_num_threads()} threads), torch {torch.__version__}")


if __name__ == "__main__":
  main()
