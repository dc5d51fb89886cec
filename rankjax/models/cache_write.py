"""Writing new keys/values (or segment ids) into a KV cache at a shared or a per-row slot index."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def write_at(cache: jax.Array, new: jax.Array, index) -> jax.Array:
  """`cache` [B, S, ...] with `new` [B, T, ...] written at slots index.. index + T - 1 of every row.

  `index` is a scalar (all rows) or [B] (row b at index[b]: continuous batching, where each slot holds a sequence
  of its own length). Like `lax.dynamic_update_slice`, an index past S - T is clamped: callers size S so it never is.
  """
  new = new.astype(cache.dtype)
  index = jnp.asarray(index, jnp.int32)
  tail = (0,) * (cache.ndim - 2)
  if index.ndim == 0:
    return jax.lax.dynamic_update_slice(cache, new, (0, index) + tail)
  return jax.vmap(lambda c, n, i: jax.lax.dynamic_update_slice(c, n, (i,) + tail))(cache, new, index)
