"""Metrics to WORKDIR/metrics.jsonl (one JSON object per logged step) and TensorBoard event files."""

from __future__ import annotations

import json
import math
import os

import numpy as np


class MetricsWriter:
  """Appends step metrics; on resume from step k, drops lines with step > k so each step appears once."""

  def __init__(self, workdir: str, resume_step: int = 0, tensorboard: bool = True):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._truncate_after(resume_step)
    self._file = open(self.path, "a", encoding="utf-8")
    self._tb = None
    if tensorboard:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def _truncate_after(self, step: int) -> None:
    if not os.path.exists(self.path):
      return
    with open(self.path, encoding="utf-8") as f:
      rows = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= step]
    with open(self.path, "w", encoding="utf-8") as f:
      f.writelines(rows)

  def write(self, step: int, metrics: dict) -> dict:
    """Writes `metrics` (scalars) for `step`; returns the row as written."""
    row = {"step": int(step)}
    for k, v in metrics.items():
      v = float(np.asarray(v))
      row[k] = v if math.isfinite(v) else str(v)
    self._file.write(json.dumps(row) + "\n")
    self._file.flush()
    if self._tb is not None:
      for k, v in row.items():
        if k != "step" and isinstance(v, float):
          self._tb.add_scalar(k, v, step)
      self._tb.flush()
    return row

  def close(self) -> None:
    self._file.close()
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir: str) -> list[dict]:
  """All rows of WORKDIR/metrics.jsonl."""
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]
