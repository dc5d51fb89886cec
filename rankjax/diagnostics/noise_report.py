"""The noise diagnostic's files: results.json, results.md (the table), weights.png (each family's scores on
noise vs clean tokens) and tokens.npz (the per-token arrays, for notebooks)."""

from __future__ import annotations

import json
import math
import os

import numpy as np

from rankjax.diagnostics.families import FAMILIES


def markdown(results: dict) -> str:
  """Returns the results table (percentages for precision, recall and hit rate; lower is better) in Markdown."""
  pool = results["pool"]
  noise = results["noise"]
  intro = (f"Data: {results['data']['source']} / {results['data']['split']}, {pool['examples']} examples; noise "
           f"{noise['mode']} from the {noise['pool']} pool at rate {noise['rate']:g} (seed {noise['seed']}). Top set: "
           f"the {results['top_fraction']:.0%} highest-scored tokens of the whole pool (ties broken at random). "
           "Lower precision / recall / hit rate = less noise amplified.")
  lines = [f"# Noise diagnostic: {results['checkpoint']}", "", intro, "",
           "| family | ranked quantity | precision % | recall % | hit rate % | mean on noise | mean on clean |",
           "|---|---|---|---|---|---|---|"]
  for name in FAMILIES:
    f = results["families"][name]
    lines.append(f"| {name} | {f['ranked']} | {100 * f['precision']:.2f} | {100 * f['recall']:.2f} | "
                 f"{100 * f['hit_rate']:.1f} | {f['mean_noise']:.4g} | {f['mean_clean']:.4g} |")
  summary = (f"Pool: {pool['tokens']} supervised tokens, {pool['noise_tokens']} noise tokens in "
             f"{pool['noisy_sequences']} of {pool['examples']} sequences; base rate (noise share) "
             f"{100 * pool['base_rate']:.3f}%; top set {pool['top_count']} tokens. Chance level (a random top set): "
             f"precision {100 * pool['base_rate']:.3f}%, recall {100 * pool['top_count'] / pool['tokens']:.2f}%.")
  lines += ["", summary, f"Wall time {results['wall_time_s']:.1f} s (scoring {results['scoring_time_s']:.1f} s)."]
  return "\n".join(lines) + "\n"


def _log_x(values: np.ndarray) -> bool:
  """Whether a histogram of `values` reads better on a log x axis: positive values spanning > 2 decades."""
  lo, hi = float(values.min()), float(values.max())
  return lo > 0 and hi / lo > 100


def plot_weights(scores: dict, is_noise: np.ndarray, ranked: dict, path: str) -> None:
  """Writes `path`: one panel per family, the histogram of its score on clean and on noise tokens (each as the
  share of its group per bin; log-spaced bins on a log x axis for positive scores spanning > 2 decades)."""
  # A bare Figure (drawn by Agg on savefig), not pyplot: a notebook's own backend is left as it is.
  from matplotlib.figure import Figure  # noqa: PLC0415 (only when a figure is drawn)
  cols = 4
  rows = math.ceil(len(scores) / cols)
  fig = Figure(figsize=(4.2 * cols, 3.0 * rows))
  axes = fig.subplots(rows, cols, squeeze=False)
  for ax, (name, values) in zip(axes.flat, scores.items()):
    values = np.asarray(values, np.float64)
    log_x = _log_x(values)
    lo, hi = values.min(), values.max()
    if hi <= lo:
      lo, hi = lo - 0.5, hi + 0.5
    bins = np.geomspace(lo, hi, 50) if log_x else np.linspace(lo, hi, 50)
    for sel, label, color in ((~is_noise, "clean", "tab:blue"), (is_noise, "noise", "tab:red")):
      share = np.full(int(sel.sum()), 1.0 / max(int(sel.sum()), 1))  # share of the group per bin (log bins too)
      ax.hist(values[sel], bins=bins, weights=share, histtype="stepfilled", alpha=0.5, label=label, color=color)
    if log_x:
      ax.set_xscale("log")
    ax.set_title(name, fontsize=10)
    ax.set_xlabel(ranked[name], fontsize=7)
    ax.set_ylabel("share of tokens", fontsize=7)
    ax.legend(fontsize=7)
  for ax in list(axes.flat)[len(scores):]:
    ax.axis("off")
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def write(workdir: str, results: dict, tokens: dict, scores: dict, tops: dict) -> None:
  """Writes results.json, results.md, weights.png and tokens.npz (the `tokens` arrays, then score_<family>
  and top_<family> (bool: in the family's top set) for each family) into `workdir`."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "results.json"), "w", encoding="utf-8") as f:
    json.dump(results, f, indent=2)
  with open(os.path.join(workdir, "results.md"), "w", encoding="utf-8") as f:
    f.write(markdown(results))
  ranked = {k: v["ranked"] for k, v in results["families"].items()}
  plot_weights(scores, tokens["is_noise"], ranked, os.path.join(workdir, "weights.png"))
  arrays = dict(tokens)
  arrays.update({f"score_{k}": v for k, v in scores.items()})
  arrays.update({f"top_{k}": v for k, v in tops.items()})
  np.savez_compressed(os.path.join(workdir, "tokens.npz"), **arrays)
