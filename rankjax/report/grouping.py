"""Which config keys vary between runs, and the groups of runs that differ only in seeds (replicates)."""

from __future__ import annotations

import dataclasses
import json
import os

from rankjax.report.cells import cell
from rankjax.report.runs import Run
from rankjax.report.values import MISSING

SEED_KEYS = ("seed", "data.shuffle_seed", "data.response_noise.seed", "eval.seed")
BOOKKEEPING = ("progress", "eval.progress", "checkpoint_every", "keep_checkpoints", "checkpoint_async",
               "data.prefetch", "eval.grading.workers", "loss.histograms", "loss.dump_tokens", "loss.dump_sequences")


def is_seed_key(key: str, seed_keys=SEED_KEYS) -> bool:
  return key in seed_keys


def _hashable(value):
  if isinstance(value, list):
    return tuple(_hashable(v) for v in value)
  if isinstance(value, dict):
    return json.dumps(value, sort_keys=True)
  return value


def comparable(run: Run, key: str):
  """The value of config `key` as runs are compared: a path inside the run's own folder as `<run>/rest`,
  lists as tuples; `<missing>` when the run's config lacks the key."""
  value = run.config.get(key, MISSING)
  if isinstance(value, str) and value and (os.sep in value or value.startswith("~")):
    full = os.path.normpath(os.path.abspath(os.path.expanduser(value)))
    if full == run.path or full.startswith(run.path + os.sep):
      return "<run>" + full[len(run.path):]
  return _hashable(value)


def varying_keys(runs, ignore=BOOKKEEPING) -> list[str]:
  """The config keys (dotted, sorted) whose values are not the same in every run that has them, seed keys
  included; keys in `ignore` left out (see the package docstring for what counts as the same)."""
  keys = sorted({k for r in runs for k in r.config})
  out = []
  for key in keys:
    if key in ignore:
      continue
    if len({comparable(r, key) for r in runs if key in r.config}) > 1:
      out.append(key)
  return out


def seed_label(run: Run, seed_keys) -> str:
  """The run's replicate: its `seed`, or `key=value` pairs when the (varying) seed keys disagree; a
  data.shuffle_seed of -1 (= follow seed) does not count."""
  values = {}
  for key in seed_keys:
    v = run.config.get(key, MISSING)
    if key == "data.shuffle_seed" and v == -1:
      continue
    values[key] = v
  if not values:
    return "-"
  if len({json.dumps(v) for v in values.values()}) == 1:
    return str(next(iter(values.values())))
  return ",".join(f"{k}={v}" for k, v in values.items())


@dataclasses.dataclass
class Group:
  """Runs that differ only in seed keys (or share the `--group-by` keys): `values` = {key: value} they share."""
  label: str
  values: dict
  runs: list

  @property
  def n(self) -> int:
    """The number of runs in the group, finished or not."""
    return len(self.runs)

  def counted(self, include_unfinished: bool = False) -> list:
    """The runs that enter the group's statistics: the finished ones, or all with include_unfinished."""
    return [r for r in self.runs if include_unfinished or r.finished]

  def left_out(self, include_unfinished: bool = False) -> list[tuple[Run, str]]:
    """(run, why) of the runs kept out of the group's statistics: the unfinished ones, none with
    include_unfinished."""
    return [] if include_unfinished else [(r, r.unfinished_reason) for r in self.runs if not r.finished]


def sort_value(value):
  """A sort key under which numbers come first, in numeric order, then everything else as text."""
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    return (0, float(value), "")
  return (1, 0.0, str(value))


def group_runs(runs, by=None, seed_keys=SEED_KEYS, ignore=BOOKKEEPING, group: bool = True) -> list[Group]:
  """Groups of `runs`: by default runs whose varying config keys other than `seed_keys` are equal (so runs
  that differ only in seeds form one group); with `by` (a list of keys) runs equal in those keys; with
  group=False one group per run. Groups are sorted by their values, runs in a group by seed label. Unfinished
  runs are members of their group (`Group.counted` says which runs enter its statistics)."""
  runs = list(runs)
  if not group:
    return [Group(r.name, {"run": r.name}, [r]) for r in runs]
  if by is None:
    by = [k for k in varying_keys(runs, ignore) if not is_seed_key(k, seed_keys)]
  seeds = [k for k in varying_keys(runs, ignore) if is_seed_key(k, seed_keys)]
  buckets: dict = {}
  for r in runs:
    buckets.setdefault(tuple(comparable(r, k) for k in by), []).append(r)
  out = []
  for key in sorted(buckets, key=lambda t: tuple(sort_value(v) for v in t)):
    members = sorted(buckets[key], key=lambda r: (sort_value(_seed_sort(r, seeds)), r.name))
    values = {k: members[0].config.get(k, MISSING) for k in by}
    label = ", ".join(f"{k}={cell(v)}" for k, v in values.items()) or "all runs"
    out.append(Group(label, values, members))
  return out


def _seed_sort(run: Run, seed_keys):
  label = seed_label(run, seed_keys)
  try:
    return int(label)
  except ValueError:
    return label
