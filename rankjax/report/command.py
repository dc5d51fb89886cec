"""One report over many runs: python -m rankjax.report DIR... [--out=OUT] [--metrics=a,b] [--group-by=k1,k2]
[--include_unfinished]

Writes report.md, report.csv, report.json, curves.png and metrics.png into OUT (default: the first DIR); see
`rankjax.report` for what is read and how runs are grouped. Only finished runs enter a group's statistics
unless --include_unfinished; the runs left out are listed per group, here and in every file.
"""

from __future__ import annotations

import sys
import types

from absl import flags

from rankjax import cli

from rankjax.report.grouping import BOOKKEEPING, SEED_KEYS
from rankjax.report.runs import collect_runs, warn
from rankjax.report.stats import DEFAULT_METRICS, available_metrics
from rankjax.report.write import write_report


def _keys(text: str | None) -> list[str] | None:
  return None if text is None else [k.strip() for k in text.split(",") if k.strip()]


def define_flags(flag_values: flags.FlagValues) -> None:
  """Defines the command's flags in `flag_values`; --group-by, --no-group, --seed-keys and --include-unfinished
  are aliases."""
  f = flag_values
  flags.DEFINE_string("out", None, "where report.* and the plots go (default: the first DIR)", flag_values=f)
  flags.DEFINE_string("metrics", None, "comma list of metrics (numeric keys of the last metrics row, or "
                      "eval/<benchmark>/pass@k); default: " + ",".join(DEFAULT_METRICS) + " (those present)",
                      flag_values=f)
  flags.DEFINE_string("group_by", None, "comma list of config keys to group by (default: every varying non-seed "
                      "key)", flag_values=f)
  flags.DEFINE_bool("no_group", False, "one group per run (no means over seeds)", flag_values=f)
  flags.DEFINE_bool("include_unfinished", False, "count unfinished runs (their last logged values) in the groups' "
                    "statistics and plots (default: finished runs only; the others are listed as left out)",
                    flag_values=f)
  flags.DEFINE_string("seed_keys", ",".join(SEED_KEYS), "comma list of config keys that are replicates",
                      flag_values=f)
  flags.DEFINE_string("ignore", ",".join(BOOKKEEPING), "comma list of config keys never compared", flag_values=f)
  flags.DEFINE_string("title", None, "report.md's heading", flag_values=f)
  for alias, name in (("group-by", "group_by"), ("no-group", "no_group"), ("seed-keys", "seed_keys"),
                      ("include-unfinished", "include_unfinished")):
    flags.DEFINE_alias(alias, name, flag_values=f)


def main(argv=None) -> int:
  """The command (`argv`: the arguments after the program name; default sys.argv's); returns the exit status (0;
  1 when no run is found; 2 for an unknown metric). A bad flag is one line on stderr and exit status 2."""
  values = flags.FlagValues()
  define_flags(values)
  argv = sys.argv[1:] if argv is None else list(argv)
  if any(a in ("--help", "-h", "--helpfull") for a in argv):
    print(f"{__doc__}\nFlags:\n{values.get_help()}", flush=True)
    return 0
  dirs = cli.parse_flags(["python -m rankjax.report", *argv], config_flag=None, flag_values=values)[1:]
  if not dirs:
    cli.exit_with_usage_error("give the folders to search for runs: python -m rankjax.report DIR... [--out=DIR]")
  args = types.SimpleNamespace(dirs=dirs, **{name: values[name].value for name in values if "-" not in name})
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
