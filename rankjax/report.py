"""One report over many runs: python -m rankjax.report DIR... [--out=OUT] [--metrics=a,b] [--group-by=k1,k2]

Collects every run under the DIRs (recursively; a run is a folder that holds `config.json` and `metrics.jsonl`,
as `python -m rankjax.main`, the launchers, the demo and experiments/compare_schemes.py write them) and writes
into OUT (default: the first DIR):

  report.md    which runs were found, which config keys vary, the seeds; a table per group of seeds (mean and
               95% t-interval) and a table per run
  report.csv   one row per run: the varying config keys, the metrics, step, total_steps, finished, path
  report.json  all of it, with every run's whole last metrics row and evaluation results (NaN written as null)
  curves.png   training loss and mean NLL against the step, one line per group (mean over its runs, band:
               min to max over them)
  metrics.png  the final metrics per group, bars = mean, error bars = 95% t-interval, dots = the runs

What is read from a run:
  - config.json, flattened to dotted keys ({"loss": {"name": "sft"}} -> {"loss.name": "sft"});
  - the last row of metrics.jsonl (`final`): the training metrics of the last logged step, each the value on
    that step's batch (loss: the weighted loss the method minimises; mean_nll: nats per supervised token;
    mean_weight: the mean token weight, 1 for plain SFT). Any numeric key can be a report metric;
  - evaluation results, where present (fractions in [0, 1]): the latest of WORKDIR/eval/step_<N>/results.json
    (the periodic evaluation), WORKDIR/eval/results.json or WORKDIR/results.json, and any results.json under
    the DIRs whose settings name the run as their checkpoint (`python -m rankjax.evaluate
    --config.checkpoint=WORKDIR`); the latest step wins. They become `eval/<benchmark>/pass@k` and
    `eval/average/pass@k`. The numeric fields of WORKDIR/eval/row.json other than pass@k and seed (the demo's
    and compare_schemes' greedy accuracy) become `eval/<field>`;
  - finished: metrics.jsonl reached config.total_steps (or checkpoints/<total_steps> exists; `sweeps.is_finished`).
    Unfinished runs are reported and marked. A run whose config.json or metrics.jsonl cannot be read (empty, torn,
    not JSON) is skipped with a warning naming the file.

Columns and groups. A config key is a column when its value is not the same in every run, except:
  - bookkeeping keys that do not change what is trained (`BOOKKEEPING`: progress display, checkpoint cadence,
    retention and writing mode, prefetch depth, number of grading workers, the logging of token histograms and
    per-token dumps);
  - a key missing from some runs' config.json (written by an older version, before the field existed) counts
    only where the runs that have it disagree;
  - a string that is a path inside the run's own folder (e.g. data.tokenizer_path = the run's workdir) is
    compared as `<run>/rest`, so such paths do not make runs differ. Other paths (init_from = a shared base)
    are compared as they are.
Seed keys (`SEED_KEYS`: seed, data.shuffle_seed, data.response_noise.seed, eval.seed) are replicates: runs whose
other varying keys are equal form a group, and each metric gets the mean over the group's runs, the half-width of
the 95% Student-t interval, t(0.975, n-1) * sd / sqrt(n), and n. `--group-by=k1,k2` groups by those keys only
(pooling runs that differ in others), `--no-group` makes every run its own group.

The library functions are pure (no global state, matplotlib without pyplot) and usable from notebooks:
collect_runs, varying_keys, group_runs, group_stats, mean_ci, markdown, write_report.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import re
import sys
import types

from absl import flags

from rankjax import cli, sweeps
from rankjax.train.metrics_writer import read_metrics

SEED_KEYS = ("seed", "data.shuffle_seed", "data.response_noise.seed", "eval.seed")
BOOKKEEPING = ("progress", "eval.progress", "checkpoint_every", "keep_checkpoints", "checkpoint_async",
               "data.prefetch", "eval.grading.workers", "loss.histograms", "loss.dump_tokens", "loss.dump_sequences")
DEFAULT_METRICS = ("loss", "mean_nll", "mean_weight", "eval/average/pass@1", "eval/greedy_accuracy")
CURVE_METRICS = ("loss", "mean_nll")
PRUNE = frozenset({"checkpoints", "tensorboard", "tfds", "hf", ".git", "__pycache__", ".venv", ".ipynb_checkpoints"})
UNITS = {"loss": "the weighted loss each method minimises", "mean_nll": "nats per supervised token",
         "mean_weight": "mean token weight"}
_STEP_DIR = re.compile(r"^step_(\d+)$")
_MISSING = "<missing>"


# -------------------------------------------------------------------------------------------------------- runs


@dataclasses.dataclass
class Run:
  """One training run: its folder, flattened config, metrics rows and evaluation results.

  `eval` maps `eval/<benchmark>/pass@k` (fractions in [0, 1]) and `eval/<field>` to values, from `eval_source`
  (a results.json) at optimizer step `eval_step`; empty when the run has no evaluation."""
  path: str
  name: str
  config: dict
  rows: list
  eval: dict = dataclasses.field(default_factory=dict)
  eval_step: int | None = None
  eval_source: str | None = None
  total_steps: int | None = None
  finished: bool = False

  @property
  def final(self) -> dict:
    """The last row of metrics.jsonl (the metrics of the last logged step)."""
    return self.rows[-1]

  @property
  def step(self) -> int:
    """The last logged optimizer step."""
    return int(self.final["step"])

  def value(self, key: str) -> float | None:
    """`key` of the last metrics row, else of the evaluation results, as a float (nan for a logged "nan");
    None when the run does not have it."""
    if key in self.final and key != "step":
      return _number(self.final[key])
    if key in self.eval:
      return _number(self.eval[key])
    return None

  def series(self, key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of `key` over the metrics rows that have it as a number."""
    steps, values = [], []
    for row in self.rows:
      v = _number(row.get(key))
      if v is not None:
        steps.append(int(row["step"]))
        values.append(v)
    return steps, values


class RunError(ValueError):
  """A run folder that cannot be read; the message names the file."""


def _number(value) -> float | None:
  if isinstance(value, bool) or value is None:
    return None
  if isinstance(value, (int, float)):
    return float(value)
  if isinstance(value, str) and value.strip().lower() in ("nan", "inf", "-inf", "+inf", "infinity", "-infinity"):
    return float(value.strip())
  return None


def flatten_config(config: dict, prefix: str = "") -> dict:
  """{"loss": {"name": "sft"}, "seed": 0} -> {"loss.name": "sft", "seed": 0} (lists kept as they are)."""
  out = {}
  for key, value in config.items():
    if isinstance(value, dict) and value:
      out.update(flatten_config(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def _read_json(path: str):
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
    raise RunError(f"{path}: cannot be read as JSON ({e})") from e


def read_run(path: str, name: str | None = None) -> Run:
  """The run in folder `path` (config.json, metrics.jsonl; the evaluation results in its own folder). RunError,
  naming the file, when config.json or metrics.jsonl is unreadable, empty or torn."""
  path = os.path.abspath(path)
  config = _read_json(os.path.join(path, "config.json"))
  if not isinstance(config, dict):
    raise RunError(f"{os.path.join(path, 'config.json')}: not a JSON object")
  metrics_path = os.path.join(path, "metrics.jsonl")
  try:
    rows = read_metrics(path)
  except (OSError, ValueError) as e:
    raise RunError(f"{metrics_path}: a line is not JSON (torn write?): {e}") from e
  if not rows:
    raise RunError(f"{metrics_path}: empty (the run has logged no step yet)")
  for i, row in enumerate(rows):
    if not isinstance(row, dict) or _number(row.get("step")) is None:
      raise RunError(f"{metrics_path}, row {i + 1}: not a metrics row with a step")
  flat = flatten_config(config)
  total = _number(flat.get("total_steps"))
  total = int(total) if total is not None else None
  run = Run(path=path, name=name or os.path.basename(path), config=flat, rows=rows, total_steps=total)
  run.finished = total is not None and (int(rows[-1]["step"]) >= total or sweeps.is_finished(path, total))
  for step, source, values, kind in _own_evals(path, run.step):
    _attach_eval(run, step, source, values, kind)
  return run


def _eval_values(results: dict) -> dict:
  """{"eval/<benchmark>/pass@k": v, "eval/average/pass@k": v} of a results.json (rankjax.eval.report)."""
  out = {}
  for bench, r in (results.get("benchmarks") or {}).items():
    if isinstance(r, dict):
      out.update({f"eval/{bench}/{k}": v for k, v in r.items() if k.startswith("pass@") and _number(v) is not None})
  for k, v in (results.get("average") or {}).items():
    if k.startswith("pass@") and _number(v) is not None:
      out[f"eval/average/{k}"] = v
  return out


def _is_results(data) -> bool:
  return isinstance(data, dict) and isinstance(data.get("benchmarks"), dict)


def _own_evals(path: str, last_step: int):
  """(step, source, values, kind) of the evaluation results inside the run's folder: the results.json files
  oldest first ("results"), then eval/row.json ("extra")."""
  found = []
  eval_dir = os.path.join(path, "eval")
  if os.path.isdir(eval_dir):
    for entry in os.listdir(eval_dir):
      m = _STEP_DIR.match(entry)
      source = os.path.join(eval_dir, entry, "results.json")
      if m and os.path.isfile(source):
        found.append((int(m.group(1)), source))
  for source in (os.path.join(eval_dir, "results.json"), os.path.join(path, "results.json")):
    if os.path.isfile(source):
      found.append((None, source))
  out = []
  for step, source in found:
    try:
      data = _read_json(source)
    except RunError:
      continue  # a results.json being written; the others (or none) are used
    if not _is_results(data):
      continue
    settings = data.get("settings") or {}
    if step is None:
      step = _number(settings.get("step", settings.get("checkpoint_step")))
      step = int(step) if step is not None else last_step
    out.append((step, source, _eval_values(data), "results"))
  row_path = os.path.join(eval_dir, "row.json")
  if os.path.isfile(row_path):
    try:
      row = _read_json(row_path)
    except RunError:
      row = None
    if isinstance(row, dict):
      extra = {f"eval/{k}": v for k, v in row.items()
               if k != "seed" and not k.startswith("pass@") and _number(v) is not None}
      out.append((last_step, row_path, extra, "extra"))
  out.sort(key=lambda t: (t[3] == "extra", t[0]))  # results oldest first, then the extras
  return out


def _attach_eval(run: Run, step: int, source: str, values: dict, kind: str = "results") -> None:
  """Adds evaluation values to run.eval. kind "results" (pass@k of a results.json): they replace those of an
  earlier step (the latest step wins; on a tie the later call). kind "extra" (eval/row.json): merged."""
  if not values:
    return
  if kind == "extra":
    run.eval.update(values)
    if run.eval_source is None:
      run.eval_step, run.eval_source = step, source
    return
  if run.eval_step is None or step >= run.eval_step or run.eval_source.endswith("row.json"):
    run.eval = {k: v for k, v in run.eval.items() if k.count("/") != 2}
    run.eval.update(values)
    run.eval_step, run.eval_source = step, source


def _warn(message: str) -> None:
  print(f"[report] warning: {message}", file=sys.stderr, flush=True)


def find_run_dirs(dirs) -> list[str]:
  """Every folder under `dirs` (recursively, the dirs included) holding config.json and metrics.jsonl; sorted.
  checkpoints/, tensorboard/ and the like are not searched."""
  found = set()
  for top in dirs:
    for root, subdirs, files in os.walk(top):
      subdirs[:] = sorted(d for d in subdirs if d not in PRUNE)
      if "config.json" in files and "metrics.jsonl" in files:
        found.add(os.path.abspath(root))
  return sorted(found)


def _external_evals(dirs, run_paths: set) -> list[tuple[str, int, str, dict]]:
  """(run path, step, source, values) of results.json files under `dirs` whose settings name a run as their
  checkpoint (standalone `python -m rankjax.evaluate --config.checkpoint=RUN`)."""
  out = []
  for top in dirs:
    for root, subdirs, files in os.walk(top):
      subdirs[:] = sorted(d for d in subdirs if d not in PRUNE)
      if "results.json" not in files:
        continue
      source = os.path.join(root, "results.json")
      try:
        data = _read_json(source)
      except RunError:
        continue
      if not _is_results(data):
        continue
      settings = data.get("settings") or {}
      ckpt = settings.get("checkpoint")
      if not isinstance(ckpt, str) or not ckpt:
        continue
      ckpt = os.path.normpath(os.path.abspath(ckpt))
      if os.path.basename(ckpt) == "checkpoints":
        ckpt = os.path.dirname(ckpt)
      if ckpt in run_paths:
        step = _number(settings.get("checkpoint_step", settings.get("step")))
        out.append((ckpt, int(step) if step is not None else -1, os.path.abspath(source), _eval_values(data)))
  return out


def collect_runs(dirs, on_warning=_warn) -> list[Run]:
  """Every readable run under `dirs` (see `find_run_dirs`), with its evaluation results, sorted by name. A run
  is named by its path relative to the common folder of `dirs`. Unreadable runs and missing dirs are reported
  through `on_warning(message)` (default: printed to stderr) and left out."""
  dirs = [os.path.abspath(d) for d in dirs]
  existing = []
  for d in dirs:
    if os.path.isdir(d):
      existing.append(d)
    else:
      on_warning(f"{d}: no such directory")
  if not existing:
    return []
  common = os.path.commonpath(existing)
  runs = []
  for path in find_run_dirs(existing):
    name = os.path.relpath(path, common)
    if name == ".":
      name = os.path.basename(path)
    try:
      runs.append(read_run(path, name))
    except RunError as e:
      on_warning(f"skipped run {path}: {e}")
  by_path = {r.path: r for r in runs}
  for path, step, source, values in _external_evals(existing, set(by_path)):
    run = by_path[path]
    _attach_eval(run, step if step >= 0 else run.step, source, values)
  return sorted(runs, key=lambda r: r.name)


# -------------------------------------------------------------------------------------------- varying keys


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
  value = run.config.get(key, _MISSING)
  if isinstance(value, str) and value and (os.sep in value or value.startswith("~")):
    full = os.path.normpath(os.path.abspath(os.path.expanduser(value)))
    if full == run.path or full.startswith(run.path + os.sep):
      return "<run>" + full[len(run.path):]
  return _hashable(value)


def varying_keys(runs, ignore=BOOKKEEPING) -> list[str]:
  """The config keys (dotted, sorted) whose values are not the same in every run that has them, seed keys
  included; keys in `ignore` left out (see the module docstring for what counts as the same)."""
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
    v = run.config.get(key, _MISSING)
    if key == "data.shuffle_seed" and v == -1:
      continue
    values[key] = v
  if not values:
    return "-"
  if len({json.dumps(v) for v in values.values()}) == 1:
    return str(next(iter(values.values())))
  return ",".join(f"{k}={v}" for k, v in values.items())


# ------------------------------------------------------------------------------------------------ statistics


def mean_ci(values, confidence: float = 0.95) -> tuple[float, float]:
  """(mean, half-width of the `confidence` Student-t interval) of `values`: t(1 - (1 - confidence)/2, n - 1)
  * sd / sqrt(n), sd with n - 1 degrees of freedom. The half-width is nan for fewer than two values (and the
  mean nan for none); a nan among the values makes both nan."""
  import numpy as np
  from scipy import stats
  x = np.asarray(list(values), np.float64)
  if x.size == 0:
    return float("nan"), float("nan")
  if x.size < 2:
    return float(x[0]), float("nan")
  t = float(stats.t.ppf(1.0 - (1.0 - confidence) / 2.0, x.size - 1))
  return float(x.mean()), float(t * x.std(ddof=1) / math.sqrt(x.size))


@dataclasses.dataclass
class Group:
  """Runs that differ only in seed keys (or share the `--group-by` keys): `values` = {key: value} they share."""
  label: str
  values: dict
  runs: list

  @property
  def n(self) -> int:
    return len(self.runs)


def _sort_value(value):
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    return (0, float(value), "")
  return (1, 0.0, str(value))


def group_runs(runs, by=None, seed_keys=SEED_KEYS, ignore=BOOKKEEPING, group: bool = True) -> list[Group]:
  """Groups of `runs`: by default runs whose varying config keys other than `seed_keys` are equal (so runs
  that differ only in seeds form one group); with `by` (a list of keys) runs equal in those keys; with
  group=False one group per run. Groups are sorted by their values, runs in a group by seed label."""
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
  for key in sorted(buckets, key=lambda t: tuple(_sort_value(v) for v in t)):
    members = sorted(buckets[key], key=lambda r: (_sort_value(_seed_sort(r, seeds)), r.name))
    values = {k: members[0].config.get(k, _MISSING) for k in by}
    label = ", ".join(f"{k}={_cell(v)}" for k, v in values.items()) or "all runs"
    out.append(Group(label, values, members))
  return out


def _seed_sort(run: Run, seed_keys):
  label = seed_label(run, seed_keys)
  try:
    return int(label)
  except ValueError:
    return label


def group_stats(group: Group, metrics) -> dict:
  """{metric: {"mean", "ci95" (half-width; nan for n < 2), "n" (runs with a finite value), "values" (per run,
  None where missing), "nonfinite" (runs whose value is nan/inf)}} over the group's runs."""
  out = {}
  for m in metrics:
    values = [r.value(m) for r in group.runs]
    finite = [v for v in values if v is not None and math.isfinite(v)]
    mean, half = mean_ci(finite)
    out[m] = {"mean": mean, "ci95": half, "n": len(finite), "values": values,
              "nonfinite": sum(v is not None and not math.isfinite(v) for v in values)}
  return out


def available_metrics(runs) -> list[str]:
  """Every numeric key of the runs' last metrics rows and evaluation results (sorted; `step` left out)."""
  keys = set()
  for r in runs:
    keys.update(k for k, v in r.final.items() if k != "step" and _number(v) is not None)
    keys.update(r.eval)
  return sorted(keys)


def default_metrics(runs) -> list[str]:
  """The `DEFAULT_METRICS` that at least one run has."""
  have = set(available_metrics(runs))
  return [m for m in DEFAULT_METRICS if m in have]


# ------------------------------------------------------------------------------------------------ writing


def _cell(value) -> str:
  if isinstance(value, float):
    return f"{value:g}"
  if isinstance(value, (list, tuple)):
    return "(" + ", ".join(_cell(v) for v in value) + ")"
  if value == "":
    return "''"
  return str(value)


def _num(x: float | None, digits: int = 4) -> str:
  if x is None:
    return "-"
  if not math.isfinite(x):
    return str(x)
  return f"{x:.{digits}g}"


def _stat_cell(s: dict) -> str:
  if s["n"] == 0:
    return "-" if not s["nonfinite"] else f"{s['nonfinite']} non-finite"
  text = f"{_num(s['mean'])} ± {_num(s['ci95'], 2)}" if s["n"] > 1 else f"{_num(s['mean'])} (n=1)"
  if s["nonfinite"]:
    text += f" ({s['nonfinite']} non-finite left out)"
  return text


def _table(head, rows) -> list[str]:
  esc = lambda t: str(t).replace("|", "\\|")  # noqa: E731
  return ["| " + " | ".join(esc(h) for h in head) + " |", "|" + "---|" * len(head)] + \
         ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]


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


def build_report(runs, metrics=None, group_by=None, group: bool = True, seed_keys=SEED_KEYS, ignore=BOOKKEEPING,
                 dirs=(), skipped=()) -> Report:
  """The report of `runs` (see `write_report`)."""
  runs = list(runs)
  if not runs:
    raise ValueError("build_report: no runs")
  metrics = list(metrics) if metrics else default_metrics(runs)
  varying = varying_keys(runs, ignore)
  columns = [k for k in varying if not is_seed_key(k, seed_keys)]
  seeds = [k for k in varying if is_seed_key(k, seed_keys)]
  by = list(group_by) if group_by is not None else columns
  groups = group_runs(runs, by=by, seed_keys=seed_keys, ignore=ignore, group=group)
  stats = [group_stats(g, metrics) for g in groups]
  return Report(runs, groups, columns, seeds, by if group else [], bool(group), metrics, stats,
                [os.path.abspath(d) for d in dirs], list(skipped), tuple(ignore))


def _seed_list(group: Group, seed_keys) -> str:
  """The seed labels of the group's runs (`seed_keys`: the varying seed keys, else ["seed"])."""
  return ", ".join(seed_label(r, seed_keys) for r in group.runs)


def markdown(report: Report, title: str = "Report over runs") -> str:
  """report.md: header (dirs, counts, varying keys, seeds, what the intervals mean), the grouped table, the
  per-run table."""
  runs, unfinished = report.runs, [r for r in report.runs if not r.finished]
  all_seeds = sorted({seed_label(r, report.seed_keys) for r in runs}, key=_sort_value)
  lines = [f"# {title}", ""]
  lines.append(f"- Searched: {', '.join(f'`{d}`' for d in report.dirs) or '-'}")
  lines.append(f"- Runs found: {len(runs)} ({len(runs) - len(unfinished)} finished"
               + (f", {len(unfinished)} unfinished: " + ", ".join(f"`{r.name}` (step {r.step}/{r.total_steps})"
                                                                    for r in unfinished) if unfinished else "")
               + ")" + (f"; {len(report.skipped)} warning(s), below" if report.skipped else ""))
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
  head = key_cols + ["n", "seeds", "finished"] + report.metrics
  rows = []
  for g, st in zip(report.groups, report.stats):
    keys = [_cell(g.values[k]) if k in g.values else g.label for k in key_cols]
    done = sum(r.finished for r in g.runs)
    rows.append(keys + [str(g.n), _seed_list(g, report.seed_keys or ["seed"]), f"{done}/{g.n}"]
                + [_stat_cell(st[m]) for m in report.metrics])
  lines += _table(head, rows) + ["", "## Runs", ""]
  head = ["run"] + report.columns + report.seed_keys + ["step", "finished"] + report.metrics
  rows = []
  for g in report.groups:
    for r in g.runs:
      rows.append([r.name] + [_cell(r.config.get(k, _MISSING)) for k in report.columns + report.seed_keys]
                  + [f"{r.step}/{r.total_steps}", "yes" if r.finished else "**no**"]
                  + [_num(r.value(m)) for m in report.metrics])
  lines += _table(head, rows)
  return "\n".join(lines) + "\n"


def _eval_columns(runs) -> list[str]:
  return sorted({k for r in runs for k in r.eval})


def write_csv(report: Report, path: str) -> None:
  """One row per run: name, the varying config keys (seed keys included), step, total_steps, finished, the
  report's metrics, every evaluation value, path."""
  extra = [k for k in _eval_columns(report.runs) if k not in report.metrics]
  head = ["run"] + report.columns + report.seed_keys + ["step", "total_steps", "finished"] + report.metrics + extra \
      + ["path"]
  with open(path, "w", encoding="utf-8", newline="") as f:
    w = csv.writer(f)
    w.writerow(head)
    for r in report.runs:
      values = [r.value(m) for m in report.metrics + extra]
      w.writerow([r.name] + [_cell(r.config.get(k, _MISSING)) for k in report.columns + report.seed_keys]
                 + [r.step, r.total_steps, r.finished] + ["" if v is None else repr(v) for v in values] + [r.path])


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
  """The content of report.json."""
  groups, label_keys = [], report.seed_keys or ["seed"]
  for g, st in zip(report.groups, report.stats):
    groups.append({"label": g.label, "values": g.values, "n": g.n,
                   "seeds": [seed_label(r, label_keys) for r in g.runs], "runs": [r.name for r in g.runs],
                   "finished": sum(r.finished for r in g.runs), "metrics": st})
  runs = [{"name": r.name, "path": r.path, "config": {k: r.config.get(k, _MISSING)
                                                      for k in report.columns + report.seed_keys},
           "seed": seed_label(r, label_keys), "step": r.step, "total_steps": r.total_steps,
           "finished": r.finished, "final": r.final, "eval": r.eval, "eval_step": r.eval_step,
           "eval_source": r.eval_source} for r in report.runs]
  return _clean({"dirs": report.dirs, "varying_keys": report.columns, "seed_keys": report.seed_keys,
                 "group_by": report.group_by, "grouped": report.grouped, "metrics": report.metrics,
                 "ignored_keys": list(report.ignore), "confidence": 0.95, "groups": groups, "runs": runs,
                 "skipped": report.skipped})


def _figure(width: float, height: float, ncols: int):
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=(width, height))
  FigureCanvasAgg(fig)
  return fig, fig.subplots(1, ncols, squeeze=False)[0]


def plot_curves(report: Report, path: str, metrics=CURVE_METRICS) -> None:
  """curves.png: each metric against the optimizer step, one line per group (the mean over its runs at each
  logged step) with a band from the min to the max over its runs."""
  import numpy as np
  metrics = [m for m in metrics if any(r.series(m)[0] for r in report.runs)] or list(metrics[:1])
  fig, axes = _figure(5.5 * len(metrics), 4, len(metrics))
  for ax, m in zip(axes, metrics):
    for g in report.groups:
      by_step: dict = {}
      for r in g.runs:
        for s, v in zip(*r.series(m)):
          if math.isfinite(v):
            by_step.setdefault(s, []).append(v)
      if not by_step:
        continue
      steps = sorted(by_step)
      vals = [np.asarray(by_step[s]) for s in steps]
      line, = ax.plot(steps, [v.mean() for v in vals], label=f"{g.label} (n={g.n})")
      if g.n > 1:
        ax.fill_between(steps, [v.min() for v in vals], [v.max() for v in vals], color=line.get_color(), alpha=0.2)
    ax.set_xlabel("optimizer step")
    ax.set_title(f"{m} ({UNITS[m]})" if m in UNITS else m, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle("mean over each group's runs; band: min to max", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def plot_metrics(report: Report, path: str) -> None:
  """metrics.png: one panel per metric; a bar per group (mean), its 95% t-interval as error bar (none for
  n = 1) and each run's value as a dot."""
  import numpy as np
  metrics = report.metrics or ["loss"]
  fig, axes = _figure(max(4.0, 0.6 * len(report.groups) + 2.5) * len(metrics), 4.5, len(metrics))
  x = np.arange(len(report.groups))
  for ax, m in zip(axes, metrics):
    means = [st[m]["mean"] if m in st else float("nan") for st in report.stats]
    errs = [st[m]["ci95"] if m in st and math.isfinite(st[m]["ci95"]) else 0.0 for st in report.stats]
    ax.bar(x, np.nan_to_num(means), yerr=errs, capsize=4, color="tab:blue", alpha=0.7)
    for i, st in enumerate(report.stats):
      dots = [v for v in (st.get(m, {}).get("values") or []) if v is not None and math.isfinite(v)]
      ax.plot([i] * len(dots), dots, "k.", markersize=4)
    ax.set_xticks(x, [g.label for g in report.groups], rotation=35, ha="right", fontsize=7)
    ax.set_title(f"{m} ({UNITS[m]})" if m in UNITS else m, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
  fig.suptitle("final metrics: mean ± 95% t-interval over seeds; dots: runs", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def write_report(runs, out_dir: str, metrics=None, group_by=None, group: bool = True, seed_keys=SEED_KEYS,
                 ignore=BOOKKEEPING, dirs=(), skipped=(), title: str | None = None) -> dict:
  """Writes report.md, report.csv, report.json, curves.png and metrics.png of `runs` into `out_dir`; returns
  {"md": path, ...} and "report": the Report. `metrics`: names of numeric keys of the last metrics row or of
  the evaluation results (default: `default_metrics`); `group_by`, `group`: see `group_runs`; `skipped`:
  warnings to list in report.md."""
  report = build_report(runs, metrics, group_by, group, seed_keys, ignore, dirs, skipped)
  os.makedirs(out_dir, exist_ok=True)
  paths = {k: os.path.join(out_dir, f) for k, f in (("md", "report.md"), ("csv", "report.csv"),
                                                    ("json", "report.json"), ("curves", "curves.png"),
                                                    ("metrics", "metrics.png"))}
  title = title or f"Report over {len(report.runs)} runs"
  with open(paths["md"], "w", encoding="utf-8") as f:
    f.write(markdown(report, title))
  write_csv(report, paths["csv"])
  with open(paths["json"], "w", encoding="utf-8") as f:
    json.dump(report_dict(report), f, indent=2)
  plot_curves(report, paths["curves"])
  plot_metrics(report, paths["metrics"])
  return {**paths, "report": report}


# -------------------------------------------------------------------------------------------------------- CLI


def _keys(text: str | None) -> list[str] | None:
  return None if text is None else [k.strip() for k in text.split(",") if k.strip()]


def define_flags(flag_values: flags.FlagValues) -> None:
  """Defines the command's flags in `flag_values`; --group-by, --no-group and --seed-keys are aliases."""
  f = flag_values
  flags.DEFINE_string("out", None, "where report.* and the plots go (default: the first DIR)", flag_values=f)
  flags.DEFINE_string("metrics", None, "comma list of metrics (numeric keys of the last metrics row, or "
                      "eval/<benchmark>/pass@k); default: " + ",".join(DEFAULT_METRICS) + " (those present)",
                      flag_values=f)
  flags.DEFINE_string("group_by", None, "comma list of config keys to group by (default: every varying non-seed "
                      "key)", flag_values=f)
  flags.DEFINE_bool("no_group", False, "one group per run (no means over seeds)", flag_values=f)
  flags.DEFINE_string("seed_keys", ",".join(SEED_KEYS), "comma list of config keys that are replicates",
                      flag_values=f)
  flags.DEFINE_string("ignore", ",".join(BOOKKEEPING), "comma list of config keys never compared", flag_values=f)
  flags.DEFINE_string("title", None, "report.md's heading", flag_values=f)
  for alias, name in (("group-by", "group_by"), ("no-group", "no_group"), ("seed-keys", "seed_keys")):
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

  def warn(message):
    skipped.append(message)
    _warn(message)

  runs = collect_runs(args.dirs, on_warning=warn)
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
                       skipped=skipped, title=args.title)
  report = paths["report"]
  unfinished = sum(not r.finished for r in runs)
  print(f"[report] {len(runs)} runs ({unfinished} unfinished, {len(skipped)} warnings) in {len(report.groups)} "
        f"groups; varying: {', '.join(report.columns + report.seed_keys) or 'nothing'}", flush=True)
  print(f"[report] wrote {', '.join(p for k, p in paths.items() if k != 'report')}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
