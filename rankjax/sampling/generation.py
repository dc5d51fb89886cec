"""`generate`: continuations of a list of token-id prompts in one call, on the continuous-batching engine."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from rankjax.sampling.config import SamplingConfig
from rankjax.sampling.engine import Request, engine_for


def _raw_key(rng) -> jax.Array:
  """Returns a raw uint32 key [2] of an int seed, a typed key or a raw key."""
  if isinstance(rng, (int, np.integer)):
    return jax.random.PRNGKey(int(rng))
  return jax.random.key_data(rng) if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key) else rng


def generate(model, params, prompts: list[list[int]], sampling: SamplingConfig, rng=None, pad_id: int = 0,
             batch_size: int | None = None, mesh: Mesh | None = None) -> list[list[int]]:
  """Returns the continuation (list of token ids, stop id excluded) of each token-id prompt, by the engine.

  Decode slots: the number of prompts rounded up to a power of two, at most `batch_size` (None: 256). `rng` (a PRNG
  key or an int seed) is required when sampling.temperature > 0: prompt i samples with fold_in(rng, i), so its
  random draws depend on rng and its index only, not on batch_size or the other prompts; its logits depend on them
  up to float rounding (see "Reproducibility" in `rankjax.sampling`).
  """
  if not isinstance(sampling, SamplingConfig):
    raise TypeError(f"generate: sampling must be a SamplingConfig, got {type(sampling).__name__}")
  if batch_size is not None and batch_size <= 0:
    raise ValueError(f"generate: batch_size={batch_size} must be positive")
  if sampling.temperature > 0 and rng is None:
    raise ValueError("generate: rng is required when sampling.temperature > 0")
  vocab = int(model.config.vocab_size)
  for i, pr in enumerate(prompts):
    if len(pr) == 0:
      raise ValueError(f"generate: prompts[{i}] is empty")
    if min(pr) < 0 or max(pr) >= vocab:
      raise ValueError(f"generate: prompts[{i}] has token ids outside [0, vocab_size={vocab})")
  if not prompts:
    return []
  keys = None
  if rng is not None:
    base = _raw_key(rng)
    keys = np.asarray(jax.device_get(jax.vmap(lambda i: jax.random.fold_in(base, i))(
        jnp.arange(len(prompts), dtype=jnp.uint32)))).astype(np.uint32)
  requests = [Request(list(pr), sampling, keys=None if keys is None else keys[i:i + 1])
              for i, pr in enumerate(prompts)]
  slots = min(batch_size or 256, 1 << (len(prompts) - 1).bit_length())
  results = engine_for(model, params, requests, slots, mesh, pad_id=pad_id).run(requests)
  return [r[0].tokens for r in results]
