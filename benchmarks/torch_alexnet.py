"""The PyTorch peer: torchvision's AlexNet and its training step.

torchvision.models.alexnet where torchvision is installed, else the same network built here with
torch.nn (same layer names and shapes: features.{0,3,6,8,10}, classifier.{1,4,6}; 61,100,840
parameters; no torchvision is built for this CPU). The step is torchvision's recipe, the one
`configs/owt.py` runs: cross-entropy, SGD with momentum 0.9 and weight decay 1e-4 coupled into
the gradient, dropout 0.5 before fc6 and fc7.

Variants: eager or `torch.compile`; NCHW or channels_last; float32, or bfloat16 autocast with
float32 master weights (as `--dtype bfloat16` does in JAX).

On a GPU the peer gets its best settings, so that a ratio against ours means something
(`configure_backends`): cuDNN picks its fastest convolution algorithms (`cudnn.benchmark`);
float32 matrix products and convolutions run on TF32 tensor cores, as XLA's default precision
does for ours; SGD runs as one fused kernel. On a CPU none of these apply and none is set.

    python benchmarks/torch_alexnet.py --batch 32 --steps 20 [--compile] [--channels-last]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import json
import statistics
import time

import torch
from torch import nn


def alexnet(num_classes: int = 1000, dropout: float = 0.5, width: float = 1.0) -> nn.Module:
  """torchvision.models.alexnet's architecture (torchvision/models/alexnet.py), built here.

  `width` multiplies every layer's channels as config.model.width does ours (tests use it to
  keep both sides small); 1 is torchvision's network.
  """
  c1, c2, c3, c4, c5, f = (max(1, round(n * width)) for n in (64, 192, 384, 256, 256, 4096))

  class AlexNet(nn.Module):
    def __init__(self):
      super().__init__()
      self.features = nn.Sequential(
          nn.Conv2d(3, c1, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
          nn.MaxPool2d(kernel_size=3, stride=2),
          nn.Conv2d(c1, c2, kernel_size=5, padding=2), nn.ReLU(inplace=True),
          nn.MaxPool2d(kernel_size=3, stride=2),
          nn.Conv2d(c2, c3, kernel_size=3, padding=1), nn.ReLU(inplace=True),
          nn.Conv2d(c3, c4, kernel_size=3, padding=1), nn.ReLU(inplace=True),
          nn.Conv2d(c4, c5, kernel_size=3, padding=1), nn.ReLU(inplace=True),
          nn.MaxPool2d(kernel_size=3, stride=2),
      )
      self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
      self.classifier = nn.Sequential(
          nn.Dropout(p=dropout), nn.Linear(c5 * 6 * 6, f), nn.ReLU(inplace=True),
          nn.Dropout(p=dropout), nn.Linear(f, f), nn.ReLU(inplace=True),
          nn.Linear(f, num_classes),
      )

    def forward(self, x):
      x = self.avgpool(self.features(x))
      return self.classifier(torch.flatten(x, 1))

  return AlexNet()


def torchvision_alexnet(num_classes: int = 1000, width: float = 1.0) -> tuple[nn.Module, str]:
  """torchvision's own AlexNet where torchvision is installed (and width is 1), else `alexnet()`;
  and which of the two."""
  if width != 1:
    return (alexnet(num_classes, width=width),
            f"torch.nn copy of torchvision's AlexNet, width {width}")
  try:
    import torchvision
  except ImportError:
    return alexnet(num_classes), "torch.nn copy of torchvision's AlexNet (no torchvision here)"
  return (torchvision.models.alexnet(num_classes=num_classes),
          f"torchvision {torchvision.__version__} models.alexnet")


def configure_backends(device: torch.device) -> dict[str, object]:
  """The settings that make PyTorch fastest on `device`; returns what was set (nothing on CPUs).

  TF32: XLA's default precision runs float32 convolutions and matrix products on TF32 tensor
  cores on GPUs that have them, so the peer gets the same.
  """
  if device.type != "cuda":
    return {}
  torch.backends.cudnn.benchmark = True  # time cuDNN's algorithms once per shape, keep the best
  torch.backends.cuda.matmul.allow_tf32 = True  # float32 matmuls on TF32 (off by default)
  torch.backends.cudnn.allow_tf32 = True  # float32 convolutions on TF32 (cuDNN's default)
  return {"cudnn.benchmark": torch.backends.cudnn.benchmark,
          "matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
          "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32}


def sgd(parameters, device: torch.device) -> torch.optim.Optimizer:
  """torchvision's SGD; on GPUs the fused kernel (one launch for every parameter) where torch
  has it, as XLA fuses ours."""
  fused = device.type == "cuda" and "fused" in inspect.signature(torch.optim.SGD).parameters
  return torch.optim.SGD(parameters, lr=0.01, momentum=0.9, weight_decay=1e-4,
                         **({"fused": True} if fused else {}))


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
               num_classes: int = 1000, width: float = 1.0, seed: int = 0):
    torch.manual_seed(seed)
    self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    self.settings = configure_backends(self.device)
    self.variant = variant
    model, self.model_source = torchvision_alexnet(num_classes, width)
    model = model.to(self.device)
    self.inputs = torch.randn(batch, 3, image_size, image_size, device=self.device)
    if variant.channels_last:
      model = model.to(memory_format=torch.channels_last)
      self.inputs = self.inputs.contiguous(memory_format=torch.channels_last)
    self.labels = torch.randint(0, num_classes, (batch,), device=self.device)
    self.model = model
    self.forward = torch.compile(model) if variant.compile else model
    self.optimizer = sgd(model.parameters(), self.device)
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


def describe(bench: TorchBench) -> dict:
  """What ran: the model, device, versions and the backend settings (for reports)."""
  return {"model": bench.model_source, "device": str(bench.device),
          "device_name": (torch.cuda.get_device_name(bench.device)
                          if bench.device.type == "cuda" else "cpu"),
          "torch": torch.__version__, "threads": torch.get_num_threads(),
          "settings": bench.settings, "fused_sgd": bool(bench.optimizer.defaults.get("fused"))}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--compile", action="store_true")
  p.add_argument("--channels-last", action="store_true")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  p.add_argument("--image-size", type=int, default=224)
  p.add_argument("--num-classes", type=int, default=1000)
  p.add_argument("--width", type=float, default=1.0, help="channel multiplier (1: torchvision's)")
  p.add_argument("--json", default="", help="also write the figures to this JSON file")
  args = p.parse_args()
  variant = Variant(args.compile, args.channels_last, args.dtype)
  bench = TorchBench(args.batch, variant, image_size=args.image_size,
                     num_classes=args.num_classes, width=args.width)
  times = bench.run(args.steps)
  median = statistics.median(times)
  print(f"{variant.label}: batch {args.batch}, warm-up {bench.warmup_seconds:.1f} s, step median "
        f"{1000 * median:.1f} ms (min {1000 * min(times):.1f}, max {1000 * max(times):.1f}), "
        f"{args.batch / median:,.1f} images/s on {bench.device} "
        f"({torch.get_num_threads()} threads), torch {torch.__version__}; {bench.model_source}; "
        f"settings {bench.settings or 'none (CPU)'}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"label": variant.label, "batch": args.batch, "step_times": times,
                 "median_step_s": median, "images_per_s": args.batch / median,
                 "warmup_seconds": bench.warmup_seconds, **describe(bench)}, f, indent=1)


if __name__ == "__main__":
  main()
