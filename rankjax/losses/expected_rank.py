"""The expected rank E[R] = sum_k k p_(k) of a distribution given by logits: exact (sort) or streamed
(a histogram of token counts by log-probability, with a certified interval).

Histogram method: token i falls in bin b = floor((max z - z_i) / delta) (the last bin, below
`range_nats`, takes the whole tail). Bins are disjoint intervals of log p, so a bin's c_b tokens
take exactly the ranks C_b + 1, ..., C_b + c_b of the sorted row (C_b tokens in higher bins), and
each has a probability in (q_b e^-delta, q_b], q_b = p_max e^(-b delta) the bin's upper edge (in
[0, q_b] in the tail bin). Hence
    e^-delta A' <= E[R] <= A,   A = sum_b q_b c_b (C_b + (c_b + 1) / 2)
(A' the same sum without the tail bin): only the counts are needed, no probability masses. The
probabilities also sum to 1, which `expected_rank_from_counts` uses to narrow this interval (exact
on flat and one-hot rows). The estimate is the interval's midpoint, so its relative error is at most
tanh(delta / 2) < (e^delta - 1) / 2 (spec section 2; 0.5% at delta = 0.01 nats); measured errors are
far smaller (benchmarks/README.md). The interval widens for float32 rounding: bin edges by 2^-20,
sums over bins (two-level, at most 64 terms each) by gamma(128), plus `ROUNDING_SLACK`; counts are
exact int32. Cost: one int32 scatter-add per vocabulary entry, no exponential and no sort, then O(K)
per row; counts of vocabulary shards add exactly (psum).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

# Relative widening of the certified interval for float32 rounding of the products and differences in the
# bounds (bin edges and sums over bins are widened separately).
ROUNDING_SLACK = 1e-4
UNIT_ROUNDOFF = 2.0 ** -24  # float32
MAX_VOCAB = 2 ** 24  # counts and ranks are exact float32 integers up to here


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


BLOCK = 64  # bins per block of the two-level sums; K is a multiple of it (no padding)


# Below 2 ln V + TAIL_NATS nats under the max logit no token matters: V tokens of probability at most
# e^-(2 ln V + 16) and rank at most V add at most e^-16 = 1.1e-7 to E[R] >= 1 (and the tail bin bounds them anyway).
TAIL_NATS = 16.0


def effective_range(range_nats: float, vocab_size: int) -> float:
  """The depth (nats below the max logit) the regular bins must cover: `range_nats`, or less where no token
  below can move E[R] by 1.1e-7 relative (fewer bins: the per-row work after the scatter is O(K))."""
  return min(float(range_nats), 2.0 * math.log(max(vocab_size, 2)) + TAIL_NATS)


def num_bins(bin_width: float, range_nats: float, vocab_size: int | None = None) -> int:
  """Histogram bins K: at least ceil(range / width) regular bins plus the tail bin, rounded up to a multiple
  of `BLOCK` (the regular bins then reach slightly deeper); the range is `effective_range` given `vocab_size`."""
  if vocab_size is not None:
    range_nats = effective_range(range_nats, vocab_size)
  return BLOCK * -(-(int(math.ceil(range_nats / bin_width)) + 1) // BLOCK)


def log_prob_histogram(logits: jax.Array, bin_width: float, range_nats: float, row_max: jax.Array | None = None,
                       vocab_size: int | None = None) -> jax.Array:
  """Token counts [..., K] int32 of each row by bin floor((row_max - z) / bin_width), K = `num_bins` (of the
  whole vocabulary's `effective_range`).

  `row_max` defaults to the row's max logit; passing a shared maximum (e.g. the max over vocabulary
  shards) makes the counts of a row's vocabulary pieces summable (psum). `vocab_size` (default: the
  last axis) is the whole row's, checked against `MAX_VOCAB`.
  """
  z = logits.astype(jnp.float32)
  if row_max is None:
    row_max = jnp.max(z, axis=-1)
  lead, v = z.shape[:-1], z.shape[-1]
  vocab_size = v if vocab_size is None else vocab_size
  k = num_bins(bin_width, range_nats, vocab_size)
  if vocab_size > MAX_VOCAB:
    raise ValueError(f"expected_rank='histogram': vocabulary size {vocab_size} (logits {logits.shape}) is above "
                     f"{MAX_VOCAB}, where its counts stay exact; use expected_rank='sort'")
  rows = math.prod(lead)
  # (row_max - z) >= 0, so truncation is the floor; a multiplication, not a division, per entry. NaN or
  # -inf logits land in a clipped bin (int conversion of NaN is clipped too): never out of bounds.
  b = jnp.clip(((row_max[..., None] - z) * (1.0 / bin_width)), 0, k - 1).astype(jnp.int32)
  flat = (jnp.clip(b, 0, k - 1).reshape(rows, v) + (jnp.arange(rows, dtype=jnp.int32) * k)[:, None]).reshape(-1)
  counts = jnp.zeros((rows * k,), jnp.int32).at[flat].add(jnp.ones((), jnp.int32), mode="promise_in_bounds")
  return counts.reshape(lead + (k,))


def _pairwise_sum(x: jax.Array) -> jax.Array:
  """Sum over the last axis in two levels of at most 64 terms (error bound gamma(128), not gamma(K)); the first
  level is a matmul with ones, which XLA:CPU runs faster than a reshaped reduction."""
  k = x.shape[-1]
  n = -(-k // BLOCK)
  if n * BLOCK != k:
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, n * BLOCK - k)])
  x = x.reshape(x.shape[:-1] + (n, BLOCK))
  return jnp.sum(jnp.matmul(x, jnp.ones((BLOCK,), jnp.float32), precision=jax.lax.Precision.HIGHEST), axis=-1)


def prefix_sum(x: jax.Array, block: int = BLOCK) -> jax.Array:
  """Inclusive float32 prefix sums along the last axis, as two levels of matmuls with 0/1 triangular matrices.

  jnp.cumsum over K = 4032 bins cost ~25 us per row on XLA:CPU (more than the rest of the histogram's
  post-processing together); this costs ~3. Each output sums at most `block` + K / `block` terms, so integers
  below 2^24 (counts) are exact (HIGHEST precision: no bfloat16 passes on accelerators).
  """
  k = x.shape[-1]
  n = -(-k // block)
  x = x.astype(jnp.float32)
  if n * block != k:
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, n * block - k)])
  x = x.reshape(x.shape[:-1] + (n, block))
  hi = jax.lax.Precision.HIGHEST
  within = jnp.matmul(x, jnp.triu(jnp.ones((block, block), jnp.float32)), precision=hi)
  before = jnp.matmul(within[..., -1], jnp.triu(jnp.ones((n, n), jnp.float32), 1), precision=hi)
  out = (within + before[..., None]).reshape(x.shape[:-2] + (n * block,))
  return out if n * block == k else out[..., :k]


def _fill(extra, room, first_rank, counts, before, ascending: bool):
  """E[R] contribution of `extra` probability mass [...] poured into slots of at most `room` [..., K] each,
  bin by bin, lowest ranks first (`ascending`) or highest first (`before`: the room of the bins filled
  earlier); a bin's c_b slots hold ranks first_rank + 1 .. first_rank + c_b. A fractional slot is counted as
  k(k +- 1)/2 ranks: a bound in the safe direction."""
  k = jnp.clip((extra[..., None] - before) / jnp.where(room > 0, room, 1.0), 0.0, counts)
  k = jnp.where(room > 0, k, 0.0)
  slots = k * first_rank + k * (k + 1.0) / 2.0 if ascending else k * (first_rank + counts) - k * (k - 1.0) / 2.0
  return _pairwise_sum(room * slots)


def expected_rank_from_counts(counts: jax.Array, log_prob_max: jax.Array, bin_width: float):
  """(estimate, lo, hi) of E[R] from token counts by bin [..., K] and log p_max [...] (nats); lo <= E[R] <= hi.

  Every probability lies in its bin's [e^-delta q_b, q_b] ([0, q_b] in the tail bin) and they sum to 1, and
  bin b holds the ranks after C_b. lo pours the mass left above the lower edges into the best ranks first, hi
  into the worst first (a linear programme solved greedily); both lie within [e^-delta A, A] of the module
  docstring, and the estimate is their midpoint. float32 [...] each.
  """
  k = counts.shape[-1]
  c = counts.astype(jnp.float32)
  above = prefix_sum(c) - c  # C_b, exact (integers below 2^24)
  # Bin edges widened by 2^-20 for the rounding of q_b and of the binning itself.
  q = jnp.exp(log_prob_max[..., None] - jnp.arange(k, dtype=jnp.float32) * bin_width)
  upper = q * (1.0 + 2.0 ** -20)
  lower = jnp.where(jnp.arange(k) == k - 1, 0.0, q * (math.exp(-bin_width) * (1.0 - 2.0 ** -20)))
  gamma = 2.0 * 128 * UNIT_ROUNDOFF
  floor_mass = _pairwise_sum(c * lower)
  floor_e = _pairwise_sum(lower * c * (above + (c + 1.0) / 2.0))
  room = upper - lower
  per_bin = c * room
  through = prefix_sum(per_bin)
  # The mass above the lower edges is 1 - floor_mass; rounded down for lo, up for hi.
  lo = floor_e + _fill(jnp.maximum(1.0 - floor_mass * (1.0 + gamma), 0.0), room, above, c, through - per_bin,
                       ascending=True)
  hi = floor_e + _fill(jnp.maximum(1.0 - floor_mass * (1.0 - gamma), 0.0), room, above, c,
                       through[..., -1:] - through, ascending=False)
  widen = ROUNDING_SLACK + gamma
  return 0.5 * (lo + hi), jnp.maximum(lo * (1.0 - widen), 1.0), hi * (1.0 + widen)


def expected_rank_by_histogram(logits: jax.Array, lse: jax.Array, bin_width: float, range_nats: float):
  """(estimate, lo, hi) of E[R] for each row of `logits` [..., V] with log-normaliser `lse` [...]; see the
  module docstring."""
  z = logits.astype(jnp.float32)
  row_max = jnp.max(z, axis=-1)
  return expected_rank_from_counts(log_prob_histogram(z, bin_width, range_nats, row_max), row_max - lse, bin_width)
