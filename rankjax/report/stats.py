"""Statistics over a group's runs: the mean and 95% Student-t interval of each metric."""

from __future__ import annotations

import math

from rankjax.report.grouping import Group
from rankjax.report.values import number

DEFAULT_METRICS = ("loss", "mean_nll", "mean_weight", "eval/average/pass@1", "eval/greedy_accuracy")


def mean_ci(values, confidence: float = 0.95) -> tuple[float, float]:
  """(mean, half-width of the `confidence` Student-t interval) of `values`: t(1 - (1 - confidence)/2, n - 1)
  * sd / sqrt(n), sd with n - 1 degrees of freedom. The half-width is nan for fewer than two values (and the
  mean nan for none); a nan among the values makes both nan."""
  import numpy as np  # noqa: PLC0415
  from scipy import stats  # noqa: PLC0415
  x = np.asarray(list(values), np.float64)
  if x.size == 0:
    return float("nan"), float("nan")
  if x.size < 2:
    return float(x[0]), float("nan")
  t = float(stats.t.ppf(1.0 - (1.0 - confidence) / 2.0, x.size - 1))
  return float(x.mean()), float(t * x.std(ddof=1) / math.sqrt(x.size))


def group_stats(group: Group, metrics, include_unfinished: bool = False) -> dict:
  """{metric: {"mean", "ci95" (half-width; nan for n < 2), "n" (runs with a finite value), "values" (per counted
  run, None where missing), "nonfinite" (runs whose value is nan/inf)}} over the group's finished runs (all its
  runs with include_unfinished: an unfinished run's value is that of its last logged step)."""
  runs = group.counted(include_unfinished)
  out = {}
  for m in metrics:
    values = [r.value(m) for r in runs]
    finite = [v for v in values if v is not None and math.isfinite(v)]
    mean, half = mean_ci(finite)
    out[m] = {"mean": mean, "ci95": half, "n": len(finite), "values": values,
              "nonfinite": sum(v is not None and not math.isfinite(v) for v in values)}
  return out


def available_metrics(runs) -> list[str]:
  """Every numeric key of the runs' last metrics rows and evaluation results (sorted; `step` left out)."""
  keys = set()
  for r in runs:
    keys.update(k for k, v in r.final.items() if k != "step" and number(v) is not None)
    keys.update(r.eval)
  return sorted(keys)


def default_metrics(runs) -> list[str]:
  """The `DEFAULT_METRICS` that at least one run has."""
  have = set(available_metrics(runs))
  return [m for m in DEFAULT_METRICS if m in have]
