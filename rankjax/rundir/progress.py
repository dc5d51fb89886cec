"""How far a run has got, read from its folder alone (no CheckpointManager, no JAX): its metrics rows, its
committed checkpoints, and whether it is finished."""

from __future__ import annotations

import json
import os

from rankjax.rundir import layout


def read_metrics(workdir: str) -> list[dict]:
  """All rows of WORKDIR/metrics.jsonl, in file order. OSError when the file is missing, ValueError (a
  JSONDecodeError) when a line is not JSON (e.g. a last line torn by a kill)."""
  with open(layout.metrics_path(workdir), encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def logged_steps(workdir: str) -> list[int]:
  """The `step` of every complete row of WORKDIR/metrics.jsonl ([] when there is none); a torn or non-JSON line,
  or a row without an integer step, is passed over."""
  steps = []
  try:
    with open(layout.metrics_path(workdir), encoding="utf-8") as f:
      for line in f:
        try:
          row = json.loads(line)
        except json.JSONDecodeError:
          continue
        step = row.get("step") if isinstance(row, dict) else None
        if isinstance(step, int) and not isinstance(step, bool):
          steps.append(step)
  except FileNotFoundError:
    return []
  return steps


def committed_steps(path: str) -> list[int]:
  """The steps with a committed (renamed into place) checkpoint, sorted, given a run's workdir or its
  checkpoints/: read from the directory listing alone, so no cross-process barrier (safe when a process is
  dead). A temporary `<step>.orbax-checkpoint-tmp-*` folder is not a committed step."""
  directory = layout.checkpoints_dir(path)
  if not os.path.isdir(directory):
    return []
  return sorted(int(d) for d in os.listdir(directory) if d.isdigit() and os.path.isdir(os.path.join(directory, d)))


def is_finished(workdir: str, total_steps: int) -> bool:
  """True when the run in `workdir` has trained its `total_steps` optimizer steps.

  The training loop itself decides from its checkpoints: relaunched, it trains nothing when the latest committed
  checkpoint's step is >= total_steps (`rankjax.train.loop`; the last step is always checkpointed). So:
  - with any committed checkpoint in WORKDIR/checkpoints/, finished = one of them has step >= total_steps. A
    metrics row of the last step is not enough: the loop logs that step before its checkpoint is committed,
    and a kill in between makes a relaunch train the step again;
  - with none (a folder without checkpoints: copied for analysis, cleaned up, or written by a script), finished
    = metrics.jsonl has a complete row with step >= total_steps.
  """
  total = int(total_steps)
  committed = committed_steps(workdir)
  if committed:
    return committed[-1] >= total
  return any(step >= total for step in logged_steps(workdir))
