"""report.json: everything in the report, with every run's whole last metrics row and evaluation results."""

from __future__ import annotations

import math

from rankjax.report.contents import Report
from rankjax.report.grouping import seed_label
from rankjax.report.values import MISSING


def _clean(value):
  """JSON-safe: non-finite floats as None, tuples as lists."""
  if isinstance(value, float):
    return value if math.isfinite(value) else None
  if isinstance(value, dict):
    return {str(k): _clean(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_clean(v) for v in value]
  return value


def report_dict(report: Report) -> dict:
  """The content of report.json (NaN written as null). Per group: "n" (its runs), "n_counted" (those its
  "metrics" are over), "left_out" ([{"run", "reason"}] of the others); per run: "in_statistics"."""
  groups, label_keys = [], report.seed_keys or ["seed"]
  left_out = set()
  for g, st in zip(report.groups, report.stats):
    out = [{"run": r.name, "reason": why} for r, why in report.left_out(g)]
    left_out.update(r.path for r, _ in report.left_out(g))
    groups.append({"label": g.label, "values": g.values, "n": g.n, "n_counted": len(report.counted(g)),
                   "seeds": [seed_label(r, label_keys) for r in g.runs], "runs": [r.name for r in g.runs],
                   "finished": sum(r.finished for r in g.runs), "left_out": out, "metrics": st})
  runs = [{"name": r.name, "path": r.path, "config": {k: r.config.get(k, MISSING)
                                                      for k in report.columns + report.seed_keys},
           "seed": seed_label(r, label_keys), "step": r.step, "total_steps": r.total_steps,
           "finished": r.finished, "in_statistics": r.path not in left_out, "final": r.final, "eval": r.eval,
           "eval_step": r.eval_step, "eval_source": r.eval_source} for r in report.runs]
  return _clean({"dirs": report.dirs, "varying_keys": report.columns, "seed_keys": report.seed_keys,
                 "group_by": report.group_by, "grouped": report.grouped, "metrics": report.metrics,
                 "ignored_keys": list(report.ignore), "include_unfinished": report.include_unfinished,
                 "confidence": 0.95, "groups": groups, "runs": runs, "skipped": report.skipped})
