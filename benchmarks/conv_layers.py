"""Each convolution of the `owt` layout alone: ours (XLA's and oneDNN's) against PyTorch's.

    python benchmarks/conv_layers.py --batch 128 --repeats 5

Where the whole train step is slower than PyTorch's, this says which layer and which pass
(forward, input gradient, weight gradient) the time goes to. Ours are timed pass by pass as
separate jit-compiled functions over NHWC arrays, with the XLA flags `launch.py` sets at
start-up, twice: XLA's own convolutions (config.model.conv_impl=xla) and the oneDNN custom call
(conv_impl=onednn, alexnet_jax/backend/cpu/onednn.py: forward and input gradient in oneDNN, the
weight gradient still XLA's). PyTorch's: forward alone and forward + backward (both gradients at once,
as autograd runs them) over channels_last tensors. Medians of --repeats calls after one warm-up,
in ms of wall time. conv1 needs no input gradient (its input is the image).
"""

from __future__ import annotations

import argparse
import functools
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


def time_ours(conv, batch, side, cin, cout, k, stride, pad, repeats,
              first_layer) -> dict[str, float]:
  import jax
  import jax.numpy as jnp

  conv = functools.partial(conv, stride=stride, padding=pad)
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

  from alexnet_jax import backend
  flags = backend.start_up()  # before JAX starts, as launch.py does
  print(f"# batch {args.batch}, median of {args.repeats}; XLA flags added: {flags or 'none'}")
  if not args.no_torch:
    import torch
    torch.set_num_threads(args.threads)
  from alexnet_jax.backend.cpu import onednn
  ours = {"XLA": onednn.xla_conv}
  if onednn.available():
    ours["oneDNN"] = onednn.conv2d
  else:
    print("# oneDNN: this jaxlib's XLA:CPU cannot run its oneDNN convolution; XLA's only")
  totals = dict.fromkeys([*ours, "PyTorch"], 0.0)
  fmt = lambda times: ", ".join(f"{k} {v:.0f}" for k, v in times.items()) + " ms"
  for name, *shape in OWT_CONVS:
    first = name == "conv1"
    layer, line = {}, []
    for label, conv in ours.items():
      times = time_ours(conv, args.batch, *shape, args.repeats, first)
      layer[label] = times["total"]
      line.append(f"{label} " + fmt(times))
    if not args.no_torch:
      theirs = time_torch(args.batch, *shape, args.repeats, first)
      layer["PyTorch"] = theirs["total"]
      line.append("PyTorch channels_last " + fmt(theirs))
      line.append("time / PyTorch's: " + ", ".join(
          f"{label} {layer[label] / theirs['total']:.2f}" for label in ours))
    for label, total in layer.items():
      totals[label] += total
    print(f"{name}: " + " | ".join(line), flush=True)
  if args.no_torch:
    del totals["PyTorch"]
  summary = "all five: " + ", ".join(f"{label} {t:.0f} ms" for label, t in totals.items())
  if not args.no_torch:
    summary += " (" + ", ".join(f"{label} {totals[label] / totals['PyTorch']:.2f}x"
                                for label in ours) + " PyTorch's time)"
  print(summary)
  return 0


if __name__ == "__main__":
  sys.exit(main())
