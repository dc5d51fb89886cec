"""Exact-match accuracy of the final answer under greedy decoding, and teacher-forced token statistics."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rankjax import losses
from rankjax.data.synthetic import extract_answer
from rankjax.data.tokenizer import BOS_ID, EOS_ID
from rankjax.eval.greedy import greedy_generate


def answer_accuracy(model, params, tokenizer, examples, max_new_tokens: int, batch_size: int = 256):
  """Greedy-decodes every example's prompt; returns (accuracy in [0, 1], list of per-example dicts
  with prompt, completion, predicted and gold answer)."""
  prompts = [[BOS_ID] + tokenizer.encode(ex.prompt).ids for ex in examples]
  completions = greedy_generate(model, params, prompts, max_new_tokens, EOS_ID, batch_size=batch_size)
  rows = []
  for ex, ids in zip(examples, completions):
    text = tokenizer.decode(ids)
    pred = extract_answer(text)
    rows.append({"prompt": ex.prompt, "completion": text, "predicted": pred, "gold": ex.answer,
                 "correct": pred is not None and pred == ex.answer})
  return float(np.mean([r["correct"] for r in rows])), rows


def teacher_forced_aux(model, params, batch: dict, loss_config) -> dict:
  """The loss aux scalars (mean RankTuner weight, NLL, rank, ...) of `params` on one batch of
  arrays [b, T] (inputs, targets, loss_mask, segment_ids, positions), without training."""
  @jax.jit
  def run(params, batch):
    logits = model.apply({"params": params}, batch["inputs"], positions=batch["positions"],
                         segment_ids=batch["segment_ids"])
    return losses.weighted_loss(logits, batch["targets"], batch["loss_mask"], loss_config)[1]
  return {k: float(v) for k, v in jax.device_get(run(params, jax.tree.map(jnp.asarray, batch))).items()}
