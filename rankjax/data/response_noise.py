"""Noisy fine-tuning data: random corpus words inserted into the responses of training records.

`NoisyRecords` wraps any random-access record source. After each whitespace-separated word of a response,
with probability `rate`, it inserts one word drawn uniformly from a pool of response words of the corpus
(plausible words in the wrong place). Each record's draws depend only on (seed, record index), so the
noise is the same whichever order or process reads it, and a resumed run sees the same data.
"""

from __future__ import annotations

import collections.abc
import json

import numpy as np
from rankjax.models.errors import DataError

POOL_RECORDS = 2000  # responses whose words form the pool


def word_pool(records, limit: int = POOL_RECORDS) -> list[str]:
  """Returns the distinct response words of the first `limit` records, sorted (a deterministic pool)."""
  words = set()
  for i in range(min(limit, len(records))):
    record = records[i]
    words.update(_response_of(record).split())
  if not words:
    raise DataError("data.response_noise: the records have no response words to draw noise from")
  return sorted(words)


def _response_of(record: dict) -> str:
  if record.get("messages"):
    try:
      messages = json.loads(record["messages"])
    except json.JSONDecodeError:
      return ""
    return str(messages[-1].get("content", "")) if messages else ""
  return str(record.get("response") or "")


def insert_noise(text: str, rate: float, rng: np.random.Generator, pool: list[str]) -> tuple[str, int]:
  """Returns (`text` with a pool word inserted after each word with probability `rate`, number inserted).
  Line breaks are kept: words are inserted within lines."""
  out_lines, inserted = [], 0
  for line in text.split("\n"):
    words = line.split(" ")
    out = []
    for word in words:
      out.append(word)
      if word and rng.random() < rate:
        out.append(pool[int(rng.integers(len(pool)))])
        inserted += 1
    out_lines.append(" ".join(out))
  return "\n".join(out_lines), inserted


class NoisyRecords(collections.abc.Sequence):
  """`records` with noise inserted into each response (see the module docstring); pickles cheaply."""

  def __init__(self, records, rate: float, seed: int = 0, pool: list[str] | None = None):
    if not 0.0 < rate <= 0.5:
      raise ValueError(f"data.response_noise.rate={rate} must lie in (0, 0.5]")
    self.records, self.rate, self.seed = records, float(rate), int(seed)
    self.pool = pool if pool is not None else word_pool(records)

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, index):
    if isinstance(index, slice):
      return [self[i] for i in range(*index.indices(len(self)))]
    record = dict(self.records[index])
    rng = np.random.default_rng([self.seed, int(index) % len(self)])
    if record.get("messages"):
      try:
        messages = json.loads(record["messages"])
      except json.JSONDecodeError:
        return record
      if messages and isinstance(messages[-1].get("content"), str):
        messages[-1]["content"], _ = insert_noise(messages[-1]["content"], self.rate, rng, self.pool)
        record["messages"] = json.dumps(messages)
    elif isinstance(record.get("response"), str):
      record["response"], _ = insert_noise(record["response"], self.rate, rng, self.pool)
    return record
