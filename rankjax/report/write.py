"""All of a report's files in one folder."""

from __future__ import annotations

import json
import os

from rankjax.report.contents import build_report
from rankjax.report.csv_file import write_csv
from rankjax.report.grouping import BOOKKEEPING, SEED_KEYS
from rankjax.report.json_file import report_dict
from rankjax.report.markdown_file import markdown
from rankjax.report.plots import plot_curves, plot_metrics

FILES = (("md", "report.md"), ("csv", "report.csv"), ("json", "report.json"), ("curves", "curves.png"),
         ("metrics", "metrics.png"))


def write_report(runs, out_dir: str, metrics=None, group_by=None, group: bool = True, seed_keys=SEED_KEYS,
                 ignore=BOOKKEEPING, dirs=(), skipped=(), title: str | None = None, include_unfinished: bool = False,
                 file_names: dict | None = None) -> dict:
  """Writes report.md, report.csv, report.json, curves.png and metrics.png of `runs` into `out_dir`; returns
  {"md": path, "csv": ..., "json": ..., "curves": ..., "metrics": ...} and "report": the Report. `metrics`: names
  of numeric keys of the last metrics row or of the evaluation results (default: `default_metrics`);
  `group_by`, `group`: see `group_runs`; `skipped`: warnings to list in report.md; `include_unfinished`: count
  unfinished runs in the groups' statistics and plots (default: finished runs only; the others are listed as
  left out); `file_names`: other file names for some of the keys (e.g. {"curves": "loss_curves.png"})."""
  report = build_report(runs, metrics, group_by, group, seed_keys, ignore, dirs, skipped, include_unfinished)
  names = dict(FILES)
  unknown = sorted(set(file_names or {}) - set(names))
  if unknown:
    raise ValueError(f"write_report: file_names has unknown keys {unknown}; known: {sorted(names)}")
  names.update(file_names or {})
  os.makedirs(out_dir, exist_ok=True)
  paths = {k: os.path.join(out_dir, f) for k, f in names.items()}
  title = title or f"Report over {len(report.runs)} runs"
  with open(paths["md"], "w", encoding="utf-8") as f:
    f.write(markdown(report, title))
  write_csv(report, paths["csv"])
  with open(paths["json"], "w", encoding="utf-8") as f:
    json.dump(report_dict(report), f, indent=2)
  plot_curves(report, paths["curves"])
  plot_metrics(report, paths["metrics"])
  return {**paths, "report": report}
