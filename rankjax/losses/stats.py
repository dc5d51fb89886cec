"""Per-position statistics of a predicted distribution against its target token."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import struct

LN2 = math.log(2.0)


@struct.dataclass
class TokenStats:
  """Per-position statistics, each of shape [..., T], float32 unless noted.

  log_prob:      log p_t of the target, in nats (differentiable w.r.t. the logits).
  entropy_bits:  H_t = -sum_i p_i log2 p_i, in bits.
  rank:          R_t = #{i : p_i >= p_t}, 1-indexed, ties count against the target (int32).
  expected_rank: E[R_t] = sum_k k p_(k) with p_(k) the k-th largest probability;
                 None when not requested.
  """

  log_prob: jax.Array
  entropy_bits: jax.Array
  rank: jax.Array
  expected_rank: jax.Array | None = None

  def __getitem__(self, key):
    return getattr(self, key)

  def keys(self):
    return [k for k in ("log_prob", "entropy_bits", "rank", "expected_rank") if self[k] is not None]


def _check_shapes(logits, targets):
  if logits.ndim < 1 or logits.shape[:-1] != targets.shape:
    raise ValueError(
        f"token_stats: logits {logits.shape} must be [..., T, V] and targets {targets.shape} [..., T]")
  if not jnp.issubdtype(targets.dtype, jnp.integer):
    raise TypeError(f"token_stats: targets must be integer token ids, got {targets.dtype}")


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
  """E[R] = sum_k k * p_(k) (p_(k): k-th largest probability) from a sort of each row; [...] float32."""
  ascending = sort_rows(logits)
  probs = jnp.exp(ascending - lse[..., None])
  k_desc = jnp.arange(logits.shape[-1], 0, -1, dtype=jnp.float32)
  return jnp.sum(probs * k_desc, axis=-1)


def token_stats(logits: jax.Array, targets: jax.Array, with_expected_rank: bool = True) -> TokenStats:
  """Computes `TokenStats` of `logits` [..., T, V] against aligned `targets` [..., T].

  Position t scores targets[t] (no shifting). Reductions run in float32 whatever the
  logits' dtype. Only `log_prob` carries a gradient; the other statistics are
  stop-gradient. Target ids outside [0, V) give undefined values: check them on the
  host (see `rankjax.losses.check_targets`).
  """
  _check_shapes(logits, targets)
  z = logits.astype(jnp.float32)
  lse = jax.nn.logsumexp(z, axis=-1)
  z_target = jnp.take_along_axis(z, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  log_prob = z_target - lse

  zs = jax.lax.stop_gradient(z)
  lse_s = jax.lax.stop_gradient(lse)
  log_p = zs - lse_s[..., None]
  p = jnp.exp(log_p)
  entropy_nats = -jnp.sum(jnp.where(p > 0, p * log_p, 0.0), axis=-1)
  rank = jnp.sum(zs >= jax.lax.stop_gradient(z_target)[..., None], axis=-1, dtype=jnp.int32)
  expected_rank = expected_rank_by_sort(zs, lse_s) if with_expected_rank else None
  return TokenStats(log_prob=log_prob, entropy_bits=entropy_nats / LN2, rank=rank, expected_rank=expected_rank)
