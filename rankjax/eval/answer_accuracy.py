"""Exact-match accuracy of the final answer under greedy decoding, and teacher-forced token statistics."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rankjax import losses
from rankjax.data.formatting import Formatter
from rankjax.data.answers import extract_answer
from rankjax.sampling.greedy import greedy_generate


def answer_accuracy(model, params, formatter: Formatter, records, max_new_tokens: int, batch_size: int = 256):
  """Greedy-decodes every record's prompt (as `formatter` writes it for training); returns (accuracy in
  [0, 1], list of per-record dicts with prompt, completion, predicted and gold answer)."""
  tokenizer = formatter.tokenizer
  prompts = [formatter.prompt_ids(r) for r in records]
  completions = greedy_generate(model, params, prompts, max_new_tokens, tokenizer.eos_id,
                                pad_id=tokenizer.pad_id or 0, batch_size=batch_size)
  rows = []
  for record, ids in zip(records, completions):
    text = tokenizer.decode(ids)
    pred = extract_answer(text)
    rows.append({"prompt": record["prompt"], "completion": text, "predicted": pred, "gold": record["answer"],
                 "correct": pred is not None and pred == record["answer"]})
  return float(np.mean([r["correct"] for r in rows])), rows


def make_teacher_forced_aux(model, loss_config):
  """Returns aux(params, batch) -> dict: the loss aux scalars (mean RankTuner weight, NLL in nats per token, rank,
  ...) of `params` on one batch of arrays [b, T] (inputs, targets, loss_mask, segment_ids, positions), without
  training; the aux's arrays (`loss_config.histograms`, `dump_tokens`) are left out. One compiled program serves
  every `params` of the same shapes (e.g. each model the demo evaluates). A scheme that reads an anchor model (asft,
  psft) is evaluated against the model itself (`losses.self_anchored`)."""
  @jax.jit
  def run(params, batch):
    head = model.apply({"params": params}, batch["inputs"], positions=batch["positions"],
                       segment_ids=batch["segment_ids"], return_hidden=losses.wants_hidden(loss_config))
    anchored = losses.self_anchored(head, batch["targets"], batch["loss_mask"], loss_config)
    return losses.head_loss(head, batch["targets"], batch["loss_mask"], loss_config, **anchored)[1]

  def aux(params, batch: dict) -> dict:
    values = jax.device_get(run(params, jax.tree.map(jnp.asarray, batch)))
    return {k: float(v) for k, v in values.items() if np.ndim(v) == 0}  # histograms and token dumps are arrays
  return aux


def teacher_forced_aux(model, params, batch: dict, loss_config) -> dict:
  """`make_teacher_forced_aux(model, loss_config)(params, batch)` (compiles on every call: to evaluate several
  params, make the function once)."""
  return make_teacher_forced_aux(model, loss_config)(params, batch)
