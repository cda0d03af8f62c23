"""Each convolution of the `owt` layout alone: ours (XLA) against PyTorch's (oneDNN), same process.

    python benchmarks/conv_layers.py --batch 128 --repeats 5

Where the whole train step is slower than PyTorch's, this says which layer and which pass
(forward, input gradient, weight gradient) the time goes to. XLA's passes are timed one by one
as separate jit-compiled functions over NHWC arrays, with the XLA flags `launch.py` sets at
start-up; PyTorch's forward alone and forward + backward (both gradients at once, as autograd
runs them) over channels_last tensors. Medians of --repeats calls after one warm-up, in ms of
wall time. conv1 needs no input gradient (its input is the image).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# (name, input side, in channels, out channels, kernel, stride, padding): the owt layout at 224 px.
OWT_CONVS = (
    ("conv1", 224, 3, 64, 11, 4, 2),
    ("conv2", 27, 64, 192, 5, 1, 2),
    ("conv3", 13, 192, 384, 3, 1, 1),
    ("conv4", 13, 384, 256, 3, 1, 1),
    ("conv5", 13, 256, 256, 3, 1, 1),
)


def median_ms(fn, repeats: int) -> float:
  fn()  # compile / warm up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


def time_xla(batch, side, cin, cout, k, stride, pad, repeats, first_layer) -> dict[str, float]:
  import jax
  import jax.numpy as jnp

  def conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (stride, stride), [(pad, pad)] * 2,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

  x = jax.random.normal(jax.random.key(0), (batch, side, side, cin))
  w = 0.01 * jax.random.normal(jax.random.key(1), (k, k, cin, cout))
  g = jnp.ones(jax.eval_shape(conv, x, w).shape)
  forward = jax.jit(conv)
  input_grad = jax.jit(lambda x, w, g: jax.vjp(lambda x: conv(x, w), x)[1](g)[0])
  weight_grad = jax.jit(lambda x, w, g: jax.vjp(lambda w: conv(x, w), w)[1](g)[0])
  run = lambda f, *a: (lambda: jax.block_until_ready(f(*a)))
  times = {"forward": median_ms(run(forward, x, w), repeats),
           "input grad": 0.0 if first_layer else median_ms(run(input_grad, x, w, g), repeats),
           "weight grad": median_ms(run(weight_grad, x, w, g), repeats)}
  times["total"] = sum(times.values())
  return times


def time_torch(batch, side, cin, cout, k, stride, pad, repeats, first_layer) -> dict[str, float]:
  import torch

  layer = torch.nn.Conv2d(cin, cout, k, stride, pad).to(memory_format=torch.channels_last)
  x = torch.randn(batch, cin, side, side).to(memory_format=torch.channels_last)
  x.requires_grad_(not first_layer)
  g = torch.ones_like(layer(x))

  def forward():
    with torch.no_grad():
      layer(x)

  def forward_backward():
    layer(x).backward(g)

  fwd = median_ms(forward, repeats)
  both = median_ms(forward_backward, repeats)
  return {"forward": fwd, "backward": both - fwd, "total": both}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--threads", type=int, default=os.cpu_count(),
                      help="PyTorch's intra-op threads (XLA uses every core)")
  parser.add_argument("--no-torch", action="store_true", help="time ours only")
  args = parser.parse_args(argv)
  if args.batch < 1 or args.repeats < 1:
    parser.error("--batch and --repeats must be >= 1")

  from alexnet_jax import xla_flags
  flags = xla_flags.apply_defaults()  # before JAX starts, as launch.py does
  print(f"# batch {args.batch}, median of {args.repeats}; XLA flags added: {flags or 'none'}")
  if not args.no_torch:
    import torch
    torch.set_num_threads(args.threads)
  totals = {"ours": 0.0, "pytorch": 0.0}
  for name, *shape in OWT_CONVS:
    first = name == "conv1"
    ours = time_xla(args.batch, *shape, args.repeats, first)
    totals["ours"] += ours["total"]
    line = f"{name}: ours " + ", ".join(f"{k} {v:.0f}" for k, v in ours.items()) + " ms"
    if not args.no_torch:
      theirs = time_torch(args.batch, *shape, args.repeats, first)
      totals["pytorch"] += theirs["total"]
      line += " | PyTorch channels_last " + ", ".join(f"{k} {v:.0f}" for k, v in theirs.items())
      line += f" ms | ours / PyTorch time {ours['total'] / theirs['total']:.2f}"
    print(line, flush=True)
  summary = f"all five: ours {totals['ours']:.0f} ms"
  if not args.no_torch:
    summary += f", PyTorch {totals['pytorch']:.0f} ms ({totals['ours'] / totals['pytorch']:.2f}x the time)"
  print(summary)
  return 0


if __name__ == "__main__":
  sys.exit(main())
