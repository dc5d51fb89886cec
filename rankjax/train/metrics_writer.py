"""Metrics to WORKDIR/metrics.jsonl (one JSON object per logged step) and TensorBoard event files."""

from __future__ import annotations

import json
import math
import os

import numpy as np

from rankjax.rundir import atomic, layout
from rankjax.rundir.progress import read_metrics  # noqa: F401 (re-exported: its users import it from here)


def _import_summary_writer():
  """tensorboardX's SummaryWriter, imported without torch: tensorboardX imports torch when it is installed (2.4 s
  of every launch, for torch.Tensor support that scalars do not need). A later `import torch` still works."""
  import sys  # noqa: PLC0415
  blocked = "torch" not in sys.modules
  if blocked:
    sys.modules["torch"] = None  # makes `import torch` raise ImportError, which tensorboardX handles
  try:
    from tensorboardX import SummaryWriter  # noqa: PLC0415
  finally:
    if blocked:
      del sys.modules["torch"]
  return SummaryWriter


class MetricsWriter:
  """Appends step metrics; on resume from step k, drops lines with step > k so each step appears once."""

  def __init__(self, workdir: str, resume_step: int = 0, tensorboard: bool = True):
    self.path = layout.metrics_path(workdir)
    self._truncate_after(resume_step)
    self._file = open(self.path, "a", encoding="utf-8")
    self._tb = None
    if tensorboard:
      SummaryWriter = _import_summary_writer()
      self._tb = SummaryWriter(layout.tensorboard_dir(workdir))

  def _truncate_after(self, step: int) -> None:
    """Keeps the rows of steps <= `step`; a last line cut short by a kill is dropped. The file is replaced by
    rename, so a kill here loses nothing."""
    if not os.path.exists(self.path):
      return
    with open(self.path, encoding="utf-8", errors="replace") as f:
      lines = [line for line in f if line.strip()]
    rows = []
    for i, line in enumerate(lines):
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        if i == len(lines) - 1:  # a torn final write
          break
        raise ValueError(f"{self.path}, line {i + 1}: not a JSON object ({e}); move the file aside to resume") from e
      if row.get("step", 0) <= step:
        rows.append(line if line.endswith("\n") else line + "\n")
    atomic.write_lines(self.path, rows)

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

  def write_histograms(self, step: int, histograms: dict) -> None:
    """Writes the "hist/<statistic>/..." arrays of a step (`rankjax.losses.token_histograms`) to TensorBoard as
    histograms named "<statistic>", over the bins from the first to the last non-empty one."""
    if self._tb is None:
      return
    from rankjax.losses import token_histograms  # noqa: PLC0415 (imports JAX; read_metrics users need not)
    for name in token_histograms.names_in(histograms):
      counts = np.asarray(histograms[token_histograms.key(name, "counts")], np.float64)
      nonzero = np.flatnonzero(counts)
      if nonzero.size == 0:
        continue
      first, last = nonzero[0], nonzero[-1] + 1
      part = lambda p: float(np.asarray(histograms[token_histograms.key(name, p)]))  # noqa: E731
      self._tb.add_histogram_raw(
          f"tokens/{name}", min=part("min"), max=part("max"), num=int(counts.sum()), sum=part("sum"),
          sum_squares=part("sum_sq"), bucket_limits=token_histograms.GRIDS[name].edges()[1:][first:last].tolist(),
          bucket_counts=counts[first:last].tolist(), global_step=step)
    self._tb.flush()

  def close(self) -> None:
    self._file.close()
    if self._tb is not None:
      self._tb.close()

