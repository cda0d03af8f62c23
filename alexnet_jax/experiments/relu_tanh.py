"""The paper's Figure 1: a four-layer CNN trained with ReLU and with tanh, same seeds and budget.

The paper: on CIFAR-10 the ReLU network reached 25% training error six times faster than the
same network with tanh; no regularisation of any kind, each network's learning rate chosen for
speed. Here both activations train the `cnn4` model (three convolutions and a classifier) with
the same seeds, data order and number of epochs, with no weight decay, dropout, lighting noise,
random crops or mirrors. Like the paper, each activation may get its own learning rate: given
several candidate rates, each activation trains the first seed with every candidate and keeps
the one reaching the target in the fewest epochs (if none does, the lowest final training error);
the other seeds then train with the rate kept.

Training error: the loop's running top-1 error over the last `steps_per_epoch / points_per_epoch`
steps (in training mode; the network has no dropout), plotted against epochs at the end of each
window. Epochs to target: the first crossing of the target error, linearly interpolated between
two logged points (the first point's epoch if already below). Speed-up: tanh's epochs to target
over ReLU's, per seed; reported as mean, sample std, min and max over the seeds. A seed where
tanh never reached the target within the budget gives only a lower bound (budget / ReLU's
epochs) and is reported apart from the mean.
"""

from __future__ import annotations

import copy
import json
import math
import os

import numpy as np

from alexnet_jax.experiments import plotting, runs

ACTIVATIONS = ("relu", "tanh")
PAPER = {"dataset": "CIFAR-10", "target": 0.25, "speedup": 6.0}
# Default target training error per dataset: the paper's 25% on CIFAR-10; on the offline digits
# both networks pass 25% within 1.5 epochs, too early to time well: the figure uses 5%.
DEFAULT_TARGETS = {"cifar10": 0.25, "digits": 0.05}


def default_target(dataset: str) -> float:
  return DEFAULT_TARGETS.get(dataset, PAPER["target"])


def apply_figure1_settings(cfg) -> None:
  """The comparison's fixed choices, applied before the user's --config.* overrides."""
  cfg.model.name = "cnn4"
  cfg.model.norm = "default"
  cfg.model.init = "default"
  cfg.model.dropout = 0.0
  cfg.model.width = 1.0
  cfg.optim.weight_decay = 0.0
  cfg.optim.schedule = "constant"
  cfg.optim.warmup_epochs = 0.0
  cfg.data.pca_lighting = 0.0
  cfg.data.random_crop = False
  cfg.data.flip = False


def run_config(cfg, activation: str, seed: int, *, epochs: float, learning_rate: float,
               steps_per_epoch: int, points_per_epoch: int):
  run = copy.deepcopy(cfg)
  run.model.activation = activation
  run.seed = seed
  run.optim.learning_rate = learning_rate
  run.num_epochs = float(epochs)
  run.eval_every_epochs = float(epochs)  # one evaluation, at the end
  run.log_every_steps = max(1, round(steps_per_epoch / points_per_epoch))
  run.checkpoint_every_steps = 1 << 30  # only the final checkpoint
  return run


def error_curve(workdir: str, steps_per_epoch: int) -> tuple[np.ndarray, np.ndarray]:
  """(epochs, training top-1 error) at each logged point of a run."""
  records = runs.read_split(workdir, "train")
  epochs = np.array([r["step"] / steps_per_epoch for r in records], np.float64)
  return epochs, np.array([float(r["top1_err"]) for r in records], np.float64)


def epochs_to_target(epochs: np.ndarray, errors: np.ndarray, target: float) -> float | None:
  """First crossing of `target`, interpolated between logged points; None if never reached."""
  below = np.nonzero(errors <= target)[0]
  if len(below) == 0:
    return None
  i = int(below[0])
  if i == 0:
    return float(epochs[0])
  x0, x1, y0, y1 = epochs[i - 1], epochs[i], errors[i - 1], errors[i]
  return float(x0 + (x1 - x0) * (y0 - target) / (y0 - y1))


def speedups(to_target: dict[str, dict[int, float | None]], budget: float) -> dict:
  """Per-seed tanh/ReLU ratios of epochs to target and their summary."""
  per_seed, bounds = {}, {}
  for seed, relu in to_target["relu"].items():
    tanh = to_target["tanh"][seed]
    if relu is None:
      per_seed[seed] = None  # ReLU never got there: no factor
    elif tanh is None:
      bounds[seed] = budget / relu  # tanh needs more than the whole budget
    else:
      per_seed[seed] = tanh / relu
  values = [v for v in per_seed.values() if v is not None]
  mean, std = runs.mean_std(values)
  return {"per_seed": per_seed, "lower_bounds": bounds, "mean": mean, "std": std,
          "min": min(values) if values else math.nan, "max": max(values) if values else math.nan,
          "seeds_with_factor": len(values)}


def choose_rate(epochs_by_rate: dict[float, float | None],
                final_error_by_rate: dict[float, float]) -> float:
  """The rate reaching the target in the fewest epochs; if none does, the lowest final training
  error. Ties go to the smaller rate."""
  reached = {r: e for r, e in epochs_by_rate.items() if e is not None}
  if reached:
    return min(reached, key=lambda r: (reached[r], r))
  return min(final_error_by_rate, key=lambda r: (final_error_by_rate[r], r))


def run(cfg, root: str, *, seeds: list[int], epochs: float, target: float | None = None,
        rates: list[float] | None = None, points_per_epoch: int = 4) -> tuple[str, dict]:
  """Train every (activation, rate, seed) needed under `root/<activation>/lr<rate>/seed<n>`,
  draw `root/figure1.png`, write the numbers to `root/figure1.json`; returns (png, results)."""
  import jax

  from alexnet_jax import data

  if jax.process_count() > 1:
    # The curves come from metrics.jsonl, which only process 0 writes.
    raise runs.ExperimentError("relu-tanh runs in one process (a small network); start it "
                               "without jax.distributed")
  if not seeds:
    raise runs.ExperimentError("--seeds: give at least one seed, e.g. --seeds 0,1,2")
  if epochs <= 0 or points_per_epoch < 1:
    raise runs.ExperimentError(f"--epochs {epochs} must be > 0 and --points-per-epoch "
                               f"{points_per_epoch} >= 1")
  rates = list(rates) if rates else [cfg.optim.learning_rate]
  if any(r <= 0 for r in rates):
    raise runs.ExperimentError(f"--lrs {','.join(map(str, rates))}: rates must be > 0")
  target = default_target(cfg.data.name) if target is None else target
  if not 0 < target < 1:
    raise runs.ExperimentError(f"--target {target}: a training error between 0 and 1")
  steps_per_epoch = data.steps_per_epoch(cfg, data.dataset_info(cfg))

  def train(activation, rate, seed):
    workdir = os.path.join(root, activation, f"lr{rate:g}", f"seed{seed}")
    result = runs.train_run(
        run_config(cfg, activation, seed, epochs=epochs, learning_rate=rate,
                   steps_per_epoch=steps_per_epoch, points_per_epoch=points_per_epoch),
        workdir)
    x, y = error_curve(workdir, steps_per_epoch)
    # Too large a rate blows the loss up: its curve stops there, and as a candidate it ranks
    # below every rate that trained to the end.
    final = math.inf if result["diverged"] else y[-1]
    return x, y, epochs_to_target(x, y, target), result["top1_err"], final, result["diverged"]

  chosen, search = {}, {}
  curves, to_target, held_out = {}, {}, {}
  for activation in ACTIVATIONS:
    first = {rate: train(activation, rate, seeds[0]) for rate in rates}
    rate = choose_rate({r: v[2] for r, v in first.items()}, {r: v[4] for r, v in first.items()})
    chosen[activation] = rate
    search[activation] = {r: {"epochs_to_target": v[2], "final_train_top1_err": v[4],
                              "diverged": v[5]}
                          for r, v in first.items()}
    curves[activation], to_target[activation], held_out[activation] = {}, {}, {}
    for seed in seeds:
      x, y, reach, err, _, _ = first[rate] if seed == seeds[0] else train(activation, rate, seed)
      curves[activation][seed] = (x, y)
      to_target[activation][seed] = reach
      held_out[activation][seed] = err

  summary = speedups(to_target, epochs)
  results = {
      "dataset": cfg.data.name, "model": cfg.model.name, "target_train_error": target,
      "epochs": epochs, "steps_per_epoch": steps_per_epoch, "batch_size": cfg.batch_size,
      "learning_rates": chosen, "rate_search": search, "seeds": list(seeds), "paper": PAPER,
      "epochs_to_target": to_target, "speedup": summary,
      "held_out_top1_err": held_out,
      "curves": {a: {s: {"epochs": c[0].tolist(), "train_top1_err": c[1].tolist()}
                     for s, c in per.items()} for a, per in curves.items()},
  }
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, "figure1.json"), "w") as f:
    json.dump(runs.jsonable(results), f, indent=1)
  return draw(results, os.path.join(root, "figure1.png")), results


def describe(results: dict) -> str:
  """One paragraph: the measured speed-up beside the paper's."""
  s, target = results["speedup"], results["target_train_error"]
  lines = [f"ReLU vs tanh ({results['model']} on {results['dataset']}, {results['epochs']:g} "
           f"epochs, seeds {results['seeds']}): epochs to {100 * target:g}% training error"]
  for a in ACTIVATIONS:
    values = ", ".join("never" if v is None else f"{v:.2f}"
                       for v in results["epochs_to_target"][a].values())
    lines.append(f"  {a} (learning rate {results['learning_rates'][a]:g}): {values}")
  if s["seeds_with_factor"]:
    lines.append(f"  speed-up (tanh / ReLU epochs): {runs.format_mean_std(s['mean'], s['std'])} "
                 f"(min {s['min']:.2f}, max {s['max']:.2f}, {s['seeds_with_factor']} seeds)")
  for seed, bound in s["lower_bounds"].items():
    lines.append(f"  seed {seed}: tanh did not reach the target; speed-up > {bound:.2f}")
  lines.append(f"  the paper: {PAPER['speedup']:g}x to {100 * PAPER['target']:g}% on "
               f"{PAPER['dataset']}")
  return "\n".join(lines)


def draw(results: dict, path: str) -> str:
  fig = plotting.new_figure(6.0, 4.0)
  ax = fig.subplots()
  styles = {"relu": dict(color="black", linestyle="-"), "tanh": dict(color="tab:red",
                                                                     linestyle="--")}
  for activation, per_seed in results["curves"].items():
    ys = [np.array(c["train_top1_err"]) for c in per_seed.values()]
    xs = [np.array(c["epochs"]) for c in per_seed.values()]
    for x, y in zip(xs, ys):
      ax.plot(x, 100 * y, alpha=0.3, linewidth=0.8, **styles[activation])
    n = min(len(y) for y in ys)
    ax.plot(xs[0][:n], 100 * np.mean([y[:n] for y in ys], axis=0), linewidth=2,
            label=f"{activation} (mean of {len(ys)} seeds; thin: each seed)",
            **styles[activation])
  target = results["target_train_error"]
  ax.axhline(100 * target, color="grey", linestyle=":", linewidth=1,
             label=f"target {100 * target:g}%")
  s = results["speedup"]
  factor = (f"tanh/ReLU epochs to target: {runs.format_mean_std(s['mean'], s['std'])}x"
            if s["seeds_with_factor"] else "ReLU or tanh never reached the target")
  ax.set(xlabel="epochs", ylabel="training error (%)", ylim=(0, None), xlim=(0, None),
         title=f"{results['model']} on {results['dataset']}: {factor}\n"
               f"(the paper: {PAPER['speedup']:g}x to {100 * PAPER['target']:g}% on "
               f"{PAPER['dataset']})")
  ax.title.set_fontsize(9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return plotting.save(fig, path)
