"""Token weights w_t of each scheme: pure, elementwise or global-batch functions of the statistics.

Every function here returns stop-gradient float32 weights of the statistics' shape; the
caller masks them. Formulas follow ../shared/spec/ranktuner.md sections 3-5. Which scheme uses which is the
table of `rankjax.losses.registry` (entries in `rankjax.losses.schemes`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import struct

from rankjax.losses import global_reduce
from rankjax.losses.stats import TokenStats


def rank_utility(x: jax.Array) -> jax.Array:
  """f(x) = 1 / log2(x + 1): decreasing in x, f(1) = 1."""
  return jnp.log(2.0) / jnp.log1p(x)


def ranktuner_scale_exact(rank: jax.Array, expected_rank: jax.Array) -> jax.Array:
  """Relative Scale S_t = 1 / I_t = 2^(f(E[R_t]) - f(R_t)), in (1/2, 2)."""
  rank = rank.astype(jnp.float32)
  return jnp.exp2(rank_utility(expected_rank) - rank_utility(rank))


def massey_s(entropy_bits: jax.Array, log_prob_max: jax.Array) -> jax.Array:
  """The bound form's s_t: Massey's 2^(H_t - 2) + 1 where H_t >= 2 bits, else 2 - p_max,t (both lower
  bounds of E[R_t]); float32."""
  massey = jnp.exp2(entropy_bits - 2.0) + 1.0
  return jnp.where(entropy_bits >= 2.0, massey, 2.0 - jnp.exp(log_prob_max))


def ranktuner_log_scale_bound(log_prob: jax.Array, entropy_bits: jax.Array, rank: jax.Array,
                              log_prob_max: jax.Array, floor: float = 1e-6) -> jax.Array:
  """ln S_t of the sort-free surrogate (spec section 3): S_t = max(p_t s_t, floor)^(-K_t), with s_t from
  `massey_s`, xi_t = max(R_t, s_t) and K_t = log2(xi_t + 1)^-2; natural log, computed in log space.

  K_t <= 1 (xi_t >= 1), so S_t <= 1 / floor: the floor is the only cap the form needs.
  """
  s = massey_s(entropy_bits, log_prob_max)
  xi = jnp.maximum(rank.astype(jnp.float32), s)
  k = jnp.log2(xi + 1.0) ** -2
  return -k * jnp.maximum(log_prob + jnp.log(s), math.log(floor))


def ranktuner_log_scale(stats: TokenStats, form: str, bound_floor: float = 1e-6) -> jax.Array:
  """ln S_t, the natural log of RankTuner's Relative Scale under `form` (stop-gradient float32).

  exact: S_t in (1/2, 2), from R_t and E[R_t]. bound: the sort-free surrogate, S_t <= 1 / bound_floor.
  """
  if form == "exact":
    if stats.expected_rank is None:
      raise ValueError("ranktuner form='exact' needs expected_rank in the token statistics")
    return jax.lax.stop_gradient(jnp.log(ranktuner_scale_exact(stats.rank, stats.expected_rank)))
  if stats.log_prob_max is None:
    raise ValueError("ranktuner form='bound' needs log_prob_max in the token statistics")
  log_prob = jax.lax.stop_gradient(stats.log_prob)
  return jax.lax.stop_gradient(
      ranktuner_log_scale_bound(log_prob, stats.entropy_bits, stats.rank, stats.log_prob_max, bound_floor))


def ranktuner_weight(stats: TokenStats, form: str, base: str, bound_floor: float = 1e-6) -> jax.Array:
  """RankTuner weight w_t = b_t * S_t (section 4), stop-gradient, formed in log space (log b + log S).

  exact: S_t in (1/2, 2). bound: S_t <= 1 / bound_floor (1e6 by default), so w_t <= 1e6 with either base.
  """
  log_w = ranktuner_log_scale(stats, form, bound_floor)
  if base == "prob":
    log_w = log_w + jax.lax.stop_gradient(stats.log_prob)
  return jax.lax.stop_gradient(jnp.exp(log_w))


def topk_entropy_nats(logits: jax.Array, k: int) -> jax.Array:
  """Entropy (nats) of the softmax renormalised over the min(k, V) largest logits; [..., T]."""
  k = min(int(k), logits.shape[-1])
  top, _ = jax.lax.top_k(jax.lax.stop_gradient(logits).astype(jnp.float32), k)
  log_q = jax.nn.log_softmax(top, axis=-1)
  q = jnp.exp(log_q)
  return -jnp.sum(q * jnp.where(q > 0, log_q, 0.0), axis=-1)  # 0 log 0 = 0 (e.g. -inf logits)


def eaft_weight(topk_entropy: jax.Array, k: int, alpha: float) -> jax.Array:
  """EAFT weight (H^topK_t / ln K)^alpha from the top-K entropy in nats (K = min(top_k, V)); stop-gradient."""
  return jax.lax.stop_gradient((topk_entropy / math.log(k)) ** alpha)


@struct.dataclass
class TalrContext:
  """TALR's global-batch constants: temperature tau (nats) and log of the mean raw weight."""

  tau: jax.Array
  log_mean_weight: jax.Array


def talr_context(log_prob: jax.Array, mask: jax.Array, min_tau: float, normalize: bool,
                 axis_name=None) -> TalrContext:
  """tau = max(median NLL over the global batch's supervised tokens, min_tau), and the
  log of the global mean of p_t^(1/tau) over supervised tokens (0 if not `normalize`)."""
  log_prob = jax.lax.stop_gradient(log_prob).astype(jnp.float32)
  tau = jnp.maximum(global_reduce.global_masked_median(-log_prob, mask, axis_name), min_tau)
  if not normalize:
    return TalrContext(tau=tau, log_mean_weight=jnp.zeros((), jnp.float32))
  m = mask > 0
  a = jnp.where(m, log_prob / tau, -jnp.inf)
  a_max = global_reduce.global_max(a, axis_name)
  a_max = jnp.where(jnp.isfinite(a_max), a_max, 0.0)
  total = global_reduce.global_sum(jnp.where(m, jnp.exp(a - a_max), 0.0), axis_name)
  count = global_reduce.global_sum(m, axis_name)
  log_mean = jnp.where(count > 0, jnp.log(jnp.maximum(total, 1e-30)) - jnp.log(jnp.maximum(count, 1.0)) + a_max, 0.0)
  return TalrContext(tau=tau, log_mean_weight=log_mean)


def talr_weight(log_prob: jax.Array, context: TalrContext) -> jax.Array:
  """TALR weight p_t^(1/tau) / mean_supervised(p^(1/tau)), stop-gradient."""
  log_prob = jax.lax.stop_gradient(log_prob).astype(jnp.float32)
  return jax.lax.stop_gradient(jnp.exp(log_prob / context.tau - context.log_mean_weight))

