"""Greedy decoding with a KV cache (a thin wrapper over `rankjax.sampling.generation.generate`, on the engine)."""

from __future__ import annotations

from rankjax.sampling.config import SamplingConfig
from rankjax.sampling.generation import generate


def greedy_generate(model, params, prompts: list[list[int]], max_new_tokens: int, eos_id: int,
                    pad_id: int = 0, batch_size: int = 256) -> list[list[int]]:
  """Greedy continuations of token-id `prompts` (each without padding), up to `max_new_tokens`
  tokens or the first EOS (excluded), on at most `batch_size` decode slots; returns id lists."""
  if any(len(p) == 0 for p in prompts):
    raise ValueError("greedy_generate: empty prompt")
  if max_new_tokens == 0:
    return [[] for _ in prompts]
  return generate(model, params, prompts, SamplingConfig(max_new_tokens, stop_ids=(eos_id,)), pad_id=pad_id,
                  batch_size=batch_size)
