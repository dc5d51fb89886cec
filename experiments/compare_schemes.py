"""Multi-seed comparison of the weighting schemes in the paper's regime: a base that already solves part of the task.

python experiments/compare_schemes.py --config=configs/compare_schemes.py --workdir=DIR [--config.x=y ...]

1. DIR/base: one base model pretrained on the synthetic corpus, with `data.synthetic.pretrain_mix` of its examples
   from the fine-tuning formats (never eval questions), so it starts well above chance on the held-out problems.
2. DIR/runs/<condition>/<method>/seed<k>: each method fine-tuned from that base for each seed, on clean data and on
   data with noise words inserted into the responses (`compare.noise_rate`). The seed sets the data order, the
   noise draws and the sampling of the evaluation; the base is shared, so the intervals cover fine-tuning
   variation, not pretraining variation.
3. Each run is evaluated with the harness (`rankjax.eval.harness`): n samples at temperature 1.0 of every held-out
   problem, graded by math-verify; Pass@1 = mean accuracy over samples. Greedy exact match is also reported.
4. DIR/results.md, results.json and compare.png: per condition and method, the mean over seeds and a 95% t-interval
   of Pass@1, greedy accuracy and the final training NLL. The "base" row is the base model itself, sampled with
   each seed (its interval covers sampling only). The intervals are `rankjax.report.mean_ci`'s; the same
   numbers per run and group: `python -m rankjax.report DIR/runs
   --metrics=eval/synthetic/pass@1,eval/greedy_accuracy,mean_nll` (groups: method x noise rate; replicates: seeds).

Every stage resumes: a finished run or evaluation is skipped, an interrupted one continues.
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from rankjax import cli  # noqa: E402
from rankjax.data import sources, stream  # noqa: E402
from rankjax.eval import benchmarks, harness, settings as eval_settings  # noqa: E402
from rankjax.eval.answer_accuracy import answer_accuracy  # noqa: E402
from rankjax.report import mean_ci  # noqa: E402  (mean, 95% Student-t half-width; nan for one value)
from rankjax.rundir import atomic, layout  # noqa: E402
from rankjax.rundir.progress import read_metrics  # noqa: E402
from rankjax.train import config as run_config  # noqa: E402
from rankjax.train.loop import train  # noqa: E402
from rankjax.train.methods import method_overrides, parse_methods  # noqa: E402
from rankjax.train.restore import load_checkpoint  # noqa: E402


def conditions(config) -> dict[str, float]:
  """{condition name: response noise rate}: "clean" and, when compare.noise_rate > 0, "noisy"."""
  out = {"clean": 0.0}
  if float(config.compare.noise_rate) > 0:
    out["noisy"] = float(config.compare.noise_rate)
  return out


def run_one(config, base_dir: str, tokenizer_path: str, method: str, seed: int, rate: float, run_dir: str) -> dict:
  """Fine-tunes `method` from the base with `seed` (and noise `rate`) in run_dir, evaluates it; returns its row."""
  overrides = {**method_overrides(method), "init_from": base_dir, "data.tokenizer_path": tokenizer_path,
               "data.shuffle_seed": seed, "data.response_noise.rate": rate, "data.response_noise.seed": seed,
               "seed": seed}
  run = run_config.with_overrides(config, overrides)
  train(run, run_dir)
  row = evaluate_dir(config, run_dir, seed)
  last = read_metrics(run_dir)[-1]
  return {"method": method, "noise_rate": rate, **row, "final_train_nll": last["mean_nll"],
          "final_train_loss": last["loss"]}


def evaluate_dir(config, run_dir: str, seed: int) -> dict:
  """Pass@1 / Pass@n (n samples at T = 1.0, sampling seed `seed`) and greedy accuracy of the run in `run_dir`
  on the held-out problems; cached in run_dir/eval/row.json (run_dir/eval_seed<k>/ for the shared base)."""
  own = os.path.basename(run_dir).startswith("seed")
  eval_dir = layout.eval_dir(run_dir) if own else os.path.join(run_dir, f"eval_seed{seed}")
  result_path = os.path.join(eval_dir, layout.EVAL_ROW_FILE)
  if os.path.exists(result_path):
    with open(result_path, encoding="utf-8") as f:
      return json.load(f)
  ckpt = load_checkpoint(run_dir)
  k = int(config.compare.eval_samples)
  eval_config = eval_settings.default_config()
  eval_config.update({"benchmarks": "synthetic", "num_samples": k, "pass_k": (1, k), "temperature": 1.0,
                      "max_new_tokens": int(config.compare.max_new_tokens), "batch_size": 256, "seed": seed,
                      "progress": False})
  formatter = harness.make_formatter(ckpt.tokenizer, "plain", ckpt.plain_template, "plain")
  problems = {"synthetic": benchmarks.load_problems(eval_settings.BenchmarkSpec("synthetic"), eval_config.data, "",
                                                    0, config.data)}
  results = harness.run_eval(ckpt.model, ckpt.params, formatter, problems, eval_config, out_dir=eval_dir)
  records = sources.load_records(config.data, "eval")
  greedy, _ = answer_accuracy(ckpt.model, ckpt.params, stream.make_formatter(config.data, ckpt.tokenizer), records,
                              int(config.compare.max_new_tokens))
  row = {"seed": seed, "pass@1": results["benchmarks"]["synthetic"]["pass@1"],
         f"pass@{k}": results["benchmarks"]["synthetic"][f"pass@{k}"], "greedy_accuracy": greedy}
  atomic.write_json(result_path, row, indent=None)
  return row


def summarize(rows: list[dict], methods: list[str], conds: dict[str, float], pass_k: int) -> dict:
  """{condition: {method: {metric: [mean, ci95]}}} over seeds."""
  out = {}
  for cond, rate in conds.items():
    out[cond] = {}
    for m in methods:
      mine = [r for r in rows if r["method"] == m and r["noise_rate"] == rate]
      out[cond][m] = {k: mean_ci([r[k] for r in mine]) for k in
                      ("pass@1", f"pass@{pass_k}", "greedy_accuracy", "final_train_nll")}
      out[cond][m]["seeds"] = sorted(r["seed"] for r in mine)
  return out


def markdown(summary: dict, pass_k: int, header: str) -> str:
  lines = [header, ""]
  for cond, per in summary.items():
    lines += [f"### {cond}", "", f"| method | Pass@1 (%) | Pass@{pass_k} (%) | greedy accuracy (%) | final train NLL |",
              "|---|---|---|---|---|"]
    for m, r in per.items():
      cells = [f"{100 * r[k][0]:.1f} ± {100 * r[k][1]:.1f}" for k in ("pass@1", f"pass@{pass_k}", "greedy_accuracy")]
      lines.append(f"| {m} | " + " | ".join(cells) + f" | {r['final_train_nll'][0]:.3f} ± {r['final_train_nll'][1]:.3f} |")
    lines.append("")
  return "\n".join(lines)


def plot(summary: dict, path: str) -> None:
  """Pass@1 per method (mean and 95% interval over seeds), one panel per condition."""
  import matplotlib  # noqa: PLC0415
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415
  fig, axes = plt.subplots(1, len(summary), figsize=(6 * len(summary), 4), squeeze=False)
  for ax, (cond, per) in zip(axes[0], summary.items()):
    names = list(per)
    means = [100 * per[m]["pass@1"][0] for m in names]
    errs = [100 * np.nan_to_num(per[m]["pass@1"][1]) for m in names]
    ax.bar(range(len(names)), means, yerr=errs, capsize=4, color="tab:blue", alpha=0.8)
    ax.set_xticks(range(len(names)), names, rotation=35, ha="right")
    ax.set_ylabel("Pass@1 (%), mean ± 95% CI over seeds")
    ax.set_title(cond)
    ax.grid(axis="y", alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def run(config, workdir: str) -> dict:
  """Runs every stage in `workdir` (resuming); returns the summary (also written to results.*)."""
  t0 = time.time()
  methods = parse_methods(config.compare.methods)
  seeds = [int(s) for s in config.compare.seeds]
  conds = conditions(config)
  os.makedirs(workdir, exist_ok=True)
  stream.run_tokenizer(config, workdir, config.model.vocab_size)
  base_dir = os.path.join(workdir, "base")
  print(f"[compare] base model: {config.compare.pretrain_steps} pretraining steps in {base_dir}", flush=True)
  train(run_config.with_overrides(config, {
      "data.split": "pretrain", "data.loss_on": "all", "data.tokenizer_path": workdir,
      "loss.name": "sft", "loss.diagnostics": False, "total_steps": int(config.compare.pretrain_steps),
      "lora.rank": 0, "lora.quantize": "none",  # --config.lora.* apply to the fine-tuning runs only
      "checkpoint_every": int(config.compare.pretrain_steps),
      "optimizer.learning_rate": float(config.compare.pretrain_learning_rate)}), base_dir)
  rows = []
  total = len(conds) * len(seeds) * len(methods)
  for cond, rate in conds.items():
    for seed in seeds:
      for method in methods:
        run_dir = os.path.join(workdir, "runs", cond, method, f"seed{seed}")
        print(f"[compare] {len(rows) + 1}/{total}: {cond} {method} seed {seed}", flush=True)
        rows.append(run_one(config, base_dir, workdir, method, seed, rate, run_dir))
  for seed in seeds:  # the base itself, with each seed's sampling (its NLL: before any fine-tuning)
    for rate in conds.values():
      rows.append({"method": "base", "noise_rate": rate, **evaluate_dir(config, base_dir, seed),
                   "final_train_nll": float("nan"), "final_train_loss": float("nan")})
  k = int(config.compare.eval_samples)
  summary = summarize(rows, ["base"] + methods, conds, k)
  wall = time.time() - t0
  header = (f"# Scheme comparison ({len(seeds)} seeds: {seeds})\n\nOne base ({config.compare.pretrain_steps} "
            f"pretraining steps, {100 * float(config.data.synthetic.pretrain_mix):.0f}% of them fine-tuning formats); "
            f"each method {config.total_steps} fine-tuning steps of {config.data.batch_size} sequences per seed; "
            f"noisy = a random corpus word inserted after each response word with probability "
            f"{float(config.compare.noise_rate)}. Pass@1: {k} samples at T = 1.0 of each of the "
            f"{config.data.synthetic.num_eval} held-out problems, graded by math-verify. Mean ± 95% t-interval over "
            f"seeds (the base is shared: pretraining variance is not covered). Wall time {wall:.0f} s.")
  text = markdown(summary, k, header)
  with open(os.path.join(workdir, "results.md"), "w", encoding="utf-8") as f:
    f.write(text)
  with open(os.path.join(workdir, "results.json"), "w", encoding="utf-8") as f:
    json.dump({"summary": summary, "rows": rows, "wall_seconds": wall}, f, indent=2)
  plot(summary, os.path.join(workdir, "compare.png"))
  print(text, flush=True)
  return summary


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  _CONFIG = config_flags.DEFINE_config_file("config", None, "configs/compare_schemes.py", lock_config=True)
  _WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the whole comparison (resumable).")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(cli.exit_on_config_error(main), flags_parser=cli.parse_flags)
