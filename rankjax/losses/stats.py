"""Per-position statistics of a predicted distribution against its target token."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import struct

from rankjax.losses import expected_rank as er

LN2 = math.log(2.0)


@struct.dataclass
class TokenStats:
  """Per-position statistics, each of shape [..., T], float32 unless noted.

  log_prob:      log p_t of the target, in nats (differentiable w.r.t. the logits).
  entropy_bits:  H_t = -sum_i p_i log2 p_i, in bits; None when not requested.
  rank:          R_t = #{i : p_i >= p_t}, 1-indexed, ties count against the target (int32); None when not
                 requested.
  log_prob_max:  log p_max,t, the largest log-probability at the position, in nats (the bound form's
                 low-entropy branch uses p_max); stop-gradient.
  expected_rank: E[R_t] = sum_k k p_(k) with p_(k) the k-th largest probability;
                 None when not requested.
  expected_rank_lo, expected_rank_hi: a certified interval around E[R_t] (equal to it when
                 exact; the histogram method's bounds otherwise); None when not requested.
  anchor_kl:     KL(p_anchor || p) = sum_i p_anchor,i (log p_anchor,i - log p_i) at the position, in nats, with
                 p_anchor an anchor model's distribution (ASFT's reference); differentiable w.r.t. the logits
                 (the anchor is constant); None without an anchor.
  """

  log_prob: jax.Array
  entropy_bits: jax.Array | None = None
  rank: jax.Array | None = None
  expected_rank: jax.Array | None = None
  expected_rank_lo: jax.Array | None = None
  expected_rank_hi: jax.Array | None = None
  log_prob_max: jax.Array | None = None
  anchor_kl: jax.Array | None = None

  def __getitem__(self, key):
    return getattr(self, key)

  def keys(self):
    return [k for k in ("log_prob", "entropy_bits", "rank", "expected_rank", "expected_rank_lo", "expected_rank_hi",
                        "log_prob_max", "anchor_kl") if self[k] is not None]


def check_logits_shape(logits, targets, where: str = "token_stats") -> None:
  """Raises ValueError naming both shapes unless logits are [..., T, V] (at least 2-D, V >= 1, at least
  one position) and targets [..., T]; TypeError unless the targets are integers."""
  if logits.ndim < 2:
    raise ValueError(f"{where}: logits {logits.shape} must be at least 2-D, [..., T, V] (targets {targets.shape} "
                     f"[..., T]); a single position is logits[None] with targets[None]")
  if logits.shape[:-1] != targets.shape:
    raise ValueError(f"{where}: logits {logits.shape} must be [..., T, V] and targets {targets.shape} [..., T]")
  if logits.shape[-1] == 0 or targets.size == 0:
    raise ValueError(f"{where}: logits {logits.shape} and targets {targets.shape} hold no token or no vocabulary")
  if not jnp.issubdtype(targets.dtype, jnp.integer):
    raise TypeError(f"{where}: targets must be integer token ids, got {targets.dtype}")


def valid_targets(targets: jax.Array, vocab_size) -> jax.Array:
  """Whether each target id lies in [0, vocab_size) (bool, targets' shape)."""
  return (targets >= 0) & (targets < vocab_size)


@jax.custom_jvp
def _logsumexp_given_value(z: jax.Array, lse: jax.Array) -> jax.Array:
  """`lse` (the log-normaliser of `z`, computed by the caller) with the derivative of logsumexp(z): the
  forward pass costs nothing more, and differentiating gives softmax(z) . dz."""
  return lse


@_logsumexp_given_value.defjvp
def _logsumexp_given_value_jvp(primals, tangents):
  z, lse = primals
  dz, _ = tangents
  return lse, jnp.sum(jnp.exp(z - lse[..., None]) * dz, axis=-1)


def anchor_kl_nats(z: jax.Array, lse: jax.Array, anchor_logits: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(KL(p_anchor || softmax(z)) [...] in nats, the anchor's log-normaliser [...] in nats) per row of `z` [..., V],
  whose log-normaliser is `lse` [...]; `anchor_logits` [..., V] are constant (stop-gradient).

  KL = sum_i p_anchor,i (z_anchor,i - z_i) - lse_anchor + lse: with `lse` differentiable as logsumexp(z), its
  derivative w.r.t. z is softmax(z) - p_anchor. Anchor probabilities that underflow to 0 add 0 (0 log 0 = 0).
  """
  za = jax.lax.stop_gradient(anchor_logits).astype(jnp.float32)
  za_max = jnp.max(za, axis=-1)
  shift = jnp.where(jnp.isfinite(za_max), za_max, 0.0)
  ea = jnp.exp(za - shift[..., None])
  sum_a = jnp.sum(ea, axis=-1)
  lse_a = shift + jnp.log(sum_a)
  pa = ea / sum_a[..., None]
  cross = jnp.sum(jnp.where(pa > 0, pa * (za - z), 0.0), axis=-1)
  return cross - lse_a + lse, lse_a


def token_stats(logits: jax.Array, targets: jax.Array, with_expected_rank: bool = True, expected_rank: str = "sort",
                bin_width: float = 0.01, range_nats: float = 40.0, return_lse: bool = False,
                with_entropy: bool = True, with_rank: bool = True, anchor_logits: jax.Array | None = None) -> TokenStats:
  """Computes `TokenStats` of `logits` [..., T, V] against aligned `targets` [..., T].

  `expected_rank`: "sort" (exact) or "histogram" (O(V), certified interval; `bin_width` and
  `range_nats` in nats, see `rankjax.losses.expected_rank`). `with_entropy`, `with_rank`,
  `with_expected_rank`: whether to compute H_t, R_t, E[R_t] (None otherwise); log p_t and log p_max
  always. `anchor_logits` [..., T, V] (constant): also KL(p_anchor || p) (`anchor_kl`, nats). With `return_lse`,
  returns (stats, log-normaliser [..., T] in nats, stop-gradient).

  Passes over each row's V logits: the max; the sum of e = exp(z - max), which also gives log p_max =
  -log sum(e) for free; with_entropy: sum e (z - max) (H = log sum e - sum e (z - max) / sum e, no second
  exponential); with_rank: a comparison count; E[R]: a histogram scatter (or a sort). The target logit is a
  gather.

  Position t scores targets[t] (no shifting). Reductions run in float32 whatever the
  logits' dtype. Only `log_prob` and `anchor_kl` carry a gradient; the other statistics are
  stop-gradient. A target id outside [0, V) gives log_prob NaN, so any loss built on it is
  NaN; it never wraps around (-1 is not V - 1), so the gradient has no target term there and
  the fused path's backward pass agrees. Eager callers can name the bad id with
  `rankjax.losses.check_targets`.
  """
  logits, targets = jnp.asarray(logits), jnp.asarray(targets)
  check_logits_shape(logits, targets)
  z = logits.astype(jnp.float32)
  v = z.shape[-1]
  targets = targets.astype(jnp.int32)
  zs = jax.lax.stop_gradient(z)
  row_max = jnp.max(zs, axis=-1)
  # An all -inf row has no finite maximum; shifting it by 0 keeps its statistics NaN-free where they can be.
  shift = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
  y = zs - shift[..., None]
  e = jnp.exp(y)  # the only exponential per logit: the normaliser, log p_max and the entropy share it
  log_sum = jnp.log(jnp.sum(e, axis=-1))
  lse_s = shift + log_sum
  lse = _logsumexp_given_value(z, lse_s)
  z_target = jnp.take_along_axis(z, jnp.clip(targets, 0, v - 1)[..., None], axis=-1)[..., 0]
  z_target = jnp.where(valid_targets(targets, v), z_target, jnp.nan)
  log_prob = z_target - lse

  entropy_bits = rank = e_rank = lo = hi = None
  if with_entropy:
    # H = -sum p log p = log sum e - sum e y / sum e; 0 log 0 = 0 for underflowed (or -inf) logits.
    e_y = jnp.sum(jnp.where(e > 0, e * y, 0.0), axis=-1)
    entropy_bits = (log_sum - e_y / jnp.exp(log_sum)) / LN2
  if with_rank:
    rank = jnp.sum(zs >= jax.lax.stop_gradient(z_target)[..., None], axis=-1, dtype=jnp.int32)
  if with_expected_rank and expected_rank == "sort":
    e_rank = lo = hi = er.expected_rank_by_sort(zs, lse_s)
  elif with_expected_rank and expected_rank == "histogram":
    counts = er.log_prob_histogram(zs, bin_width, range_nats, row_max=shift)
    e_rank, lo, hi = er.expected_rank_from_counts(counts, -log_sum, bin_width)
  elif with_expected_rank:
    raise ValueError(f"token_stats: expected_rank={expected_rank!r} is not 'sort' or 'histogram'")
  anchor_kl = None
  if anchor_logits is not None:
    anchor_logits = jnp.asarray(anchor_logits)
    if anchor_logits.shape != logits.shape:
      raise ValueError(f"token_stats: anchor logits {anchor_logits.shape} must be shaped like the logits {logits.shape}")
    anchor_kl = anchor_kl_nats(z, lse, anchor_logits)[0]
  stats = TokenStats(log_prob=log_prob, entropy_bits=entropy_bits, rank=rank, expected_rank=e_rank,
                     expected_rank_lo=lo, expected_rank_hi=hi, log_prob_max=-log_sum, anchor_kl=anchor_kl)
  return (stats, lse_s) if return_lse else stats


# Values standing in for statistics not computed on a step (`padded_stats`): finite, and neutral for the
# weights (R = E[R] = 1 gives RankTuner's exact scale 1).
NEUTRAL = {"entropy_bits": 0.0, "rank": 1, "expected_rank": 1.0, "expected_rank_lo": 1.0, "expected_rank_hi": 1.0}


def padded_stats(stats: TokenStats, options: dict) -> TokenStats:
  """`stats` with every statistic that `token_stats(**options)` returns but `stats` lacks filled with its
  `NEUTRAL` value (shape of log_prob; rank int32), so both have one pytree structure (for `lax.cond`)."""
  wanted = {"entropy_bits": options.get("with_entropy", True), "rank": options.get("with_rank", True)}
  for k in ("expected_rank", "expected_rank_lo", "expected_rank_hi"):
    wanted[k] = options.get("with_expected_rank", True)
  fill = {k: jnp.full(stats.log_prob.shape, NEUTRAL[k], jnp.int32 if k == "rank" else jnp.float32)
          for k, want in wanted.items() if want and stats[k] is None}
  return stats.replace(**fill)
