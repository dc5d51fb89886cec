"""The expected rank E[R] = sum_k k p_(k) of a distribution given by logits: exact (sort) or streamed
(histogram of log-probabilities, with a certified interval).

Histogram method: token i falls in bin b = floor((max z - z_i) / delta) (the last bin, below
`range_nats`, takes the whole tail). Bins are disjoint intervals of log p, so a bin's tokens
all outrank the next bin's: with c_b tokens and mass M_b per bin and C_b tokens in higher bins,
E[R] = sum_b (C_b M_b + S_b), where S_b = sum_j j p_(j) over the bin's own sorted tokens is the
only unknown. Probabilities within a bin differ by a factor < e^delta, so
max(M_b, M_b e^-delta (c_b + 1) / 2) <= S_b <= M_b (c_b + 1) / 2 (Chebyshev's sum inequality), and
S_b >= M_b in the tail bin. The estimate is the interval's midpoint, so its relative error is at most
(1 - e^-delta) / 2 < delta / 2 (0.5% at delta = 0.01 nats) plus float32 rounding (below
`ROUNDING_SLACK`); measured errors are far smaller (benchmarks/README.md). Cost: O(V) per token
(scatter-adds), no sort.

Rounding. A float32 scatter-add sums a bin's masses one token at a time: on a near-flat row at
V = 32,000 that lost 3e-4 of the mass, more than the interval allows. So each probability is split
as p = p1 + p2 + r and each part is summed per bin on its own. p1 is p rounded to a multiple of a
power of two g_b chosen per bin so that every partial sum of the bin's p1's is an exact float32
number (below 2^24 g_b); p2 is the rest rounded to a grid 2^(23 - ceil(log2 V)) times finer, whose
sums are exact too; only r, below V 2^-23 g_b per token, is summed with float32 rounding, off by at
most gamma(c_b) sum |r| in any order (gamma(n) = n u / (1 - n u), u = 2^-24). The interval widens by
that bound per bin (below 1e-4 of E[R] for V <= 262,144); `ROUNDING_SLACK` covers the rest
(p = exp(z - lse) in float32, the sums over bins). This holds for V <= 2^22 (larger V is refused),
in the dense, fused and vocabulary-parallel paths (shards' exact sums add exactly).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import struct

# Relative widening of the certified interval for float32 rounding of p = exp(z - lse) and of the
# sums over bins (the bin masses' own summation error is bounded per bin, see the module docstring).
ROUNDING_SLACK = 1e-4
UNIT_ROUNDOFF = 2.0 ** -24  # float32
MAX_VOCAB = 2 ** 22  # the largest V whose bin masses the histogram sums exactly (module docstring)


@struct.dataclass
class LogProbHistogram:
  """Per-bin sums of one row's tokens, [..., K] float32 each; rows of vocabulary shards add up.

  counts: tokens per bin (integers, exact below 2^24).
  masses, mid, remainders: sums of the three parts p1, p2, r of the bin's probabilities (see the
    module docstring); the first two are exact, and M_b = masses + mid + remainders.
  remainder_bound: a bound on sum |r| over the bin's tokens, for the rounding bound.
  """

  counts: jax.Array
  masses: jax.Array
  mid: jax.Array
  remainders: jax.Array
  remainder_bound: jax.Array


def _sortable_int_keys(x: jax.Array) -> jax.Array:
  """int32 keys ordered like the float32 values (an involution: applying it twice gives the bits back).

  XLA:CPU sorts int32 about 6x faster than float32 (measured at [3072, 512]), so rows are
  sorted as these keys and mapped back.
  """
  bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.int32)
  return jnp.where(bits < 0, bits ^ jnp.int32(0x7FFFFFFF), bits)


def sort_rows(x: jax.Array) -> jax.Array:
  """float32 rows of `x` sorted ascending along the last axis (same values as jnp.sort)."""
  keys = jnp.sort(_sortable_int_keys(x), axis=-1)
  return jax.lax.bitcast_convert_type(jnp.where(keys < 0, keys ^ jnp.int32(0x7FFFFFFF), keys), jnp.float32)


def expected_rank_by_sort(logits: jax.Array, lse: jax.Array) -> jax.Array:
  """Exact E[R] = sum_k k * p_(k) from a sort of each row; [...] float32."""
  ascending = sort_rows(logits)
  probs = jnp.exp(ascending - lse[..., None])
  k_desc = jnp.arange(logits.shape[-1], 0, -1, dtype=jnp.float32)
  return jnp.sum(probs * k_desc, axis=-1)


def num_bins(bin_width: float, range_nats: float) -> int:
  """Histogram bins: ceil(range / width) regular bins plus the tail bin."""
  return int(math.ceil(range_nats / bin_width)) + 1


def _grid_exponent(row_max, lse, bins, bin_width: float, vocab_size: int) -> jax.Array:
  """e_b (int32) such that g_b = 2^(e_b - 23) is the grid on which bin b's masses add exactly.

  Bin b holds at most min(1, V p_b) of probability, p_b = exp(row_max - lse - b delta) its largest
  probability. With 2^e >= that bound (a 2% margin for rounding), every partial sum of on-grid
  parts, <= 2^e (1 + V 2^-24), stays below 2^24 g = 2^(e + 1): exact in float32. Any e at least
  that large is valid too, so tokens of one bin rounded to neighbouring e still add exactly.
  """
  log2_bound = math.log2(vocab_size) + ((row_max - lse)[..., None] - bins * bin_width) / math.log(2.0)
  # Below -80 (bins of mass < 1e-24) a coarser grid keeps every power of two used here normal.
  return jnp.clip(jnp.ceil(jnp.minimum(log2_bound, 0.0) + 0.03), -80, 1).astype(jnp.int32)


def _power_of_two(e: jax.Array) -> jax.Array:
  """2^e as float32, exactly, for integer e in [-126, 127] (jnp.ldexp goes through pow)."""
  return jax.lax.bitcast_convert_type((e + 127) << 23, jnp.float32)


def log_prob_histogram(logits: jax.Array, lse: jax.Array, bin_width: float, range_nats: float,
                       row_max: jax.Array | None = None, vocab_size: int | None = None) -> LogProbHistogram:
  """`LogProbHistogram` [..., K] of each row's tokens by bin of (row_max - z) / bin_width.

  Masses are probabilities exp(z - lse). `row_max` defaults to the row's max logit; passing a
  shared maximum (e.g. the max over vocabulary shards) with the whole `vocab_size` (default: the
  last axis of `logits`) makes histograms of a row's vocabulary pieces summable (tree-map a psum).
  """
  k = num_bins(bin_width, range_nats)
  z = logits.astype(jnp.float32)
  if row_max is None:
    row_max = jnp.max(z, axis=-1)
  lead, v = z.shape[:-1], z.shape[-1]
  vocab_size = v if vocab_size is None else vocab_size
  if vocab_size > MAX_VOCAB:
    raise ValueError(f"expected_rank='histogram': vocabulary size {vocab_size} (logits {logits.shape}) is above "
                     f"{MAX_VOCAB}, where its rounding bound holds; use expected_rank='sort'")
  rows = math.prod(lead)
  # The rest p - p1 (|.| <= g / 2) goes on a grid 2^fine times finer: its sum of magnitudes over
  # a bin, < V g, stays below 2^24 times that grid (one bit of margin).
  fine = 23 - math.ceil(math.log2(vocab_size))
  b = jnp.clip(jnp.floor((row_max[..., None] - z) / bin_width), 0, k - 1)
  p = jnp.exp(z - lse[..., None])
  e = _grid_exponent(row_max, lse, b, bin_width, vocab_size)
  # Products by powers of two are exact, and so are both differences (Sterbenz).
  on_grid = jnp.round(p * _power_of_two(23 - e)) * _power_of_two(e - 23)
  rest = p - on_grid
  on_fine_grid = jnp.round(rest * _power_of_two(23 + fine - e)) * _power_of_two(e - 23 - fine)
  flat = (b.astype(jnp.int32).reshape(rows, v) + (jnp.arange(rows, dtype=jnp.int32) * k)[:, None]).reshape(-1)

  def per_bin(x):
    return jnp.zeros((rows * k,), jnp.float32).at[flat].add(x.reshape(-1)).reshape(lead + (k,))

  counts = per_bin(jnp.ones_like(p))
  # |remainder| <= the fine grid / 2 per token; a factor 2 of margin over per-token rounding of e.
  fine_grid = _power_of_two(_grid_exponent(row_max, lse, jnp.arange(k, dtype=jnp.float32), bin_width, vocab_size)
                            - 23 - fine)
  return LogProbHistogram(counts=counts, masses=per_bin(on_grid), mid=per_bin(on_fine_grid),
                          remainders=per_bin(rest - on_fine_grid), remainder_bound=counts * fine_grid)


def _bounds(counts, masses, bin_width: float):
  """(lo, hi) of E[R] for exact bin masses (see the module docstring); increasing in every mass."""
  before = jnp.cumsum(counts, axis=-1) - counts
  base = jnp.sum(before * masses, axis=-1)
  upper = masses * (counts + 1.0) / 2.0
  is_tail = jnp.arange(counts.shape[-1]) == counts.shape[-1] - 1
  at_least_m = masses * jnp.minimum(counts, 1.0)  # S_b >= M_b: every rank is >= 1
  lower = jnp.where(is_tail, at_least_m, jnp.maximum(at_least_m, upper * math.exp(-bin_width)))
  return base + jnp.sum(lower, axis=-1), base + jnp.sum(upper, axis=-1)


def expected_rank_from_histogram(histogram: LogProbHistogram, bin_width: float):
  """(estimate, lo, hi) of E[R] from a log-probability histogram [..., K]; lo <= E[R] <= hi."""
  # Without the barrier XLA rewrites scatter(a) + scatter(b) (and psum(a) + psum(b)) as one
  # scatter (psum) of a + b: the plain float32 sum this module avoids.
  histogram = jax.lax.optimization_barrier(histogram)
  counts = histogram.counts
  masses = (histogram.masses + histogram.mid) + histogram.remainders
  gamma = counts * UNIT_ROUNDOFF / jnp.maximum(1.0 - counts * UNIT_ROUNDOFF, 0.5)
  # The remainders' summation error, plus the two roundings of adding the parts; 1.01 covers
  # the rounding of this bound itself.
  error = 1.01 * (gamma * histogram.remainder_bound + 2 * UNIT_ROUNDOFF * masses)
  lo, _ = _bounds(counts, jnp.maximum(masses - error, 0.0), bin_width)
  _, hi = _bounds(counts, masses + error, bin_width)
  estimate = 0.5 * sum(_bounds(counts, masses, bin_width))
  return estimate, jnp.maximum(lo * (1 - ROUNDING_SLACK), 1.0), hi * (1 + ROUNDING_SLACK)


def expected_rank_by_histogram(logits: jax.Array, lse: jax.Array, bin_width: float, range_nats: float):
  """(estimate, lo, hi) of E[R] for each row of `logits` [..., V]; see the module docstring."""
  return expected_rank_from_histogram(log_prob_histogram(logits, lse, bin_width, range_nats), bin_width)
