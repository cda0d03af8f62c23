"""The paper's ablations: LRN on/off and overlapping (3x3/2) vs non-overlapping (2x2/2) pooling.

Every condition trains the config's model (it must have LRN layers: paper, paper6, small) on
the same data with the same seeds and budget; only config.model.norm / config.model.pool
change. Each run's final held-out evaluation gives its top-1 and top-5 error; a condition's
figure is the mean and sample std over seeds. An effect is the paired difference (same seed)
"with the feature - without", in percentage points, set beside the paper's (negative = the
feature lowers the error). A run whose loss became NaN/Inf (runs.train_run: "diverged") is
counted in its condition's "diverged" column and left out of the means and of the paired effects.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os

from alexnet_jax.experiments import runs

# name -> (config.model.norm, config.model.pool)
CONDITIONS = {
    "paper": ("lrn", "overlap"),
    "no_lrn": ("none", "overlap"),
    "nonoverlap": ("lrn", "nonoverlap"),
    "no_lrn_nonoverlap": ("none", "nonoverlap"),
}
DEFAULT_CONDITIONS = ("paper", "no_lrn", "nonoverlap")
# (effect, condition with the feature, condition without, the paper's delta top-1, top-5 in %)
EFFECTS = (
    ("LRN", "paper", "no_lrn", -1.4, -1.2),
    ("overlapping pooling", "paper", "nonoverlap", -0.4, -0.3),
    ("LRN (non-overlapping pooling)", "nonoverlap", "no_lrn_nonoverlap", None, None),
    ("overlapping pooling (no LRN)", "no_lrn", "no_lrn_nonoverlap", None, None),
)


def check_model(cfg) -> None:
  from alexnet_jax import model as model_lib
  variant = model_lib.VARIANTS.get(cfg.model.name)
  if variant is None or not any(c.lrn for c in variant.convs):
    with_lrn = [n for n, v in model_lib.VARIANTS.items() if any(c.lrn for c in v.convs)]
    raise runs.ExperimentError(f"config.model.name={cfg.model.name!r} has no LRN layers to "
                               f"switch off; ablate one of {', '.join(with_lrn)}")


def _finished(per_seed: dict[int, dict[str, float]]) -> dict[int, dict[str, float]]:
  """The seeds whose run trained to the end (a diverged run has NaN errors)."""
  return {s: e for s, e in per_seed.items() if not math.isnan(e["top1_err"])}


def summarize(errors: dict[str, dict[int, dict[str, float]]]) -> dict:
  """errors[condition][seed] = {"top1_err", "top5_err"} (fractions; NaN for a diverged run)
  -> the tables (in %)."""
  table = []
  for name, per_seed in errors.items():
    finished = _finished(per_seed)
    row = {"condition": name, "norm": CONDITIONS[name][0], "pool": CONDITIONS[name][1],
           "seeds": len(finished), "diverged": len(per_seed) - len(finished)}
    for metric in ("top1_err", "top5_err"):
      row[metric + "_mean"], row[metric + "_std"] = runs.mean_std(
          [100 * e[metric] for e in finished.values()])
    table.append(row)
  effects = []
  for name, with_, without, paper1, paper5 in EFFECTS:
    if with_ not in errors or without not in errors:
      continue
    seeds = sorted(set(_finished(errors[with_])) & set(_finished(errors[without])))
    row = {"effect": name, "with": with_, "without": without, "seeds": len(seeds),
           "paper_top1_delta": paper1, "paper_top5_delta": paper5}
    for metric in ("top1_err", "top5_err"):
      row[metric + "_delta_mean"], row[metric + "_delta_std"] = runs.mean_std(
          [100 * (errors[with_][s][metric] - errors[without][s][metric]) for s in seeds])
    effects.append(row)
  return {"conditions": table, "effects": effects}


def markdown(summary: dict, header: str) -> str:
  f = runs.format_mean_std
  paper = lambda v: "—" if v is None else f"{v:+.1f}"
  lines = [header, "", "| condition | norm | pool | seeds | diverged | top-1 error (%) | "
           "top-5 error (%) |", "|---|---|---|---|---|---|---|"]
  for r in summary["conditions"]:
    lines.append(f"| {r['condition']} | {r['norm']} | {r['pool']} | {r['seeds']} | "
                 f"{r['diverged']} | "
                 f"{f(r['top1_err_mean'], r['top1_err_std'])} | "
                 f"{f(r['top5_err_mean'], r['top5_err_std'])} |")
  lines += ["", "| effect (with − without) | seeds | Δ top-1 (points) | Δ top-5 (points) | "
            "paper Δ top-1 | paper Δ top-5 |", "|---|---|---|---|---|---|"]
  for r in summary["effects"]:
    lines.append(f"| {r['effect']}: {r['with']} − {r['without']} | {r['seeds']} | "
                 f"{f(r['top1_err_delta_mean'], r['top1_err_delta_std'])} | "
                 f"{f(r['top5_err_delta_mean'], r['top5_err_delta_std'])} | "
                 f"{paper(r['paper_top1_delta'])} | {paper(r['paper_top5_delta'])} |")
  return "\n".join(lines) + "\n"


def _write_csv(path: str, rows: list[dict]) -> None:
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)


def run(cfg, root: str, *, seeds: list[int], conditions=DEFAULT_CONDITIONS) -> tuple[str, dict]:
  """Train every (condition, seed) under `root/<condition>/seed<n>`; write ablation.{md,csv,json}
  (and ablation_effects.csv) into `root`; returns (the Markdown, everything)."""
  import jax

  check_model(cfg)
  if not seeds:
    raise runs.ExperimentError("--seeds: give at least one seed, e.g. --seeds 0,1,2")
  unknown = [c for c in conditions if c not in CONDITIONS]
  if unknown or not conditions:
    raise runs.ExperimentError(f"--conditions {','.join(conditions)}: choose from "
                               f"{', '.join(CONDITIONS)}")
  errors: dict[str, dict[int, dict[str, float]]] = {}
  for name in conditions:
    errors[name] = {}
    for seed in seeds:
      run_cfg = copy.deepcopy(cfg)
      run_cfg.model.norm, run_cfg.model.pool = CONDITIONS[name]
      run_cfg.seed = seed
      result = runs.train_run(run_cfg, os.path.join(root, name, f"seed{seed}"))
      errors[name][seed] = {"top1_err": result["top1_err"], "top5_err": result["top5_err"],
                            "count": result["count"]}
  summary = summarize(errors)  # every process has the (global) evaluation results
  counts = [e["count"] for per_seed in errors.values() for e in per_seed.values()
            if not math.isnan(e["count"])]
  examples = f"{int(counts[0])} examples" if counts else "no run finished"
  header = (f"Ablations: {cfg.model.name} on {cfg.data.name} ({cfg.data.eval_split}, "
            f"{examples}, centre "
            f"crop), {cfg.num_epochs:g} epochs, seeds {', '.join(map(str, seeds))}; "
            "mean ± std over seeds")
  text = markdown(summary, header)
  everything = {"model": cfg.model.name, "dataset": cfg.data.name, "epochs": cfg.num_epochs,
                "seeds": list(seeds), "runs": errors, **summary}
  if jax.process_index() != 0:  # one writer
    return text, everything
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, "ablation.md"), "w") as f:
    f.write(text)
  _write_csv(os.path.join(root, "ablation.csv"), summary["conditions"])
  if summary["effects"]:
    _write_csv(os.path.join(root, "ablation_effects.csv"), summary["effects"])
  with open(os.path.join(root, "ablation.json"), "w") as f:
    json.dump(runs.jsonable(everything), f, indent=1)
  return text, everything
