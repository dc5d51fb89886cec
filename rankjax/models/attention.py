"""Grouped-query self-attention with rotary embeddings."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from rankjax.models.rope import apply_rotary

# A large finite negative (not -inf) so a fully masked padding row gives a uniform
# softmax instead of NaN; padding rows never reach the loss.
MASK_VALUE = -1e30


class Attention(nn.Module):
  """Causal GQA: `num_heads` query heads share `num_kv_heads` key/value heads."""

  num_heads: int
  num_kv_heads: int
  head_dim: int
  qkv_bias: bool = False
  init_std: float = 0.02
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  def _proj(self, name, x, heads, axes):
    kernel = self.param(name, nn.with_logical_partitioning(nn.initializers.normal(self.init_std), axes),
                        (x.shape[-1], heads, self.head_dim), self.param_dtype)
    y = jnp.einsum("btd,dhk->bthk", x, kernel.astype(self.dtype))
    if self.qkv_bias:
      bias = self.param(name + "_bias", nn.with_logical_partitioning(nn.initializers.zeros, axes[1:]),
                        (heads, self.head_dim), self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y

  @nn.compact
  def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, mask: jax.Array, kv_cache=None):
    """x [B, T, D], cos/sin [B, T, head_dim], mask bool [B, 1, T, S] -> [B, T, D].

    With `kv_cache` = (k, v, index), k/v [B, S, kv_heads, head_dim]: this call's keys and
    values are written at slots index.. index + T - 1, queries attend over all S slots
    (the mask decides which), and the result is (out, (k, v)) with the updated cache.
    """
    b, t, d = x.shape
    x = x.astype(self.dtype)
    q = apply_rotary(self._proj("q", x, self.num_heads, ("embed", "heads", "kv")), cos, sin)
    k = apply_rotary(self._proj("k", x, self.num_kv_heads, ("embed", "kv_heads", "kv")), cos, sin)
    v = self._proj("v", x, self.num_kv_heads, ("embed", "kv_heads", "kv"))
    if kv_cache is not None:
      cache_k, cache_v, index = kv_cache
      k = jax.lax.dynamic_update_slice(cache_k, k.astype(cache_k.dtype), (0, index, 0, 0))
      v = jax.lax.dynamic_update_slice(cache_v, v.astype(cache_v.dtype), (0, index, 0, 0))
      new_cache = (k, v)

    groups = self.num_heads // self.num_kv_heads
    q = q.reshape(b, t, self.num_kv_heads, groups, self.head_dim)
    scores = jnp.einsum("btngk,bsnk->bngts", q, k, preferred_element_type=jnp.float32)
    scores = scores / jnp.sqrt(jnp.float32(self.head_dim))
    scores = jnp.where(mask[:, :, None], scores, MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
    out = jnp.einsum("bngts,bsnk->btngk", probs, v.astype(self.dtype)).reshape(b, t, self.num_heads, self.head_dim)

    wo = self.param("o", nn.with_logical_partitioning(nn.initializers.normal(self.init_std), ("heads", "kv", "embed")),
                    (self.num_heads, self.head_dim, d), self.param_dtype)
    out = jnp.einsum("bthk,hkd->btd", out, wo.astype(self.dtype))
    return out if kv_cache is None else (out, new_cache)
