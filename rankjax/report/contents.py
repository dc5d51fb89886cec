"""What a report shows (`Report`) and how it is built from runs: the varying keys, the groups, their
statistics over the finished runs (or all runs, with include_unfinished)."""

from __future__ import annotations

import dataclasses
import os

from rankjax.report.grouping import BOOKKEEPING, SEED_KEYS, Group, group_runs, is_seed_key, varying_keys
from rankjax.report.stats import default_metrics, group_stats


@dataclasses.dataclass
class Report:
  """Everything a report shows: runs, groups, the keys that vary, the metrics and their statistics."""
  runs: list
  groups: list
  columns: list  # varying config keys other than seed keys
  seed_keys: list  # varying seed keys
  group_by: list
  grouped: bool  # False: one group per run
  metrics: list
  stats: list  # group_stats of each group
  dirs: list
  skipped: list
  ignore: tuple
  include_unfinished: bool = False  # False: only finished runs enter the statistics

  def counted(self, group: Group) -> list:
    """The runs of `group` that its statistics (and the plots) are over."""
    return group.counted(self.include_unfinished)

  def left_out(self, group: Group) -> list:
    """(run, why) of the runs of `group` that its statistics leave out."""
    return group.left_out(self.include_unfinished)


def build_report(runs, metrics=None, group_by=None, group: bool = True, seed_keys=SEED_KEYS, ignore=BOOKKEEPING,
                 dirs=(), skipped=(), include_unfinished: bool = False) -> Report:
  """The report of `runs` (see `write.write_report`). Every run is listed and is a member of its group; only
  finished runs enter the groups' statistics unless `include_unfinished`."""
  runs = list(runs)
  if not runs:
    raise ValueError("build_report: no runs")
  metrics = list(metrics) if metrics else default_metrics(runs)
  varying = varying_keys(runs, ignore)
  columns = [k for k in varying if not is_seed_key(k, seed_keys)]
  seeds = [k for k in varying if is_seed_key(k, seed_keys)]
  by = list(group_by) if group_by is not None else columns
  groups = group_runs(runs, by=by, seed_keys=seed_keys, ignore=ignore, group=group)
  stats = [group_stats(g, metrics, include_unfinished) for g in groups]
  return Report(runs, groups, columns, seeds, by if group else [], bool(group), metrics, stats,
                [os.path.abspath(d) for d in dirs], list(skipped), tuple(ignore), bool(include_unfinished))
