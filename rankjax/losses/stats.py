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
  entropy_bits:  H_t = -sum_i p_i log2 p_i, in bits.
  rank:          R_t = #{i : p_i >= p_t}, 1-indexed, ties count against the target (int32).
  log_prob_max:  log p_max,t, the largest log-probability at the position, in nats (the bound form's
                 low-entropy branch uses p_max); stop-gradient.
  expected_rank: E[R_t] = sum_k k p_(k) with p_(k) the k-th largest probability;
                 None when not requested.
  expected_rank_lo, expected_rank_hi: a certified interval around E[R_t] (equal to it when
                 exact; the histogram method's bounds otherwise); None when not requested.
  """

  log_prob: jax.Array
  entropy_bits: jax.Array
  rank: jax.Array
  expected_rank: jax.Array | None = None
  expected_rank_lo: jax.Array | None = None
  expected_rank_hi: jax.Array | None = None
  log_prob_max: jax.Array | None = None

  def __getitem__(self, key):
    return getattr(self, key)

  def keys(self):
    return [k for k in ("log_prob", "entropy_bits", "rank", "expected_rank", "expected_rank_lo", "expected_rank_hi",
                        "log_prob_max") if self[k] is not None]


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


def token_stats(logits: jax.Array, targets: jax.Array, with_expected_rank: bool = True, expected_rank: str = "sort",
                bin_width: float = 0.01, range_nats: float = 40.0, return_lse: bool = False) -> TokenStats:
  """Computes `TokenStats` of `logits` [..., T, V] against aligned `targets` [..., T].

  `expected_rank`: "sort" (exact) or "histogram" (O(V), certified interval; `bin_width` and
  `range_nats` in nats, see `rankjax.losses.expected_rank`). With `return_lse`, returns
  (stats, log-normaliser [..., T] in nats, stop-gradient).

  Position t scores targets[t] (no shifting). Reductions run in float32 whatever the
  logits' dtype. Only `log_prob` carries a gradient; the other statistics are
  stop-gradient. A target id outside [0, V) gives log_prob NaN, so any loss built on it is
  NaN; it never wraps around (-1 is not V - 1), so the gradient has no target term there and
  the fused path's backward pass agrees. Eager callers can name the bad id with
  `rankjax.losses.check_targets`.
  """
  logits, targets = jnp.asarray(logits), jnp.asarray(targets)
  check_logits_shape(logits, targets)
  z = logits.astype(jnp.float32)
  lse = jax.nn.logsumexp(z, axis=-1)
  v = z.shape[-1]
  targets = targets.astype(jnp.int32)
  z_target = jnp.take_along_axis(z, jnp.clip(targets, 0, v - 1)[..., None], axis=-1)[..., 0]
  z_target = jnp.where(valid_targets(targets, v), z_target, jnp.nan)
  log_prob = z_target - lse

  zs = jax.lax.stop_gradient(z)
  lse_s = jax.lax.stop_gradient(lse)
  log_p = zs - lse_s[..., None]
  p = jnp.exp(log_p)
  entropy_nats = -jnp.sum(jnp.where(p > 0, p * log_p, 0.0), axis=-1)
  rank = jnp.sum(zs >= jax.lax.stop_gradient(z_target)[..., None], axis=-1, dtype=jnp.int32)
  e = lo = hi = None
  if with_expected_rank and expected_rank == "sort":
    e = lo = hi = er.expected_rank_by_sort(zs, lse_s)
  elif with_expected_rank and expected_rank == "histogram":
    e, lo, hi = er.expected_rank_by_histogram(zs, lse_s, bin_width, range_nats)
  elif with_expected_rank:
    raise ValueError(f"token_stats: expected_rank={expected_rank!r} is not 'sort' or 'histogram'")
  stats = TokenStats(log_prob=log_prob, entropy_bits=entropy_nats / LN2, rank=rank, expected_rank=e,
                     expected_rank_lo=lo, expected_rank_hi=hi, log_prob_max=jnp.max(zs, axis=-1) - lse_s)
  return (stats, lse_s) if return_lse else stats
