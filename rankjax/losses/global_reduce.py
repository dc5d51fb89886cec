"""Reductions over the global batch: this device's tokens plus, with `axis_name`, every other device's.

`axis_name` is None (single device or plain `jit` over global arrays), a mapped axis
name, or a tuple of names, as bound by `jax.pmap` or `jax.shard_map`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def global_sum(x: jax.Array, axis_name=None) -> jax.Array:
  """Sum of all elements of `x` over the global batch (float32 scalar)."""
  total = jnp.sum(x.astype(jnp.float32))
  return total if axis_name is None else jax.lax.psum(total, axis_name)


def global_max(x: jax.Array, axis_name=None) -> jax.Array:
  """Max of all elements over the global batch; not differentiable (callers stop gradients)."""
  local = jnp.max(jax.lax.stop_gradient(x))
  return local if axis_name is None else jax.lax.pmax(local, axis_name)


def global_masked_median(values: jax.Array, mask: jax.Array, axis_name=None) -> jax.Array:
  """Median (numpy's definition) of `values` where `mask` is set, over the global batch.

  Across devices the values and masks are all-gathered (a few bytes per token) and each
  device sorts the full list, so every device gets the identical median. Returns a float32
  scalar, 0 when no element is masked in.
  """
  flat = jax.lax.stop_gradient(values).astype(jnp.float32).reshape(-1)
  keep = mask.reshape(-1) > 0
  if axis_name is not None:
    flat = jax.lax.all_gather(flat, axis_name, tiled=True)
    keep = jax.lax.all_gather(keep, axis_name, tiled=True)
  ordered = jnp.sort(jnp.where(keep, flat, jnp.inf))
  n = jnp.sum(keep, dtype=jnp.int32)
  lo = ordered[jnp.maximum((n - 1) // 2, 0)]
  hi = ordered[jnp.maximum(n // 2, 0)]
  return jnp.where(n > 0, 0.5 * (lo + hi), 0.0)
