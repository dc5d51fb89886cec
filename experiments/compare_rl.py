"""Multi-seed comparison of GRPO's token weights on the CPU: none vs ranktuner vs entropy_top, from one base.

python experiments/compare_rl.py --config=configs/grpo_synthetic.py --workdir=DIR \
    [--weights=none,ranktuner,entropy_top] [--seeds=0,1,2] [--eval_samples=4]

1. The base is config.init_from (configs/grpo_synthetic.py: the demo's base, `make demo` first).
2. DIR/<weight>/seed<k>: one GRPO run per token weight and seed (config.seed = k: the prompt order and every
   rollout's sampling keys); the eval during training is off (the final evaluation below replaces it).
3. Each run, and the base with each seed's sampling, is evaluated as experiments/compare_schemes.py does: n samples
   at T = 1.0 of all held-out synthetic problems (Pass@1 = mean accuracy over samples) and greedy exact match.
4. DIR/results.md and results.json: mean over seeds and 95% t-interval (`rankjax.report.mean_ci`).

Every stage resumes: a finished run or evaluation is skipped.
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import ml_collections  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from compare_schemes import evaluate_dir  # noqa: E402  (the same evaluation as the SFT comparison)
from rankjax import cli  # noqa: E402
from rankjax.report import mean_ci  # noqa: E402
from rankjax.rundir import atomic  # noqa: E402
from rankjax.rundir.progress import read_metrics  # noqa: E402
from rankjax.rl.loop import train_rl  # noqa: E402
from rankjax.train import config as run_config  # noqa: E402

METRICS = ("pass@1", "greedy_accuracy", "final_reward")  # and pass@<eval_samples>


def _eval_config(config, samples: int):
  """`config` with the `compare` fields compare_schemes.evaluate_dir reads."""
  out = ml_collections.ConfigDict(config.to_dict())
  out.compare = ml_collections.ConfigDict({"eval_samples": samples, "max_new_tokens": int(config.rl.max_new_tokens)})
  return out


def run(config, workdir: str, weights: list[str], seeds: list[int], samples: int) -> dict:
  t0 = time.time()
  eval_cfg = _eval_config(config, samples)
  rows = []
  for seed in seeds:
    rows.append({"weight": "base", "seed": seed, **evaluate_dir(eval_cfg, config.init_from, seed),
                 "final_reward": float("nan")})
  for weight in weights:
    for seed in seeds:
      run_dir = os.path.join(workdir, weight, f"seed{seed}")
      print(f"[compare_rl] {weight} seed {seed} in {run_dir}", flush=True)
      train_rl(run_config.with_overrides(config, {"rl.token_weight": weight, "seed": seed, "eval.every_steps": 0,
                                                  "progress": False}), run_dir)
      last = read_metrics(run_dir)[-5:]
      rows.append({"weight": weight, "seed": seed, **evaluate_dir(eval_cfg, run_dir, seed),
                   "final_reward": sum(r["reward/mean"] for r in last) / len(last)})
  metrics = (*METRICS, f"pass@{samples}")
  summary = {w: {m: mean_ci([r[m] for r in rows if r["weight"] == w]) for m in metrics}
             for w in ["base", *weights]}
  base = {r["seed"]: r for r in rows if r["weight"] == "base"}
  for w in weights:  # paired by seed: the run and the base sampled with the same evaluation keys
    mine = [r for r in rows if r["weight"] == w]
    summary[w]["pass@1_minus_base"] = mean_ci([r["pass@1"] - base[r["seed"]]["pass@1"] for r in mine])
    if w != "none" and "none" in weights:
      none = {r["seed"]: r for r in rows if r["weight"] == "none"}
      summary[w]["pass@1_minus_none"] = mean_ci([r["pass@1"] - none[r["seed"]]["pass@1"] for r in mine])
  lines = [f"# GRPO token weights ({len(seeds)} seeds: {seeds})", "",
           f"Base {config.init_from}; {config.total_steps} GRPO steps of {config.rl.prompts_per_step} prompts x "
           f"{config.rl.num_generations} completions (T = {config.rl.temperature}, advantage {config.rl.advantage}, "
           f"lr {config.optimizer.learning_rate}); Pass@1 from {samples} samples at T = 1 of the held-out problems; "
           f"mean ± 95% t-interval over seeds (the base: sampling only). Wall time of this invocation {time.time() - t0:.0f} s (finished runs and evaluations are reused).", "",
           "| token weight | Pass@1 (%) | Pass@1 − base, paired (points) | Pass@1 − none, paired (points) | "
           f"Pass@{samples} (%) | greedy (%) | training reward (%), last 5 steps |", "|---|---:|---:|---:|---:|---:|---:|"]
  for w, s in summary.items():
    cell = lambda m, scale=100: f"{scale * s[m][0]:.1f} ± {scale * s[m][1]:.1f}" if m in s else "-"  # noqa: E731
    lines.append(f"| {w} | {cell('pass@1')} | {cell('pass@1_minus_base')} | {cell('pass@1_minus_none')} | "
                 f"{cell(f'pass@{samples}')} | {cell('greedy_accuracy')} | "
                 f"{'-' if w == 'base' else cell('final_reward')} |")
  text = "\n".join(lines) + "\n"
  atomic.write_text(os.path.join(workdir, "results.md"), text)
  atomic.write_json(os.path.join(workdir, "results.json"), {"rows": rows, "summary": summary})
  print(text, flush=True)
  return summary


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  run(_CONFIG.value, _WORKDIR.value, [w for w in _WEIGHTS.value.split(",") if w],
      [int(s) for s in _SEEDS.value.split(",") if s], _SAMPLES.value)


if __name__ == "__main__":
  _CONFIG = config_flags.DEFINE_config_file("config", "configs/grpo_synthetic.py", lock_config=True)
  _WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the whole comparison (resumable).")
  _WEIGHTS = flags.DEFINE_string("weights", "none,ranktuner,entropy_top", "rl.token_weight values to compare.")
  _SEEDS = flags.DEFINE_string("seeds", "0,1,2", "Seeds (prompt order and sampling keys of each run).")
  _SAMPLES = flags.DEFINE_integer("eval_samples", 4, "Samples per held-out problem (T = 1) for Pass@1.")
  flags.mark_flags_as_required(["workdir"])
  app.run(cli.exit_on_config_error(main), flags_parser=cli.parse_flags)
