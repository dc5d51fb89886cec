"""report.md: what was searched and found, what the intervals mean, the grouped table and the per-run table."""

from __future__ import annotations

from rankjax.report.cells import cell, num, stat_cell, table
from rankjax.report.contents import Report
from rankjax.report.grouping import Group, seed_label, sort_value
from rankjax.report.values import MISSING

FINISHED = ("Finished: a committed checkpoint of config.total_steps or later, or, in a folder without checkpoints, a "
            "metrics row of that step.")


def _seed_list(group: Group, seed_keys) -> str:
  """The seed labels of the group's runs (`seed_keys`: the varying seed keys, else ["seed"])."""
  return ", ".join(seed_label(r, seed_keys) for r in group.runs)


def left_out_cell(left_out) -> str:
  """The "left out" cell of a group: how many runs and why, "-" when none."""
  if not left_out:
    return "-"
  return f"{len(left_out)}: " + "; ".join(f"`{r.name}` ({why})" for r, why in left_out)


def statistics_line(report: Report) -> str:
  """The header line saying which runs the statistics are over and how many were left out."""
  if report.include_unfinished:
    return ("- Statistics and plots: over every run, unfinished ones included (include_unfinished): an unfinished "
            f"run contributes its last logged step's values, not final ones. {FINISHED}")
  left = sum(len(report.left_out(g)) for g in report.groups)
  groups = sum(bool(report.left_out(g)) for g in report.groups)
  counts = (f"{left} unfinished run(s) left out of {groups} group(s) (column `left out`); `--include_unfinished` "
            "counts their last logged values." if left else "no run left out.")
  return f"- Statistics and plots: over finished runs only; {counts} {FINISHED}"


def markdown(report: Report, title: str = "Report over runs") -> str:
  """report.md: header (dirs, counts, varying keys, seeds, which runs the statistics are over, what the intervals
  mean), the grouped table, the per-run table."""
  runs, unfinished = report.runs, [r for r in report.runs if not r.finished]
  all_seeds = sorted({seed_label(r, report.seed_keys) for r in runs}, key=sort_value)
  lines = [f"# {title}", ""]
  lines.append(f"- Searched: {', '.join(f'`{d}`' for d in report.dirs) or '-'}")
  lines.append(f"- Runs found: {len(runs)} ({len(runs) - len(unfinished)} finished"
               + (f", {len(unfinished)} unfinished: " + ", ".join(f"`{r.name}` (step {r.step}/{r.total_steps})"
                                                                    for r in unfinished) if unfinished else "")
               + ")" + (f"; {len(report.skipped)} warning(s), below" if report.skipped else ""))
  lines.append(statistics_line(report))
  lines.append("- Config keys that vary between runs (columns): "
               + (", ".join(f"`{k}`" for k in report.columns) or "none"))
  lines.append("- Seed keys that vary (replicates): " + (", ".join(f"`{k}`" for k in report.seed_keys) or "none")
               + (f"; seeds: {', '.join(all_seeds)}" if report.seed_keys else ""))
  if not report.grouped:
    lines.append("- Not grouped: one row per run, no means over seeds")
  elif report.group_by != report.columns:
    pooled = [k for k in report.columns if k not in report.group_by]
    lines.append(f"- Grouped by: {', '.join(f'`{k}`' for k in report.group_by) or 'nothing (all runs in one group)'}"
                 + (f"; pooling runs that differ in {', '.join(f'`{k}`' for k in pooled)}" if pooled else ""))
  lines.append(f"- Not compared: bookkeeping keys ({', '.join(f'`{k}`' for k in report.ignore)}) and paths inside "
               "a run's own folder.")
  lines.append("- Metrics: the last logged row of each run's metrics.jsonl, i.e. the value on one training batch "
               "(loss: the weighted loss each method minimises; mean_nll: nats per supervised token; mean_weight: "
               "the mean token weight)" + ("; eval/...: the latest evaluation results, fractions in [0, 1]"
                                          if any(m.startswith("eval/") for m in report.metrics) else "") + ".")
  lines += ["", "Intervals: mean ± half-width of the 95% Student-t interval over a group's runs, "
            "t(0.975, n-1)·sd/√n. It measures the spread over seeds of exactly this setup (initialisation, data "
            "order and, where seeded, noise and sampling) and nothing else: not other data, model sizes or training "
            "lengths. With few seeds the interval is wide (t = 4.30 for n = 3) and the sd behind it is itself "
            "uncertain, so overlapping intervals do not show that two settings are equal and separate ones from a "
            "handful of seeds are weak evidence that they differ. n=1: no interval.", ""]
  if report.skipped:
    lines += ["Warnings (runs named here are not in the tables):", ""] + [f"- {s}" for s in report.skipped] + [""]
  lines += ["## Groups", ""]
  key_cols = report.group_by or ["group" if report.grouped else "run"]
  head = key_cols + ["n", "seeds", "finished", "left out"] + report.metrics
  rows = []
  for g, st in zip(report.groups, report.stats):
    keys = [cell(g.values[k]) if k in g.values else g.label for k in key_cols]
    done = sum(r.finished for r in g.runs)
    rows.append(keys + [str(g.n), _seed_list(g, report.seed_keys or ["seed"]), f"{done}/{g.n}",
                        left_out_cell(report.left_out(g))] + [stat_cell(st[m]) for m in report.metrics])
  lines += table(head, rows) + ["", "## Runs", ""]
  head = ["run"] + report.columns + report.seed_keys + ["step", "finished"] + report.metrics
  rows = []
  for g in report.groups:
    for r in g.runs:
      rows.append([r.name] + [cell(r.config.get(k, MISSING)) for k in report.columns + report.seed_keys]
                  + [f"{r.step}/{r.total_steps}", "yes" if r.finished else "**no**"]
                  + [num(r.value(m)) for m in report.metrics])
  lines += table(head, rows)
  return "\n".join(lines) + "\n"
