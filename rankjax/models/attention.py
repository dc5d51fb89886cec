"""Grouped-query self-attention with rotary embeddings (optional q/k/v/o biases and q/k RMSNorm)."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from rankjax.models.cache_write import write_at
from rankjax.models.lora import LoraSpec, adapter_delta
from rankjax.models.quantized import projection_kernel
from rankjax.models.norm import RMSNorm
from rankjax.models.rope import apply_rotary
from rankjax.models.sharding import constrain_activations

# A large finite negative (not -inf) so a fully masked padding row gives a uniform
# softmax instead of NaN; padding rows never reach the loss.
MASK_VALUE = -1e30


def xla_attention(q, k, v, mask):
  """softmax(q k^T / sqrt(d)) v with scores in float32: q [B, T, H, D], k/v [B, S, K, D], mask [B, 1, T, S] -> [B, T, H, D]."""
  b, t, h, d = q.shape
  kv_heads = k.shape[2]
  q = q.reshape(b, t, kv_heads, h // kv_heads, d)
  scores = jnp.einsum("btngk,bsnk->bngts", q, k, preferred_element_type=jnp.float32)
  scores = scores / jnp.sqrt(jnp.float32(d))
  scores = jnp.where(mask[:, :, None], scores, MASK_VALUE)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  return jnp.einsum("bngts,bsnk->btngk", probs, v).reshape(b, t, h, d)


def library_attention(q, k, v, mask, implementation=None):
  """`jax.nn.dot_product_attention` (implementation None: JAX's choice; "cudnn": cuDNN flash attention on GPU)."""
  return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation)


class Attention(nn.Module):
  """Causal GQA: `num_heads` query heads share `num_kv_heads` key/value heads."""

  num_heads: int
  num_kv_heads: int
  head_dim: int
  qkv_bias: bool = False
  out_bias: bool = False
  qk_norm: bool = False
  norm_eps: float = 1e-6
  impl: str = "xla"
  init_std: float = 0.02
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  lora: LoraSpec | None = None

  def _proj(self, name, x, heads, axes):
    kernel = projection_kernel(self, name, nn.initializers.normal(self.init_std), (x.shape[-1], heads, self.head_dim),
                               axes, self.param_dtype, self.dtype)
    y = jnp.einsum("btd,dhk->bthk", x, kernel)
    delta = adapter_delta(self, name, x, kernel.shape, 1, axes, self.lora, self.dtype, self.param_dtype)
    if delta is not None:
      y = y + delta
    if self.qkv_bias:
      bias = self.param(name + "_bias", nn.with_logical_partitioning(nn.initializers.zeros, axes[1:]),
                        (heads, self.head_dim), self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y

  @nn.compact
  def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, mask: jax.Array, kv_cache=None):
    """x [B, T, D], cos/sin [B, T, head_dim], mask bool [B, 1, T, S] -> [B, T, D].

    With `kv_cache` = (k, v, index), k/v [B, S, kv_heads, head_dim]: this call's keys and
    values are written at slots index.. index + T - 1 (index: a scalar, or [B], one per row), queries attend over all S slots
    (the mask decides which), and the result is (out, (k, v)) with the updated cache.
    """
    d = x.shape[-1]
    x = x.astype(self.dtype)
    heads = ("activation_batch", "activation_length", "activation_heads", "activation_kv")
    q = constrain_activations(self._proj("q", x, self.num_heads, ("embed", "heads", "kv")), heads)
    k = constrain_activations(self._proj("k", x, self.num_kv_heads, ("embed", "kv_heads", "kv")), heads)
    v = constrain_activations(self._proj("v", x, self.num_kv_heads, ("embed", "kv_heads", "kv")), heads)
    if self.qk_norm:
      q = RMSNorm(self.norm_eps, self.dtype, self.param_dtype, name="q_norm")(q)
      k = RMSNorm(self.norm_eps, self.dtype, self.param_dtype, name="k_norm")(k)
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    if kv_cache is not None:
      cache_k, cache_v, index = kv_cache
      k, v = write_at(cache_k, k, index), write_at(cache_v, v, index)
      new_cache = (k, v)

    k, v = k.astype(self.dtype), v.astype(self.dtype)
    if self.impl == "xla":
      out = xla_attention(q, k, v, mask)
    else:
      out = library_attention(q, k, v, mask, "cudnn" if self.impl == "cudnn" else None)

    o_axes = ("heads", "kv", "embed")
    wo = projection_kernel(self, "o", nn.initializers.normal(self.init_std), (self.num_heads, self.head_dim, d),
                           o_axes, self.param_dtype, self.dtype)
    delta = adapter_delta(self, "o", out, wo.shape, 2, o_axes, self.lora, self.dtype, self.param_dtype)
    out = jnp.einsum("bthk,hkd->btd", out, wo)
    out = constrain_activations(out if delta is None else out + delta)
    if self.out_bias:
      out = out + self.param("o_bias", nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)), (d,),
                             self.param_dtype).astype(self.dtype)
    return out if kv_cache is None else (out, new_cache)
