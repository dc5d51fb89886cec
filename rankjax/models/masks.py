"""Attention masks for causal decoding over packed, padded sequences (and a KV cache)."""

import jax
import jax.numpy as jnp


def attention_mask(segment_ids: jax.Array, kv_segment_ids: jax.Array | None = None, q_offset=0) -> jax.Array:
  """Boolean [B, 1, Tq, Tk] mask: query i may attend to key j iff j <= i + q_offset, both lie in
  the same segment, and the key is not padding (segment id 0).

  Without a cache the keys are the queries (`kv_segment_ids` = `segment_ids`, offset 0); with a
  KV cache the keys are the cache slots and the queries sit at slots q_offset.. q_offset + Tq - 1.
  `q_offset` is a scalar or one offset per row ([B]: a cache whose rows are at different lengths).
  """
  if kv_segment_ids is None:
    kv_segment_ids = segment_ids
  tq, tk = segment_ids.shape[-1], kv_segment_ids.shape[-1]
  offset = jnp.reshape(jnp.asarray(q_offset, jnp.int32), (-1, 1, 1))  # [1 or B, 1, 1]
  causal = jnp.arange(tk)[None, None, :] <= jnp.arange(tq)[None, :, None] + offset
  same = segment_ids[:, :, None] == kv_segment_ids[:, None, :]
  real_key = (kv_segment_ids != 0)[:, None, :]
  return (causal & same & real_key)[:, None]
