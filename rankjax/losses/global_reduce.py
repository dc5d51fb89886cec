"""Reductions over the global batch: this device's tokens plus, with `axis_name`, every other device's.

`axis_name` is None (single device or plain `jit` over global arrays), a mapped axis
name, or a tuple of names, as bound by `jax.pmap` or `jax.shard_map`.

Gradients across devices (the one statement of the rule; the losses' docstrings point here).
With `axis_name`, every loss of `rankjax.losses` returns the global loss on every device, and
its gradient w.r.t. this device's own inputs (logits, hidden states) is the exact derivative
of the global loss: nothing to sum. A parameter held whole by every device (a replicated LM
head, all weights under data parallelism) gets a per-device partial gradient, and its
gradient is the sum of those over `axis_name`. Who sums it depends on the mapping:

- `jax.shard_map` with the default `check_vma=True`: JAX does (the transpose of using a
  replicated value with device-varying data is a psum). Do not psum again: that multiplies
  the gradient by the number of devices.
- `jax.pmap`, or `jax.shard_map(..., check_vma=False)`: the caller does,
  `jax.lax.psum(grads, axis_name)`.
- `jax.jit` over global (sharded) arrays, `axis_name=None`: nothing to do.
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
