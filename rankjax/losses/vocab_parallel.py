"""Per-token statistics when the vocabulary is sharded over a mesh axis (inside `jax.shard_map`).

Each device holds the logits of its vocabulary slice, [tokens, V / P], slice p covering ids
[p V/P, (p+1) V/P). Every statistic is a sum or max over the vocabulary, so it is formed from
per-slice partial results with one collective each: the max logit (pmax, no gradient needed; it
also gives log p_max),
the sum of exponentials and the target logit (psum), the entropy's sum e (z - max) (psum), the rank
count R_t (psum), and the token counts by bin of E[R]'s histogram (psum, exact in int32; the bins
are aligned because every slice bins against the same global max). The exact E[R] ("sort") gathers whole rows (a reference).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rankjax.losses import expected_rank as er
from rankjax.losses.stats import LN2, TokenStats, valid_targets


def gather_last_axis(x: jax.Array, axis) -> jax.Array:
  """The slices of all devices on `axis` concatenated along the last dimension, typed as
  replicated over `axis` (a psum of each slice placed at its offset; all_gather's result
  would stay typed as device-varying, and so would every weight computed from it)."""
  n = jax.lax.axis_size(axis)
  width = x.shape[-1]
  placed = jnp.zeros(x.shape[:-1] + (n * width,), x.dtype)
  placed = jax.lax.dynamic_update_slice_in_dim(placed, x, jax.lax.axis_index(axis) * width, axis=x.ndim - 1)
  return jax.lax.psum(placed, axis)


def _vocab_offset(z_local, axis):
  return jax.lax.axis_index(axis) * z_local.shape[-1]


def sharded_token_stats(z_local: jax.Array, targets: jax.Array, axis, with_expected_rank: bool = True,
                        expected_rank: str = "histogram", bin_width: float = 0.01, range_nats: float = 40.0,
                        with_entropy: bool = True, with_rank: bool = True) -> tuple[TokenStats, jax.Array]:
  """(TokenStats, lse) of rows whose logits are split over mesh axis `axis`; values only (no gradient).

  z_local [..., V/P] float32: this device's vocabulary slice; targets [..., T] global ids (an id
  outside [0, V) gives log_prob NaN, as in `token_stats`). The `with_*` flags as in `token_stats`.
  """
  z = jax.lax.stop_gradient(z_local).astype(jnp.float32)
  vl = z.shape[-1]
  m = jax.lax.pmax(jnp.max(z, axis=-1), axis)
  y = z - m[..., None]
  e = jnp.exp(y)
  log_sum = jnp.log(jax.lax.psum(jnp.sum(e, axis=-1), axis))
  lse = m + log_sum
  local = targets - _vocab_offset(z, axis)
  owns = (local >= 0) & (local < vl)
  z_t_local = jnp.take_along_axis(z, jnp.clip(local, 0, vl - 1)[..., None], axis=-1)[..., 0]
  z_t = jax.lax.psum(jnp.where(owns, z_t_local, 0.0), axis)
  z_t = jnp.where(valid_targets(targets, vl * jax.lax.axis_size(axis)), z_t, jnp.nan)
  entropy_bits = rank = e_rank = lo = hi = None
  if with_entropy:
    e_y = jax.lax.psum(jnp.sum(jnp.where(e > 0, e * y, 0.0), axis=-1), axis)
    entropy_bits = (log_sum - e_y / jnp.exp(log_sum)) / LN2
  if with_rank:
    rank = jax.lax.psum(jnp.sum(z >= z_t[..., None], axis=-1, dtype=jnp.int32), axis)
  if with_expected_rank and expected_rank == "histogram":
    counts = er.log_prob_histogram(z, bin_width, range_nats, row_max=m, vocab_size=vl * jax.lax.axis_size(axis))
    e_rank, lo, hi = er.expected_rank_from_counts(jax.lax.psum(counts, axis), -log_sum, bin_width)
  elif with_expected_rank:
    full = gather_last_axis(z, axis)
    e_rank = lo = hi = er.expected_rank_by_sort(full, lse)
  stats = TokenStats(log_prob=z_t - lse, entropy_bits=entropy_bits, rank=rank, expected_rank=e_rank,
                     expected_rank_lo=lo, expected_rank_hi=hi, log_prob_max=-log_sum)
  return stats, lse


def sharded_topk_entropy_nats(z_local: jax.Array, k: int, axis) -> jax.Array:
  """Entropy (nats) of the softmax over the k largest logits of the whole (sharded) row."""
  z = jax.lax.stop_gradient(z_local).astype(jnp.float32)
  top, _ = jax.lax.top_k(z, min(k, z.shape[-1]))
  candidates = gather_last_axis(top, axis)
  best, _ = jax.lax.top_k(candidates, k)
  log_q = jax.nn.log_softmax(best, axis=-1)
  q = jnp.exp(log_q)
  return -jnp.sum(q * jnp.where(q > 0, log_q, 0.0), axis=-1)


def target_onehot(targets: jax.Array, first_id, width: int) -> jax.Array:
  """Boolean [..., width]: whether global id first_id + j is the target."""
  return (jnp.arange(width, dtype=jnp.int32) + first_id)[None, :] == targets[:, None]
