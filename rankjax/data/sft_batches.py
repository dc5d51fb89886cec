"""Tokenised (prompt, response) examples and deterministic, resumable batches for SFT.

The loss mask is data: it is set on exactly the response tokens and the EOS that ends
them, from the prompt/response boundary, never inferred from padding.
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np

from rankjax.data.tokenizer import BOS_ID, EOS_ID, PAD_ID

LOSS_ON = ("response", "all")
TRUNCATION = ("drop", "truncate")


@dataclasses.dataclass
class TokenizedExamples:
  """Rows of `tokens` [N, seq_len + 1] = BOS prompt response EOS PAD...; `supervised` marks response+EOS."""

  tokens: np.ndarray
  supervised: np.ndarray
  lengths: np.ndarray
  skipped: dict

  def __len__(self) -> int:
    return len(self.tokens)


def tokenize_examples(examples, tokenizer, seq_len: int, loss_on: str = "response", truncation: str = "drop",
                      strict: bool = False) -> TokenizedExamples:
  """Tokenises examples with `.prompt` and `.response` into fixed-length rows.

  loss_on: "response" (SFT: mask on response + EOS) or "all" (pretraining: every token after BOS).
  truncation: over-long examples are dropped ("drop") or cut at seq_len + 1 tokens ("truncate").
  Skipped examples are counted per reason in `.skipped`; with `strict` they raise ValueError
  naming the example index. No usable example at all is an error.
  """
  if loss_on not in LOSS_ON:
    raise ValueError(f"data config: loss_on={loss_on!r} is not one of {LOSS_ON}")
  if truncation not in TRUNCATION:
    raise ValueError(f"data config: truncation={truncation!r} is not one of {TRUNCATION}")
  width = seq_len + 1
  rows, masks, lengths = [], [], []
  skipped = collections.Counter()

  def skip(i, reason):
    if strict:
      raise ValueError(f"example {i}: {reason}")
    skipped[reason] += 1

  for i, ex in enumerate(examples):
    if not isinstance(ex.prompt, str) or not isinstance(ex.response, str):
      skip(i, "non_string")
      continue
    if not ex.response.strip():
      skip(i, "empty_response")
      continue
    prompt = [BOS_ID] + tokenizer.encode(ex.prompt).ids
    response = tokenizer.encode(ex.response).ids + [EOS_ID]
    ids = prompt + response
    sup = [loss_on == "all"] * len(prompt) + [True] * len(response)
    sup[0] = False  # BOS is never a target
    if len(ids) > width:
      if truncation == "drop" or len(prompt) >= width:
        skip(i, "too_long")
        continue
      ids, sup = ids[:width], sup[:width]
      skipped["truncated"] += 1
    row = np.full(width, PAD_ID, np.int32)
    row[:len(ids)] = ids
    m = np.zeros(width, bool)
    m[:len(sup)] = sup
    rows.append(row)
    masks.append(m)
    lengths.append(len(ids))
  if not rows:
    raise ValueError(f"no usable example out of {len(examples)} (skipped: {dict(skipped)})")
  return TokenizedExamples(np.stack(rows), np.stack(masks), np.asarray(lengths, np.int32), dict(skipped))


class BatchSchedule:
  """Batches as a pure function of the step: epoch e visits the rows in permutation(seed, e).

  `batch(step)` returns numpy arrays [accum_steps, batch_size // accum_steps, seq_len]:
  inputs, targets (inputs shifted by one), loss_mask (float32, 1 on supervised targets),
  segment_ids (1 on real tokens, 0 on padding) and positions. Resuming at step k needs no
  state beyond k, and yields exactly the batches an uninterrupted run sees.
  """

  def __init__(self, data: TokenizedExamples, batch_size: int, accum_steps: int = 1, seed: int = 0):
    if batch_size % accum_steps:
      raise ValueError(f"batch_size={batch_size} is not divisible by grad_accum_steps={accum_steps}")
    if not data.supervised[:, 1:].any():
      raise ValueError("the dataset has no supervised token: check the loss mask (loss_on) and the responses")
    self.data, self.batch_size, self.accum_steps, self.seed = data, batch_size, accum_steps, seed
    self._perms = {}

  def _perm(self, epoch: int) -> np.ndarray:
    if epoch not in self._perms:
      if len(self._perms) > 2:
        self._perms.clear()
      self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(len(self.data))
    return self._perms[epoch]

  def indices(self, step: int) -> np.ndarray:
    n = len(self.data)
    flat = np.arange(step * self.batch_size, (step + 1) * self.batch_size)
    return np.asarray([self._perm(i // n)[i % n] for i in flat])

  def batch(self, step: int) -> dict:
    idx = self.indices(step)
    tokens, sup, lengths = self.data.tokens[idx], self.data.supervised[idx], self.data.lengths[idx]
    t = tokens.shape[1] - 1
    positions = np.broadcast_to(np.arange(t, dtype=np.int32), (len(idx), t))
    out = {
        "inputs": tokens[:, :-1],
        "targets": tokens[:, 1:],
        "loss_mask": sup[:, 1:].astype(np.float32),
        "segment_ids": (positions < (lengths[:, None] - 1)).astype(np.int32),
        "positions": np.ascontiguousarray(positions),
    }
    shape = (self.accum_steps, self.batch_size // self.accum_steps, t)
    return {k: v.reshape(shape) for k, v in out.items()}
