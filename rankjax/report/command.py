"""One report over many runs: python -m rankjax.report DIR... [--out=OUT] [--metrics=a,b] [--group-by=k1,k2]
[--include_unfinished]

Writes report.md, report.csv, report.json, curves.png and metrics.png into OUT (default: the first DIR); see
`rankjax.report` for what is read and how runs are grouped. Only finished runs enter a group's statistics
unless --include_unfinished; the runs left out are listed per group, here and in every file.
"""

from __future__ import annotations

import argparse
import sys

from rankjax.report.grouping import BOOKKEEPING, SEED_KEYS
from rankjax.report.runs import collect_runs, warn
from rankjax.report.stats import DEFAULT_METRICS, available_metrics
from rankjax.report.write import write_report


def _keys(text: str | None) -> list[str] | None:
  return None if text is None else [k.strip() for k in text.split(",") if k.strip()]


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m rankjax.report", description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("dirs", nargs="+", metavar="DIR", help="folders searched recursively for runs")
  parser.add_argument("--out", help="where report.* and the plots go (default: the first DIR)")
  parser.add_argument("--metrics", help="comma list of metrics (numeric keys of the last metrics row, or "
                      "eval/<benchmark>/pass@k); default: " + ",".join(DEFAULT_METRICS) + " (those present)")
  parser.add_argument("--group-by", "--group_by", dest="group_by",
                      help="comma list of config keys to group by (default: every varying non-seed key)")
  parser.add_argument("--no-group", "--no_group", dest="no_group", action="store_true",
                      help="one group per run (no means over seeds)")
  parser.add_argument("--include_unfinished", "--include-unfinished", dest="include_unfinished",
                      action="store_true", help="count unfinished runs (their last logged values) in the groups' "
                      "statistics and plots (default: finished runs only; the others are listed as left out)")
  parser.add_argument("--seed-keys", "--seed_keys", dest="seed_keys", default=",".join(SEED_KEYS),
                      help="comma list of config keys that are replicates (default: %(default)s)")
  parser.add_argument("--ignore", default=",".join(BOOKKEEPING),
                      help="comma list of config keys never compared (default: %(default)s)")
  parser.add_argument("--title", help="report.md's heading")
  return parser


def main(argv=None) -> int:
  """The command; returns the exit status (0; 1 when no run is found; 2 for an unknown metric)."""
  args = _parser().parse_args(argv)
  skipped = []

  def on_warning(message):
    skipped.append(message)
    warn(message)

  runs = collect_runs(args.dirs, on_warning=on_warning)
  if not runs:
    print(f"[report] no runs found under {', '.join(args.dirs)} (a run is a folder holding config.json and "
          "metrics.jsonl)", file=sys.stderr, flush=True)
    return 1
  metrics = _keys(args.metrics)
  if metrics:
    known = set(available_metrics(runs))
    unknown = [m for m in metrics if m not in known]
    if unknown:
      print(f"[report] no run has the metric(s) {unknown}; known: {', '.join(sorted(known))}", file=sys.stderr,
            flush=True)
      return 2
  out = args.out or args.dirs[0]
  paths = write_report(runs, out, metrics=metrics, group_by=_keys(args.group_by), group=not args.no_group,
                       seed_keys=tuple(_keys(args.seed_keys)), ignore=tuple(_keys(args.ignore)), dirs=args.dirs,
                       skipped=skipped, title=args.title, include_unfinished=args.include_unfinished)
  report = paths["report"]
  unfinished = sum(not r.finished for r in runs)
  print(f"[report] {len(runs)} runs ({unfinished} unfinished, {len(skipped)} warnings) in {len(report.groups)} "
        f"groups; varying: {', '.join(report.columns + report.seed_keys) or 'nothing'}", flush=True)
  if unfinished and report.include_unfinished:
    print("[report] unfinished runs are counted in the statistics (--include_unfinished)", flush=True)
  for g in report.groups:
    left = report.left_out(g)
    if left:
      print(f"[report] {g.label}: {len(left)} of {g.n} runs left out of the statistics ("
            + "; ".join(f"{r.name}: {why}" for r, why in left) + "); --include_unfinished counts them", flush=True)
  print(f"[report] wrote {', '.join(p for k, p in paths.items() if k != 'report')}", flush=True)
  return 0
