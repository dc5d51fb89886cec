"""Static-batch autoregressive generation with a KV cache: greedy, temperature, top-k and nucleus (top-p) sampling.

`generate_tokens`, the jitted core of a static batch: one batched prefill of left-padded prompts into the KV
cache, then a `lax.while_loop` of single-token cache steps that ends when every row has hit a stop id or
`max_new_tokens` tokens exist (so the whole batch waits for its longest row). `SamplingConfig`, `sample_next`,
`filter_logits` and `bucket_length` are shared with the continuous-batching engine (`rankjax.models.engine`),
whose `generate` is the entry point for lists of prompts.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from rankjax.models.config import resolve_dtype
from rankjax.models.decoder import init_cache


def _check_sampling(temperature, top_p, top_k) -> None:
  """Raises ValueError naming the field if a sampling parameter is out of range."""
  if not (math.isfinite(temperature) and temperature >= 0):
    raise ValueError(f"sampling: temperature={temperature} must be finite and >= 0 (0 = greedy)")
  if not 0 < top_p <= 1:
    raise ValueError(f"sampling: top_p={top_p} must lie in (0, 1]")
  if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 0:
    raise ValueError(f"sampling: top_k={top_k!r} must be an int >= 0 (0 = off)")


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """How to pick each new token. Hashable, so it is a static argument of the jitted core.

  temperature 0 is greedy (argmax; top_p and top_k then change nothing). Otherwise logits are
  divided by the temperature, cut to the top_k largest (0 = off), then to the smallest set whose
  probability mass is >= top_p (1 = off), and sampled. Generation of a row ends at its first
  stop id (not returned) or after max_new_tokens tokens.
  """

  max_new_tokens: int
  temperature: float = 0.0
  top_p: float = 1.0
  top_k: int = 0
  stop_ids: tuple[int, ...] = ()

  def __post_init__(self):
    n = self.max_new_tokens
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
      raise ValueError(f"sampling: max_new_tokens={n!r} must be a positive int")
    _check_sampling(self.temperature, self.top_p, self.top_k)
    try:
      stop_ids = tuple(int(s) for s in self.stop_ids)
    except (TypeError, ValueError):
      raise ValueError(f"sampling: stop_ids={self.stop_ids!r} must be a sequence of ints") from None
    if any(s < 0 for s in stop_ids):
      raise ValueError(f"sampling: stop_ids={stop_ids} must be non-negative token ids")
    object.__setattr__(self, "max_new_tokens", int(n))
    object.__setattr__(self, "temperature", float(self.temperature))
    object.__setattr__(self, "top_p", float(self.top_p))
    object.__setattr__(self, "top_k", int(self.top_k))
    object.__setattr__(self, "stop_ids", stop_ids)


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
  _check_sampling(temperature, top_p, top_k)
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
  row b then drawing its step-t token with fold_in(rng[b], t): its continuation depends only on its
  own key and prompt, not on its batch neighbours (so a sample is reproducible whatever the
  batching). rng may be None only for greedy sampling.
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


def bucket_length(n: int, minimum: int = 16) -> int:
  """Returns the padded length for `n`: a multiple of `minimum` up to 8 * minimum, beyond that a
  multiple of next_power_of_two(n) / 8 (at most 1/8 wasted; about 8 sizes per doubling)."""
  pow2 = 1 << max(int(n) - 1, 0).bit_length()
  step = max(minimum, pow2 // 8)
  return max(step, -(-int(n) // step) * step)
