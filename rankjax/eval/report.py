"""Per-benchmark Pass@k from graded samples, and the result files: results.json and the paper-style results.md.

Pass@1 is the mean accuracy over the n samples of a problem, averaged over problems; Pass@k the unbiased
estimator averaged over problems. Accuracies are fractions in [0, 1] in results.json, percentages in
results.md. The 95% interval of Pass@1 is +-1.96 standard errors of the per-problem accuracies: it covers
the spread of problems (and of the finite samples drawn for each), not the spread over training seeds.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

from rankjax.eval.pass_at_k import pass_at_k

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"


def benchmark_results(rows: list[dict], num_samples: int, ks: tuple[int, ...]) -> dict:
  """Returns {"num_problems", "num_samples", "pass@k"..., "pass@1_ci95", "mean_generated_tokens", "truncated"}
  of one benchmark's sample rows: the first `num_samples` samples of every problem that has them all."""
  by_problem: dict[int, list[dict]] = {}
  for row in rows:
    if row["sample"] < num_samples:
      by_problem.setdefault(int(row["problem"]), []).append(row)
  complete = {p: rs for p, rs in by_problem.items() if len(rs) == num_samples}
  if not complete:
    raise ValueError("benchmark_results: no problem has all of its samples")
  correct = np.asarray([sum(bool(r["correct"]) for r in rs) for rs in complete.values()])
  used = [r for rs in complete.values() for r in rs]
  out = {"num_problems": len(complete), "num_samples": num_samples}
  for k in ks:
    out[f"pass@{k}"] = float(np.mean([pass_at_k(num_samples, int(c), k) for c in correct]))
  accuracy = correct / num_samples
  stderr = float(np.std(accuracy, ddof=1) / math.sqrt(len(accuracy))) if len(accuracy) > 1 else float("nan")
  out["pass@1_ci95"] = 1.96 * stderr
  out["mean_generated_tokens"] = float(np.mean([r["generated_tokens"] for r in used]))
  out["truncated"] = float(np.mean([r["finish"] == "length" for r in used]))  # share that hit max_new_tokens
  return out


def summarize(samples: dict, benchmarks: list[str], num_samples: int, ks: tuple[int, ...]) -> dict:
  """Returns {"benchmarks": {name: benchmark_results}, "average": unweighted mean over benchmarks of each pass@k}."""
  per = {}
  for name in benchmarks:
    per[name] = benchmark_results([r for r in samples.values() if r["benchmark"] == name], num_samples, ks)
  average = {f"pass@{k}": float(np.mean([per[n][f"pass@{k}"] for n in benchmarks])) for k in ks}
  average["num_benchmarks"] = len(benchmarks)
  return {"benchmarks": per, "average": average}


def markdown_table(results: dict, ks: tuple[int, ...]) -> str:
  """Returns the paper-style table: one row per benchmark and the average, Pass@k in percent."""
  head = ["benchmark", "problems", "n"] + [f"Pass@{k} (%)" for k in ks] + ["mean tokens", "truncated (%)"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for name, r in results["benchmarks"].items():
    cells = [name, str(r["num_problems"]), str(r["num_samples"])]
    for k in ks:
      cell = f"{100 * r[f'pass@{k}']:.2f}"
      if k == 1 and math.isfinite(r["pass@1_ci95"]):
        cell += f" ± {100 * r['pass@1_ci95']:.2f}"
      cells.append(cell)
    cells += [f"{r['mean_generated_tokens']:.0f}", f"{100 * r['truncated']:.1f}"]
    lines.append("| " + " | ".join(cells) + " |")
  avg = results["average"]
  lines.append("| **average** | | | " + " | ".join(f"**{100 * avg[f'pass@{k}']:.2f}**" for k in ks) + " | | |")
  return "\n".join(lines) + "\n"


def write_results(directory: str, results: dict, ks: tuple[int, ...], settings: dict, timing: dict | None = None) -> None:
  """Writes DIR/results.json (results, the settings and this launch's timing) and DIR/results.md (table,
  settings, caveats)."""
  with open(os.path.join(directory, RESULTS_JSON), "w", encoding="utf-8") as f:
    json.dump({**results, "settings": settings, "timing": timing or {}}, f, indent=2, sort_keys=False)
  caption = (f"Checkpoint `{settings.get('checkpoint', '')}`; n = {settings['num_samples']} samples per problem at "
             f"temperature {settings['temperature']}, top-p {settings['top_p']}, up to {settings['max_new_tokens']} "
             f"new tokens, seed {settings['seed']}, prompt `{settings['prompt']}`; graded by math-verify.\n"
             "Pass@1 ± its 95% interval over problems (1.96 standard errors of the per-problem accuracy). The "
             "interval does not cover training-seed variance: comparing two runs needs several seeds.\n")
  with open(os.path.join(directory, RESULTS_MD), "w", encoding="utf-8") as f:
    f.write(markdown_table(results, ks) + "\n" + caption)
