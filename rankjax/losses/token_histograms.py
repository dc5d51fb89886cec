"""Fixed-bin histograms and quantiles of per-token statistics over the supervised tokens of a global batch.

Each statistic is binned on a fixed grid (the same at every step, so steps and runs compare) in a linear or
log2 space, together with its exact count, min, max, sum and sum of squares: five reductions that add (or
min/max) across micro-steps and devices, so gradient accumulation and sharding give the histogram of the whole
global batch. Quantiles come from the summed counts: linear interpolation inside the bin, clamped to the exact
[min, max]; they are accurate to one bin width (in the grid's space: 0.05 in log2, i.e. 3.5% relative, for the
log-scaled statistics).

Nothing here leaves the device per token: a histogram is O(bins) whatever the batch.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from rankjax.losses import global_reduce

PREFIX = "hist/"
PARTS = ("counts", "min", "max", "sum", "sum_sq")
QUANTILES = (0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99)


@dataclasses.dataclass(frozen=True)
class Grid:
  """Bins of equal width over [lo, hi] of f(value), f = identity ("linear") or log2 ("log2"); values outside
  fall in the first or last bin (their exact min and max are kept separately)."""

  scale: str
  lo: float
  hi: float
  bins: int

  def transform(self, x):
    x = x.astype(jnp.float32)
    return x if self.scale == "linear" else jnp.log2(jnp.maximum(x, jnp.finfo(jnp.float32).tiny))

  def inverse(self, y):
    return y if self.scale == "linear" else np.exp2(y)

  def edges(self) -> np.ndarray:
    """The bins' limits in the statistic's own units, [bins + 1] (float64)."""
    return self.inverse(np.linspace(self.lo, self.hi, self.bins + 1))


# What each histogram shows, and its grid. weight: w_t of the run's scheme (0 off the mask is not counted);
# prob: p_t; entropy_bits: H_t (bits); rank: R_t; expected_rank: E[R_t]; relative_scale: RankTuner's S_t;
# anchor_kl: KL(p_anchor || p) in nats (asft).
GRIDS = {
    "weight": Grid("log2", -30.0, 20.0, 1000),
    "prob": Grid("linear", 0.0, 1.0, 200),
    "entropy_bits": Grid("linear", 0.0, 24.0, 480),
    "rank": Grid("log2", 0.0, 24.0, 480),
    "expected_rank": Grid("log2", 0.0, 24.0, 480),
    "relative_scale": Grid("log2", -24.0, 24.0, 960),
    "anchor_kl": Grid("log2", -30.0, 6.0, 720),
}


def key(name: str, part: str) -> str:
  """The aux key of one part of a histogram, e.g. "hist/weight/counts"."""
  return f"{PREFIX}{name}/{part}"


def is_histogram_key(k: str) -> bool:
  return k.startswith(PREFIX)


def token_histogram(name: str, values: jax.Array, mask: jax.Array, axis_name=None) -> dict:
  """{key(name, part): ...} of `values` [..., T] at positions where mask > 0, over the global batch: counts
  [bins] (float32), and min, max, sum, sum_sq (float32 scalars; min = +inf and max = -inf without tokens).
  Stop-gradient."""
  grid = GRIDS[name]
  values = jax.lax.stop_gradient(values).astype(jnp.float32)
  m = mask > 0
  width = (grid.hi - grid.lo) / grid.bins
  index = jnp.clip(jnp.floor((grid.transform(values) - grid.lo) / width), 0, grid.bins - 1).astype(jnp.int32)
  counts = jnp.zeros((grid.bins,), jnp.float32).at[index.reshape(-1)].add(m.reshape(-1).astype(jnp.float32))
  if axis_name is not None:
    counts = jax.lax.psum(counts, axis_name)
  inf = jnp.float32(jnp.inf)
  return {
      key(name, "counts"): counts,
      key(name, "min"): -global_reduce.global_max(jnp.where(m, -values, -inf), axis_name),
      key(name, "max"): global_reduce.global_max(jnp.where(m, values, -inf), axis_name),
      key(name, "sum"): global_reduce.global_sum(jnp.where(m, values, 0.0), axis_name),
      key(name, "sum_sq"): global_reduce.global_sum(jnp.where(m, values * values, 0.0), axis_name),
  }


def combine(k: str, total: jax.Array, more: jax.Array) -> jax.Array:
  """Combines one histogram part of two disjoint token sets (micro-steps): min, max, or sum."""
  if k.endswith("/min"):
    return jnp.minimum(total, more)
  if k.endswith("/max"):
    return jnp.maximum(total, more)
  return total + more


def names_in(aux: dict) -> list[str]:
  """The statistics that have a histogram in `aux`, in GRIDS order."""
  return [n for n in GRIDS if key(n, "counts") in aux]


def quantiles(counts, lo, hi, grid: Grid, qs=QUANTILES):
  """The `qs` quantiles of the binned values (jnp or numpy arrays alike); NaN without tokens. Units: the
  statistic's own.

  Linear interpolation (in the grid's space) inside the bin that holds the quantile, over that bin's part of
  the exact [lo, hi] (min and max): a batch whose values all share one bin still gets quantiles between its
  min and max.
  """
  xp = jnp if isinstance(counts, jax.Array) else np
  counts = xp.asarray(counts, xp.float32)
  total = xp.sum(counts)
  cum = xp.cumsum(counts)
  width = (grid.hi - grid.lo) / grid.bins
  if grid.scale == "log2":
    tiny = float(np.finfo(np.float32).tiny)
    lo_t, hi_t = xp.log2(xp.maximum(lo, tiny)), xp.log2(xp.maximum(hi, tiny))
  else:
    lo_t, hi_t = lo, hi
  out = []
  for q in qs:
    target = q * total
    i = xp.clip(xp.searchsorted(cum, target, side="left"), 0, grid.bins - 1)
    before = xp.where(i > 0, cum[xp.maximum(i - 1, 0)], 0.0)
    frac = xp.clip((target - before) / xp.maximum(counts[i], 1e-30), 0.0, 1.0)
    left = xp.where(i == 0, lo_t, xp.maximum(grid.lo + i * width, lo_t))  # bin 0 also holds values below grid.lo
    right = xp.where(i == grid.bins - 1, hi_t, xp.minimum(grid.lo + (i + 1) * width, hi_t))
    right = xp.maximum(right, left)
    y = left + frac * (right - left)
    value = xp.exp2(y) if grid.scale == "log2" else y
    value = xp.clip(value, lo, hi)
    out.append(xp.where(total > 0, value, xp.nan))
  return out


def quantile_metrics(aux: dict, qs=QUANTILES) -> dict:
  """Scalars for metrics.jsonl from the histograms in `aux`: "<name>/q50" (and the other `qs`, named by
  percent), "<name>/min", "<name>/max", "<name>/mean" (NaN without tokens)."""
  out = {}
  for name in names_in(aux):
    counts, lo, hi = aux[key(name, "counts")], aux[key(name, "min")], aux[key(name, "max")]
    for q, v in zip(qs, quantiles(counts, lo, hi, GRIDS[name], qs)):
      out[f"{name}/q{round(q * 100):02d}"] = v
    xp = jnp if isinstance(counts, jax.Array) else np
    n = counts.sum()
    out[f"{name}/min"] = lo
    out[f"{name}/max"] = hi
    out[f"{name}/mean"] = xp.where(n > 0, aux[key(name, "sum")] / xp.maximum(n, 1.0), xp.nan)
  return out


def split_histograms(metrics: dict) -> tuple[dict, dict]:
  """(scalars, histograms): `metrics` without and with the "hist/" keys."""
  hist = {k: v for k, v in metrics.items() if is_histogram_key(k)}
  return {k: v for k, v in metrics.items() if not is_histogram_key(k)}, hist
