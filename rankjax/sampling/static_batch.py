"""Static-batch autoregressive generation with a KV cache: greedy, temperature, top-k and nucleus (top-p) sampling.

`generate_tokens`, the jitted core of a static batch: one batched prefill of left-padded prompts into the KV
cache, then a `lax.while_loop` of single-token cache steps that ends when every row has hit a stop id or
`max_new_tokens` tokens exist (so the whole batch waits for its longest row). It is the baseline that the
continuous-batching engine (`rankjax.sampling.engine`) is tested and benchmarked against; `filter_logits` is the
reference of the engine's per-slot filter.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from rankjax.models.config import resolve_dtype
from rankjax.models.decoder import init_cache
from rankjax.sampling.config import SamplingConfig, check_sampling


def filter_logits(logits: jax.Array, top_p: float = 1.0, top_k: int = 0) -> jax.Array:
  """Returns float32 `logits` [..., V] with every token outside the top-k, then outside the nucleus
  (smallest set of mass >= top_p under the top-k renormalised distribution), set to -inf.

  The argmax is always kept; tokens tied with the smallest kept logit are kept too.
  """
  logits = logits.astype(jnp.float32)
  v = logits.shape[-1]
  k = min(top_k, v) if top_k > 0 else v
  if top_p >= 1.0:
    if k >= v:
      return logits
    threshold = jax.lax.top_k(logits, k)[0][..., -1:]
  else:
    desc = jax.lax.top_k(logits, k)[0]  # the k largest, descending
    probs = jax.nn.softmax(desc, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    n_keep = jnp.sum(mass_before < top_p, axis=-1, keepdims=True)  # >= 1: mass_before[0] == 0
    threshold = jnp.take_along_axis(desc, n_keep - 1, axis=-1)
  return jnp.where(logits >= threshold, logits, -jnp.inf)


def sample_next(logits: jax.Array, key, temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0) -> jax.Array:
  """Returns int32 token ids [...] drawn from `logits` [..., V], each row independently.

  temperature, top_p, top_k are Python numbers (static under jit); computation is float32.
  temperature 0 returns the argmax and ignores `key` (which may then be None).
  """
  check_sampling(temperature, top_p, top_k)
  if temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  if key is None:
    raise ValueError("sample_next: key (rng) is required when temperature > 0")
  scaled = logits.astype(jnp.float32) / jnp.float32(temperature)
  return jax.random.categorical(key, filter_logits(scaled, top_p, top_k), axis=-1).astype(jnp.int32)


def _is_key_batch(rng) -> bool:
  """True when `rng` holds one key per row: typed keys of shape [B] or raw uint32 keys [B, 2]."""
  typed = jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key)
  return rng.ndim == (1 if typed else 2)


def _key_batch_size(rng) -> int:
  return int(rng.shape[0])


@functools.partial(jax.jit, static_argnames=("model", "sampling"))
def generate_tokens(model, params, prompt_ids: jax.Array, prompt_mask: jax.Array, sampling: SamplingConfig,
                    rng=None) -> tuple[jax.Array, jax.Array]:
  """Returns (tokens int32 [B, max_new_tokens], lengths int32 [B]) continuing left-padded prompts.

  `prompt_ids` [B, P] hold each prompt right-aligned; `prompt_mask` [B, P] is nonzero on real
  tokens. Row b's continuation is tokens[b, :lengths[b]] (stop id excluded); entries past it
  are 0. A row with no real token is inactive (length 0). `rng` is one PRNG key, whose step-t key
  fold_in(rng, t) samples the whole batch, or a batch of per-row keys ([B] typed or [B, 2] raw),
  row b then drawing its step-t token with fold_in(rng[b], t): its random draws depend only on its
  own key, and its logits on its batch neighbours (the batch's width and row count) only up to float
  rounding, so a sample repeats whatever the batching except where that rounding flips a token
  (see "Reproducibility" in `rankjax.sampling`). rng may be None only for greedy sampling.
  """
  if not isinstance(sampling, SamplingConfig):
    raise TypeError(f"generate_tokens: sampling must be a SamplingConfig, got {type(sampling).__name__}")
  if prompt_ids.ndim != 2 or prompt_mask.shape != prompt_ids.shape:
    raise ValueError(f"generate_tokens: prompt_ids {prompt_ids.shape} and prompt_mask {prompt_mask.shape} "
                     "must both be [batch, prompt_len]")
  if sampling.temperature > 0 and rng is None:
    raise ValueError("generate_tokens: rng is required when sampling.temperature > 0")
  b, p = prompt_ids.shape
  n = sampling.max_new_tokens
  segments = (prompt_mask != 0).astype(jnp.int32)
  prompt_len = jnp.sum(segments, axis=1)
  # Left-padded rows start at position 0 on their first real token.
  positions = jnp.maximum(jnp.cumsum(segments, axis=1) - 1, 0)
  # The last new token is never fed back: P + n - 1 slots suffice.
  cache = init_cache(model.config, b, p + n - 1, resolve_dtype(model.config.dtype))
  stop_ids = jnp.asarray(sampling.stop_ids, jnp.int32)

  per_row = rng is not None and _is_key_batch(rng)
  if per_row and _key_batch_size(rng) != b:
    raise ValueError(f"generate_tokens: {_key_batch_size(rng)} per-row keys for a batch of {b} rows")

  def pick(logits, step):
    if per_row and sampling.temperature > 0:
      draw = lambda key, row: sample_next(row, jax.random.fold_in(key, step), sampling.temperature,  # noqa: E731
                                          sampling.top_p, sampling.top_k)
      return jax.vmap(draw)(rng, logits)
    key = None if rng is None or per_row else jax.random.fold_in(rng, step)
    return sample_next(logits, key, sampling.temperature, sampling.top_p, sampling.top_k)

  def record(step, token, out, lengths, done):
    hit = jnp.any(token[:, None] == stop_ids[None, :], axis=1) if sampling.stop_ids else jnp.zeros((b,), bool)
    write = ~done & ~hit
    out = out.at[:, step].set(jnp.where(write, token, 0))
    return out, lengths + write.astype(jnp.int32), done | hit

  logits, cache = model.apply({"params": params}, prompt_ids.astype(jnp.int32), positions=positions,
                              segment_ids=segments, cache=cache, last_only=True)
  token = pick(logits[:, -1], 0)
  out, lengths, done = record(0, token, jnp.zeros((b, n), jnp.int32), jnp.zeros((b,), jnp.int32), prompt_len == 0)

  def cond(state):
    step, _, _, _, _, done = state
    return (step < n) & ~jnp.all(done)

  def body(state):
    step, token, cache, out, lengths, done = state
    logits, cache = model.apply({"params": params}, token[:, None], positions=(prompt_len + step - 1)[:, None],
                                segment_ids=jnp.ones((b, 1), jnp.int32), cache=cache)
    token = pick(logits[:, -1], step)
    out, lengths, done = record(step, token, out, lengths, done)
    return step + 1, token, cache, out, lengths, done

  state = (jnp.ones((), jnp.int32), token, cache, out, lengths, done)
  _, _, _, out, lengths, _ = jax.lax.while_loop(cond, body, state)
  return out, lengths
