"""The Llama-style decoder-only transformer."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from rankjax.models import config as model_config
from rankjax.models.attention import Attention
from rankjax.models.embedding import Embed
from rankjax.models.lora import LoraSpec
from rankjax.models.masks import attention_mask
from rankjax.models.mlp import SwiGLU
from rankjax.models.cache_write import write_at
from rankjax.models.norm import RMSNorm
from rankjax.models.rope import rope_frequencies, rotary_angles
from rankjax.models.sharding import constrain_activations

REMAT_POLICIES = {"layer": None, "dots_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


class DecoderLayer(nn.Module):
  """Pre-norm block: x + attn(norm(x)), then + mlp(norm(x)). Returns x, or (x, kv) with a cache."""

  config: object
  lora: LoraSpec | None = None

  @nn.compact
  def __call__(self, x, cos, sin, mask, kv_cache=None):
    c = self.config
    dtype, pdtype = model_config.resolve_dtype(c.dtype), model_config.resolve_dtype(c.param_dtype)
    h = RMSNorm(c.norm_eps, dtype, pdtype, name="attn_norm")(x)
    attn = Attention(c.num_heads, c.num_kv_heads, model_config.head_dim(c), c.qkv_bias, c.out_bias, c.qk_norm,
                     c.norm_eps, c.attention_impl, c.init_std, dtype, pdtype, self.lora, name="attn")(h, cos, sin, mask, kv_cache)
    attn, kv = (attn, None) if kv_cache is None else attn
    x = x + attn
    h = RMSNorm(c.norm_eps, dtype, pdtype, name="mlp_norm")(x)
    x = x + SwiGLU(c.mlp_dim, c.init_std, dtype, pdtype, self.lora, name="mlp")(h)
    return x if kv_cache is None else (x, kv)


def init_cache(config, batch: int, max_len: int, dtype=jnp.float32, per_row_index: bool = False) -> dict:
  """An empty KV cache for `max_len` slots: k/v [layers, B, S, kv_heads, head_dim], key segment ids, and the
  next slot to write: one index for all rows (0), or with `per_row_index` one per row ([B] zeros), so that rows
  hold sequences of different lengths (continuous batching)."""
  shape = (config.num_layers, batch, max_len, config.num_kv_heads, model_config.head_dim(config))
  index = jnp.zeros((batch,) if per_row_index else (), jnp.int32)
  return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype),
          "segment_ids": jnp.zeros((batch, max_len), jnp.int32), "index": index}


class Transformer(nn.Module):
  """Decoder-only LM. `__call__(input_ids, positions=None, segment_ids=None)` returns logits [B, T, V].

  `segment_ids` [B, T] mark packed sequences (attention never crosses a segment) and padding
  (id 0, never attended to); by default every token is in segment 1. `positions` default
  to 0..T-1. With `return_hidden=True` it returns (final hidden states [B, T, D], LM-head
  kernel [D, V]) instead (with a cache: ((hidden, kernel), cache)), for losses that fuse the output projection
  and for a prefill that needs one position's logits. With `cache`
  (from `init_cache`) the tokens are appended at cache["index"] (shared, or one per row) and the call returns
  (logits, updated cache): incremental decoding. `last_only=True` gives logits of the last
  position only ([B, 1, V]), as a generation prefill needs.

  `lora` (a `LoraSpec`, or None) adds low-rank adapters to the projections it targets (`rankjax.models.lora`);
  `model.clone(lora=None)` is the base model whose parameters are the adapted one's without the adapters.
  """

  config: object
  lora: LoraSpec | None = None

  @nn.compact
  def __call__(self, input_ids, positions=None, segment_ids=None, return_hidden: bool = False, cache=None,
               last_only: bool = False):
    c = self.config
    if input_ids.ndim != 2:
      raise ValueError(f"Transformer: input_ids must be [batch, seq], got shape {input_ids.shape}")
    dtype, pdtype = model_config.resolve_dtype(c.dtype), model_config.resolve_dtype(c.param_dtype)
    b, t = input_ids.shape
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    if segment_ids is None:
      segment_ids = jnp.ones((b, t), jnp.int32)
    embed = Embed(c.vocab_size, c.hidden_size, c.init_std, dtype, pdtype, name="embed")
    x = constrain_activations(embed(input_ids))
    cos, sin = rotary_angles(positions, rope_frequencies(c))
    if cache is None:
      mask = attention_mask(segment_ids)
    else:
      index = cache["index"]
      kv_segments = write_at(cache["segment_ids"], segment_ids.astype(jnp.int32), index)
      mask = attention_mask(segment_ids, kv_segments, index)
      new_k, new_v = [], []
    if c.remat == "none":
      layer_cls = DecoderLayer
    else:
      layer_cls = nn.remat(DecoderLayer, policy=REMAT_POLICIES[c.remat])
    for i in range(c.num_layers):
      layer = layer_cls(c, self.lora, name=f"layer_{i}")
      if cache is None:
        x = layer(x, cos, sin, mask)
      else:
        x, (k, v) = layer(x, cos, sin, mask, (cache["k"][i], cache["v"][i], index))
        new_k.append(k)
        new_v.append(v)
      x = constrain_activations(x)
    x = RMSNorm(c.norm_eps, dtype, pdtype, name="final_norm")(x)
    if c.tie_embeddings:
      kernel = embed.embedding.T
    else:
      kernel = self.param("lm_head", nn.with_logical_partitioning(nn.initializers.normal(c.init_std), ("embed", "vocab")),
                          (c.hidden_size, c.vocab_size), pdtype)
    if cache is not None:
      new_cache = {"k": jnp.stack(new_k), "v": jnp.stack(new_v), "segment_ids": kv_segments, "index": index + t}
    if return_hidden:
      return (x, kernel) if cache is None else ((x, kernel), new_cache)
    if last_only:  # prefill for generation: [B, 1, V] instead of [B, T, V]
      x = x[:, -1:]
    logits = x @ kernel.astype(dtype)
    if cache is None:
      return logits
    return logits, new_cache


def build_model(config, lora: LoraSpec | None = None) -> Transformer:
  """Validates `config` (a model ConfigDict) and returns the Flax module (hashable: its config is frozen), with the
  adapters of `lora` when given."""
  model_config.validate_config(config)
  return Transformer(ml_collections.FrozenConfigDict(config), lora)


def init_params(model: Transformer, rng: jax.Array, seq_len: int = 8):
  """Initialises parameters (unboxed: plain arrays; `nn.get_partition_spec` of the boxed
  tree gives logical axes)."""
  variables = model.init(rng, jnp.zeros((1, seq_len), jnp.int32))
  return nn.meta.unbox(variables["params"])
