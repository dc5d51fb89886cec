"""A run's evaluation results: the periodic evaluation in its own folder (WORKDIR/eval/step_<N>/results.json),
WORKDIR/eval/results.json or WORKDIR/results.json, a script's WORKDIR/eval/row.json, and standalone evaluations
elsewhere whose settings name the run as their checkpoint. Values are fractions in [0, 1]."""

from __future__ import annotations

import os

from rankjax.report.values import RunError, number, read_json
from rankjax.rundir import layout

# Folders never searched for runs or results: a run's own bulky subfolders, caches, environments.
PRUNE = frozenset({layout.CHECKPOINTS_DIR, layout.TENSORBOARD_DIR, "tfds", "hf", ".git", "__pycache__", ".venv",
                   ".ipynb_checkpoints"})
RESULTS_FILE = "results.json"


def eval_values(results: dict) -> dict:
  """{"eval/<benchmark>/pass@k": v, "eval/average/pass@k": v} of a results.json (rankjax.eval.report)."""
  out = {}
  for bench, r in (results.get("benchmarks") or {}).items():
    if isinstance(r, dict):
      out.update({f"eval/{bench}/{k}": v for k, v in r.items() if k.startswith("pass@") and number(v) is not None})
  for k, v in (results.get("average") or {}).items():
    if k.startswith("pass@") and number(v) is not None:
      out[f"eval/average/{k}"] = v
  return out


def is_results(data) -> bool:
  """True when `data` (a parsed JSON file) is an evaluation's results.json."""
  return isinstance(data, dict) and isinstance(data.get("benchmarks"), dict)


def own_evals(path: str, last_step: int) -> list[tuple[int, str, dict, str]]:
  """(step, source, values, kind) of the evaluation results inside the run folder `path`: the results.json files
  oldest first (kind "results"), then eval/row.json (kind "extra"). A file being written is passed over."""
  found = []
  eval_dir = layout.eval_dir(path)
  if os.path.isdir(eval_dir):
    for entry in os.listdir(eval_dir):
      step = layout.eval_step_of(entry)
      source = os.path.join(eval_dir, entry, RESULTS_FILE)
      if step is not None and os.path.isfile(source):
        found.append((step, source))
  for source in (os.path.join(eval_dir, RESULTS_FILE), os.path.join(path, RESULTS_FILE)):
    if os.path.isfile(source):
      found.append((None, source))
  out = []
  for step, source in found:
    try:
      data = read_json(source)
    except RunError:
      continue  # a results.json being written; the others (or none) are used
    if not is_results(data):
      continue
    settings = data.get("settings") or {}
    if step is None:
      step = number(settings.get("step", settings.get("checkpoint_step")))
      step = int(step) if step is not None else last_step
    out.append((step, source, eval_values(data), "results"))
  row_path = layout.eval_row_path(path)
  if os.path.isfile(row_path):
    try:
      row = read_json(row_path)
    except RunError:
      row = None
    if isinstance(row, dict):
      extra = {f"eval/{k}": v for k, v in row.items()
               if k != "seed" and not k.startswith("pass@") and number(v) is not None}
      out.append((last_step, row_path, extra, "extra"))
  out.sort(key=lambda t: (t[3] == "extra", t[0]))  # results oldest first, then the extras
  return out


def attach_eval(run, step: int, source: str, values: dict, kind: str = "results") -> None:
  """Adds evaluation values to `run.eval` (a `runs.Run`). kind "results" (pass@k of a results.json): they replace
  those of an earlier step (the latest step wins; on a tie the later call). kind "extra" (eval/row.json):
  merged."""
  if not values:
    return
  if kind == "extra":
    run.eval.update(values)
    if run.eval_source is None:
      run.eval_step, run.eval_source = step, source
    return
  if run.eval_step is None or step >= run.eval_step or run.eval_source.endswith(layout.EVAL_ROW_FILE):
    run.eval = {k: v for k, v in run.eval.items() if k.count("/") != 2}
    run.eval.update(values)
    run.eval_step, run.eval_source = step, source


def external_evals(dirs, run_paths: set) -> list[tuple[str, int, str, dict]]:
  """(run path, step, source, values) of results.json files under `dirs` whose settings name a run (a path in
  `run_paths`) as their checkpoint (standalone `python -m rankjax.evaluate --config.checkpoint=RUN`); step -1
  when the settings name none."""
  out = []
  for top in dirs:
    for root, subdirs, files in os.walk(top):
      subdirs[:] = sorted(d for d in subdirs if d not in PRUNE)
      if RESULTS_FILE not in files:
        continue
      source = os.path.join(root, RESULTS_FILE)
      try:
        data = read_json(source)
      except RunError:
        continue
      if not is_results(data):
        continue
      settings = data.get("settings") or {}
      ckpt = settings.get("checkpoint")
      if not isinstance(ckpt, str) or not ckpt:
        continue
      ckpt = layout.workdir_of(os.path.abspath(ckpt))
      if ckpt in run_paths:
        step = number(settings.get("checkpoint_step", settings.get("step")))
        out.append((ckpt, int(step) if step is not None else -1, os.path.abspath(source), eval_values(data)))
  return out
