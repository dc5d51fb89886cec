"""report.csv: one row per run."""

from __future__ import annotations

import csv

from rankjax.report.cells import cell
from rankjax.report.contents import Report
from rankjax.report.values import MISSING


def _eval_columns(runs) -> list[str]:
  return sorted({k for r in runs for k in r.eval})


def write_csv(report: Report, path: str) -> None:
  """One row per run: name, the varying config keys (seed keys included), step, total_steps, finished,
  in_statistics (whether the run enters its group's statistics), left_out (why not; empty when it does), the
  report's metrics, every evaluation value, path."""
  extra = [k for k in _eval_columns(report.runs) if k not in report.metrics]
  head = (["run"] + report.columns + report.seed_keys + ["step", "total_steps", "finished", "in_statistics",
                                                         "left_out"] + report.metrics + extra + ["path"])
  left_out = {r.path: why for g in report.groups for r, why in report.left_out(g)}
  with open(path, "w", encoding="utf-8", newline="") as f:
    w = csv.writer(f)
    w.writerow(head)
    for r in report.runs:
      values = [r.value(m) for m in report.metrics + extra]
      w.writerow([r.name] + [cell(r.config.get(k, MISSING)) for k in report.columns + report.seed_keys]
                 + [r.step, r.total_steps, r.finished, r.path not in left_out, left_out.get(r.path, "")]
                 + ["" if v is None else repr(v) for v in values] + [r.path])
