"""`SamplingConfig`: how each new token is picked (greedy, temperature, top-k, top-p) and when a sample ends."""

from __future__ import annotations

import dataclasses
import math

import numpy as np


def check_sampling(temperature, top_p, top_k) -> None:
  """Raises ValueError naming the field if a sampling parameter is out of range."""
  if not (math.isfinite(temperature) and temperature >= 0):
    raise ValueError(f"sampling: temperature={temperature} must be finite and >= 0 (0 = greedy)")
  if not 0 < top_p <= 1:
    raise ValueError(f"sampling: top_p={top_p} must lie in (0, 1]")
  if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 0:
    raise ValueError(f"sampling: top_k={top_k!r} must be an int >= 0 (0 = off)")


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """How to pick each new token. Hashable, so it is a static argument of the jitted decoders.

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
    check_sampling(self.temperature, self.top_p, self.top_k)
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
