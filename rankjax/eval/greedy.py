"""Batched greedy decoding with a KV cache."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from rankjax.models import init_cache


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "eos_id"))
def _generate(model, params, prompts, prompt_segments, max_new_tokens: int, eos_id: int):
  b, p = prompts.shape
  cache = init_cache(model.config, b, p + max_new_tokens)
  positions = jnp.maximum(jnp.cumsum(prompt_segments, axis=1) - 1, 0)
  logits, cache = model.apply({"params": params}, prompts, positions=positions, segment_ids=prompt_segments,
                              cache=cache)
  next_pos = positions[:, -1] + 1
  token = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
  out = jnp.zeros((b, max_new_tokens), jnp.int32)

  def body(i, carry):
    token, cache, out, done = carry
    out = out.at[:, i].set(jnp.where(done, eos_id, token))
    done = done | (token == eos_id)
    logits, cache = model.apply({"params": params}, token[:, None], positions=(next_pos + i)[:, None],
                                segment_ids=jnp.ones((b, 1), jnp.int32), cache=cache)
    return jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32), cache, out, done

  _, _, out, _ = jax.lax.fori_loop(0, max_new_tokens, body, (token, cache, out, jnp.zeros((b,), bool)))
  return out


def greedy_generate(model, params, prompts: list[list[int]], max_new_tokens: int, eos_id: int,
                    pad_id: int = 0, batch_size: int = 256) -> list[list[int]]:
  """Greedy continuations of token-id `prompts` (each without padding), up to `max_new_tokens`
  tokens or the first EOS (excluded). Prompts are left-padded into batches; returns id lists."""
  if any(len(p) == 0 for p in prompts):
    raise ValueError("greedy_generate: empty prompt")
  results = []
  width = max(len(p) for p in prompts)
  for start in range(0, len(prompts), batch_size):
    chunk = prompts[start:start + batch_size]
    ids = np.full((batch_size, width), pad_id, np.int32)
    seg = np.zeros((batch_size, width), np.int32)
    for r, pr in enumerate(chunk):
      ids[r, width - len(pr):] = pr
      seg[r, width - len(pr):] = 1
    seg[len(chunk):, -1] = 1  # filler rows: one real token so no row is fully masked
    out = np.asarray(_generate(model, params, jnp.asarray(ids), jnp.asarray(seg), max_new_tokens, eos_id))
    for r in range(len(chunk)):
      row = out[r].tolist()
      results.append(row[:row.index(eos_id)] if eos_id in row else row)
  return results
