"""Noise tokens injected into a copy of SFT responses, at the token level, with every position recorded.

Works on the response ids a `Formatter` gives (the supervised token sequence: the response text plus the
end-of-turn tokens the format writes after it). The prompt is never touched, nor the end-of-turn tail
(`end_of_turn_length`: from the last special token near the end, e.g. EOS, or Qwen's `<|im_end|>` and the
newline after it).

Rate semantics: one exact count for the whole corpus, so that the noise share of the scored pool is `rate`:
with N clean response tokens, "replace" swaps n = round(rate * N) tokens (share n / N) and "insert" adds
n = round(rate * N / (1 - rate)) tokens (share n / (N + n)). The n slots are drawn uniformly without
replacement from all eligible slots of the corpus (so each example gets a hypergeometric count, close to
independent Bernoulli(rate) per token): "replace" slots are the non-tail response tokens, "insert" slots the
gaps before each of them plus the gap right before the tail (at most one insertion per gap).

Noise tokens come from `pool`: "vocabulary" (uniform over the tokenizer's ids, special and added tokens
excluded) or "corpus" (uniform over the corpus's own eligible response tokens, i.e. by their frequency:
plausible words in the wrong place). A replacement always differs from the token it replaces.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from rankjax.models.errors import ConfigError

MODES = ("insert", "replace")
POOLS = ("vocabulary", "corpus")
MAX_TAIL = 4  # the end-of-turn tail is looked for among the last MAX_TAIL response tokens


@dataclasses.dataclass(frozen=True)
class NoisyExample:
  """One example, clean and noisy. `positions` index `noisy` (= the supervised token sequence) at the
  injected tokens, ascending; `tail` is the length of the end-of-turn tail, equal in `clean` and `noisy`."""

  prompt: list[int]
  clean: list[int]
  noisy: list[int]
  positions: tuple[int, ...]
  tail: int


def validate_noise_config(noise) -> None:
  """Raises ConfigError naming the field of the `noise` group (rate, mode, pool, seed) that is invalid."""
  if not 0.0 < float(noise.rate) <= 0.5:
    raise ConfigError(f"config.noise.rate={noise.rate} must be in (0, 0.5] (a share of response tokens, e.g. 0.008)")
  if noise.mode not in MODES:
    raise ConfigError(f"config.noise.mode={noise.mode!r} is not one of {MODES}")
  if noise.pool not in POOLS:
    raise ConfigError(f"config.noise.pool={noise.pool!r} is not one of {POOLS}")
  if int(noise.seed) < 0:
    raise ConfigError(f"config.noise.seed={noise.seed} must be >= 0")


def special_token_ids(tokenizer) -> set[int]:
  """Returns the ids that are never noise and mark the end of a turn: every added token of the tokenizer
  (its specials, chat markers and tags), the named BOS / EOS / pad and the stop ids."""
  ids = {int(i) for i in tokenizer.tokenizer.get_added_tokens_decoder()}
  ids |= {int(i) for i in (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) if i is not None}
  return ids | {int(i) for i in tokenizer.stop_ids}


def end_of_turn_length(response: Sequence[int], special_ids: set[int]) -> int:
  """Returns how many tokens end `response` after its text: from the last special token among the last
  MAX_TAIL tokens to the end (1 for "...<eos>", 2 for "...<|im_end|>\\n"); 0 when there is none."""
  n = len(response)
  for k in range(n - 1, max(n - MAX_TAIL, 0) - 1, -1):
    if int(response[k]) in special_ids:
      return n - k
  return 0


def noise_count(num_tokens: int, rate: float, mode: str) -> int:
  """Returns how many noise tokens make the share `rate` of the noisy pool, for `num_tokens` clean tokens."""
  exact = rate * num_tokens if mode == "replace" else rate * num_tokens / (1.0 - rate)
  return int(np.floor(exact + 0.5))


def _pool_ids(pool: str, responses, tails, special_ids: set[int], vocab_size: int) -> np.ndarray:
  if pool == "vocabulary":
    ids = np.setdiff1d(np.arange(vocab_size, dtype=np.int64), np.fromiter(special_ids, np.int64, len(special_ids)))
  else:
    ids = np.concatenate([np.asarray(r[:len(r) - t], np.int64) for r, t in zip(responses, tails)] or [np.zeros(0)])
    ids = ids[~np.isin(ids, list(special_ids))].astype(np.int64)
  if ids.size == 0:
    raise ValueError(f"config.noise.pool={pool!r}: no ordinary token to draw noise from")
  return ids


def _draw(rng, pool_ids: np.ndarray, avoid: np.ndarray | None, size: int) -> np.ndarray:
  """`size` tokens drawn uniformly from `pool_ids`, each different from `avoid` (when given)."""
  tokens = pool_ids[rng.integers(0, pool_ids.size, size)]
  if avoid is None:
    return tokens
  for _ in range(1000):
    same = tokens == avoid
    if not same.any():
      return tokens
    tokens[same] = pool_ids[rng.integers(0, pool_ids.size, int(same.sum()))]
  raise ValueError("config.noise.pool: cannot draw a replacement different from the original token (the pool "
                   "holds a single token id)")


def inject_noise(examples: Sequence[tuple[list[int], list[int]]], rate: float, mode: str, pool: str, seed: int,
                 special_ids: set[int], vocab_size: int) -> list[NoisyExample]:
  """Returns `examples` ((prompt ids, response ids) pairs) with noise injected into the responses (see the
  module docstring), one `NoisyExample` each, in order. `vocab_size`: the tokenizer's id range, for the
  "vocabulary" pool. ValueError when the rate gives no noise token or more than there are slots."""
  if mode not in MODES or pool not in POOLS:
    raise ValueError(f"noise: mode={mode!r} / pool={pool!r} must be one of {MODES} / {POOLS}")
  responses = [list(map(int, r)) for _, r in examples]
  tails = [end_of_turn_length(r, special_ids) for r in responses]
  slots = np.asarray([len(r) - t + (1 if mode == "insert" else 0) for r, t in zip(responses, tails)], np.int64)
  count = noise_count(sum(len(r) for r in responses), rate, mode)
  if count < 1:
    raise ValueError(f"config.noise.rate={rate} gives no noise token over {sum(map(len, responses))} response "
                     "tokens: use more examples (config.num_examples) or a higher rate")
  if count > slots.sum():
    raise ValueError(f"config.noise.rate={rate}: {count} noise tokens do not fit in the {int(slots.sum())} slots "
                     "of the responses (without their end-of-turn tokens)")
  rng = np.random.default_rng(seed)
  chosen = np.sort(rng.choice(int(slots.sum()), size=count, replace=False))
  starts = np.concatenate([[0], np.cumsum(slots)[:-1]])
  owner = np.searchsorted(starts, chosen, side="right") - 1
  local = chosen - starts[owner]
  pool_ids = _pool_ids(pool, responses, tails, special_ids, vocab_size)
  originals = np.asarray([responses[e][s] for e, s in zip(owner, local)], np.int64) if mode == "replace" else None
  tokens = _draw(rng, pool_ids, originals, count)
  out = []
  for i, ((prompt, _), response, tail) in enumerate(zip(examples, responses, tails)):
    here = owner == i
    noisy, positions = _apply(response, local[here], tokens[here], mode)
    out.append(NoisyExample(list(map(int, prompt)), response, noisy, positions, tail))
  return out


def _apply(response: list[int], slots: np.ndarray, tokens: np.ndarray, mode: str) -> tuple[list[int], tuple]:
  """(noisy ids, positions of the noise in them) of one response; `slots` ascending."""
  noisy = list(response)
  if mode == "replace":
    for s, tok in zip(slots, tokens):
      noisy[int(s)] = int(tok)
    return noisy, tuple(int(s) for s in slots)
  positions = []
  for shift, (s, tok) in enumerate(zip(slots, tokens)):  # gap s of the clean ids is at s + shift in the noisy ones
    noisy.insert(int(s) + shift, int(tok))
    positions.append(int(s) + shift)
  return noisy, tuple(positions)
