"""LRN's formulations (config.model.lrn_impl) timed alone on the paper's LRN shapes.

    python benchmarks/lrn.py --batch 32 --repeats 10 [--dtype bfloat16]

The paper normalises conv1's output (55x55, 48 channels per tower) and conv2's (27x27, 128 per
tower), two towers each; here each is one array `(towers, batch, H, W, C)`, as the towers' vmap
sees it. Each formulation is jit-compiled twice: the forward pass alone, and forward + backward
(the vjp with a fixed cotangent). All are called in turns, --repeats rounds after one warm-up,
so load from other programs on a shared machine falls on each alike. Prints the median wall
time in ms and each one's time over reduce_window's (the formulation before
config.model.lrn_impl existed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# (name, H = W, channels per tower): the paper's two LRN layers at 227 px.
PAPER_LRNS = (("conv1", 55, 48), ("conv2", 27, 128))
TOWERS = 2


def interleaved_ms(fns: dict, repeats: int) -> dict[str, float]:
  """Median wall time in ms of each of `fns` (no-argument callables), called in turns after one
  warm-up call each, so that load from other programs falls on all of them alike."""
  times = {name: [] for name in fns}
  for fn in fns.values():
    fn()  # warm-up (and compile)
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  args = parser.parse_args(argv)
  if args.batch < 1 or args.repeats < 1:
    parser.error("--batch and --repeats must be >= 1")

  from alexnet_jax import backend
  backend.start_up()  # before JAX starts, as launch.py does

  import jax
  import jax.numpy as jnp

  from alexnet_jax import model
  from alexnet_jax.backend import ops

  impls = [i for i in ops.LRN_IMPLS if i != "auto"]
  print(f"# {jax.default_backend()} ({jax.devices()[0].device_kind}), batch {args.batch}, "
        f"{args.dtype}, median of {args.repeats}; auto = {ops.resolve_lrn_impl('auto')}")
  dtype = getattr(jnp, args.dtype)
  for name, side, channels in PAPER_LRNS:
    shape = (TOWERS, args.batch, side, side, channels)
    # ReLU outputs of the paper's scale: the normalisation matters (alpha * sum ~ k).
    x = jax.nn.relu(30 * jax.random.normal(jax.random.key(0), shape)).astype(dtype)
    g = jax.random.normal(jax.random.key(1), shape).astype(dtype)
    calls = {}
    for impl in impls:
      lrn = lambda x, impl=impl: model.local_response_norm(x, impl=impl)
      forward = jax.jit(lrn)
      both = jax.jit(lambda x, g, lrn=lrn: jax.vjp(lrn, x)[1](g)[0])
      calls[impl, "forward"] = lambda f=forward: jax.block_until_ready(f(x))
      calls[impl, "both"] = lambda f=both: jax.block_until_ready(f(x, g))
    ms = interleaved_ms(calls, args.repeats)
    times = {impl: (ms[impl, "forward"], ms[impl, "both"]) for impl in impls}
    base_fwd, base_both = times["reduce_window"]
    print(f"{name} LRN {'x'.join(map(str, shape))}:")
    for impl, (fwd, both) in times.items():
      print(f"  {impl:14s} forward {fwd:8.2f} ms ({fwd / base_fwd:4.2f}x)   "
            f"forward+backward {both:8.2f} ms ({both / base_both:4.2f}x)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
