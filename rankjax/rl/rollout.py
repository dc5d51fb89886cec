"""Rollouts: which prompts a step draws, the engine requests for them, and the training batch of the completions.

The prompts of step s are a pure function of (seed, s): the usable records in a seeded order, one permutation per
epoch, prompts_per_step of them per step. A resumed run therefore draws the same prompts with no iterator state, and
every process of a multi-host run draws the same ones (the engine needs identical requests on all of them).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from rankjax import sampling
from rankjax.models.errors import DataError

KEY_NAME = "rl"  # the benchmark name in the per-sample keys (rankjax.sampling.sample_keys)


@dataclasses.dataclass
class Prompts:
  """The usable prompts of a split: their records, gold answers and prompt token ids."""

  records: list[dict]
  golds: list[str]
  ids: list[list[int]]
  skipped: dict  # reason -> count


def load_prompts(records, formatter, max_prompt_tokens: int) -> Prompts:
  """The records with a gold answer whose prompt has at most `max_prompt_tokens` tokens; DataError when none is."""
  kept, golds, ids, skipped = [], [], [], {}
  for i in range(len(records)):
    record = records[i]
    gold = str(record.get("answer") or "").strip()
    reason = record.get("error") or ("no_gold_answer" if not gold else "")
    if not reason:
      prompt = formatter.prompt_ids(record)
      if len(prompt) > max_prompt_tokens:
        reason = "prompt_too_long"
    if reason:
      skipped[reason] = skipped.get(reason, 0) + 1
      continue
    kept.append(record)
    golds.append(gold)
    ids.append(list(prompt))
  if not kept:
    raise DataError(f"rl: no usable prompt among {len(records)} records (by reason: {skipped}); a prompt needs a gold "
                    f"answer and at most {max_prompt_tokens} tokens (data.seq_len - rl.max_new_tokens - 1)")
  return Prompts(kept, golds, ids, skipped)


def step_prompt_indices(num_prompts: int, step: int, per_step: int, seed: int) -> np.ndarray:
  """Indices (into the usable prompts) of step `step`'s prompts: position k of the stream is element k mod N of
  the epoch k // N permutation (seeded by (seed, epoch))."""
  positions = np.arange(step * per_step, (step + 1) * per_step)
  out = np.empty(per_step, np.int64)
  for epoch in np.unique(positions // num_prompts):
    order = np.random.default_rng([int(seed), int(epoch)]).permutation(num_prompts)
    here = positions // num_prompts == epoch
    out[here] = order[positions[here] % num_prompts]
  return out


def requests(prompt_ids: list[list[int]], step: int, num_generations: int, sampling_config, seed: int):
  """One engine request per prompt, num_generations samples each; sample j of prompt i of step s is keyed by
  (seed, "rl", s * len(prompt_ids) + i, j): the same on every process, at any slot count."""
  out = []
  for i, prompt in enumerate(prompt_ids):
    keys = sampling.sample_keys(seed, [(KEY_NAME, step * len(prompt_ids) + i, j) for j in range(num_generations)])
    out.append(sampling.Request(list(prompt), sampling_config, keys=keys))
  return out


def completion_batch(prompt_ids: list[list[int]], samples: list[list], eos_id: int | None, seq_len: int) -> dict:
  """The training batch of the completions, rows ordered (prompt, generation): numpy arrays [N, seq_len] of
  inputs, targets (inputs shifted by one), loss_mask (1.0 on the completion's targets, its end-of-sequence token
  included when it stopped), segment_ids (1 on real tokens, 0 on padding) and positions; plus `lengths` [N]
  (completion tokens, the end token included) and `truncated` [N] (it hit max_new_tokens).

  Row r is prompt + completion (+ eos), right-padded with 0; a sequence longer than seq_len + 1 is a DataError
  (load_prompts keeps prompts short enough that it never is).
  """
  rows = [(p, s) for p, group in zip(prompt_ids, samples) for s in group]
  n = len(rows)
  batch = {k: np.zeros((n, seq_len), np.int32) for k in ("inputs", "targets", "segment_ids", "positions")}
  batch["loss_mask"] = np.zeros((n, seq_len), np.float32)
  lengths = np.zeros(n, np.int32)
  truncated = np.zeros(n, bool)
  for r, (prompt, sample) in enumerate(rows):
    stopped = sample.finish == sampling.FINISH_STOP
    completion = list(sample.tokens) + ([eos_id] if stopped and eos_id is not None else [])
    seq = list(prompt) + completion
    if len(seq) > seq_len + 1:
      raise DataError(f"rl: a rollout of {len(seq)} tokens does not fit data.seq_len={seq_len} (+1)")
    t = len(seq) - 1
    batch["inputs"][r, :t] = seq[:-1]
    batch["targets"][r, :t] = seq[1:]
    batch["loss_mask"][r, len(prompt) - 1:t] = 1.0
    batch["segment_ids"][r, :t] = 1
    batch["positions"][r, :t] = np.arange(t)
    lengths[r] = len(completion)
    truncated[r] = not stopped
  batch["lengths"], batch["truncated"] = lengths, truncated
  return batch
