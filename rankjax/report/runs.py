"""Reading runs: a run folder (config.json, metrics.jsonl, evaluation results) as a `Run`, and every run under
some folders."""

from __future__ import annotations

import dataclasses
import os
import sys

from rankjax.report import evals
from rankjax.report.values import RunError, number, read_json
from rankjax.rundir import layout, progress


@dataclasses.dataclass
class Run:
  """One training run: its folder, flattened config, metrics rows and evaluation results.

  `eval` maps `eval/<benchmark>/pass@k` (fractions in [0, 1]) and `eval/<field>` to values, from `eval_source`
  (a results.json) at optimizer step `eval_step`; empty when the run has no evaluation. `finished`: see
  `rankjax.rundir.progress.is_finished` (False when config.json has no total_steps)."""
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

  @property
  def unfinished_reason(self) -> str:
    """Why the run is not finished ("" when it is): how far it got, or that its config names no total_steps."""
    if self.finished:
      return ""
    if self.total_steps is None:
      return "unfinished: config.json has no total_steps"
    return f"unfinished: step {self.step}/{self.total_steps}"

  def value(self, key: str) -> float | None:
    """`key` of the last metrics row, else of the evaluation results, as a float (nan for a logged "nan");
    None when the run does not have it."""
    if key in self.final and key != "step":
      return number(self.final[key])
    if key in self.eval:
      return number(self.eval[key])
    return None

  def series(self, key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of `key` over the metrics rows that have it as a number."""
    steps, values = [], []
    for row in self.rows:
      v = number(row.get(key))
      if v is not None:
        steps.append(int(row["step"]))
        values.append(v)
    return steps, values


def flatten_config(config: dict, prefix: str = "") -> dict:
  """{"loss": {"name": "sft"}, "seed": 0} -> {"loss.name": "sft", "seed": 0} (lists kept as they are)."""
  out = {}
  for key, value in config.items():
    if isinstance(value, dict) and value:
      out.update(flatten_config(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def read_run(path: str, name: str | None = None) -> Run:
  """The run in folder `path` (config.json, metrics.jsonl; the evaluation results in its own folder). RunError,
  naming the file, when config.json or metrics.jsonl is unreadable, empty or torn."""
  path = os.path.abspath(path)
  config_path, metrics_path = layout.config_path(path), layout.metrics_path(path)
  config = read_json(config_path)
  if not isinstance(config, dict):
    raise RunError(f"{config_path}: not a JSON object")
  try:
    rows = progress.read_metrics(path)
  except (OSError, ValueError) as e:
    raise RunError(f"{metrics_path}: a line is not JSON (torn write?): {e}") from e
  if not rows:
    raise RunError(f"{metrics_path}: empty (the run has logged no step yet)")
  for i, row in enumerate(rows):
    if not isinstance(row, dict) or number(row.get("step")) is None:
      raise RunError(f"{metrics_path}, row {i + 1}: not a metrics row with a step")
  flat = flatten_config(config)
  total = number(flat.get("total_steps"))
  total = int(total) if total is not None else None
  run = Run(path=path, name=name or os.path.basename(path), config=flat, rows=rows, total_steps=total)
  run.finished = total is not None and progress.is_finished(path, total)
  for step, source, values, kind in evals.own_evals(path, run.step):
    evals.attach_eval(run, step, source, values, kind)
  return run


def warn(message: str) -> None:
  """Prints a report warning to stderr."""
  print(f"[report] warning: {message}", file=sys.stderr, flush=True)


def find_run_dirs(dirs) -> list[str]:
  """Every folder under `dirs` (recursively, the dirs included) holding config.json and metrics.jsonl; sorted.
  checkpoints/, tensorboard/ and the like are not searched."""
  found = set()
  for top in dirs:
    for root, subdirs, files in os.walk(top):
      subdirs[:] = sorted(d for d in subdirs if d not in evals.PRUNE)
      if layout.CONFIG_FILE in files and layout.METRICS_FILE in files:
        found.add(os.path.abspath(root))
  return sorted(found)


def collect_runs(dirs, on_warning=warn) -> list[Run]:
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
  for path, step, source, values in evals.external_evals(existing, set(by_path)):
    run = by_path[path]
    evals.attach_eval(run, step if step >= 0 else run.step, source, values)
  return sorted(runs, key=lambda r: r.name)
