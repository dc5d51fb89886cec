"""The loss of a model's head output, dense or fused, and the whole-batch context of gradient
accumulation: the two entry points of training and evaluation.

A head output is what the model's forward pass hands the loss: logits [..., T, V], or the pair
(hidden [..., T, d], LM-head kernel [d, V]) (`model.apply(..., return_hidden=True)`), for which the
fused loss never materialises the logits. `wants_hidden(config)` says which one to ask the model
for; callers never choose between the dense and fused losses themselves. Gradients across
devices: see `rankjax.losses.global_reduce`.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from rankjax.losses import global_reduce, registry
from rankjax.losses.config import needs_batch_log_probs, validate_config
from rankjax.losses.fused import linear_token_stats, linear_weighted_loss
from rankjax.losses.stats import token_stats
from rankjax.losses.reduction import BatchContext, batch_context
from rankjax.losses.weighted_loss import weighted_loss


def wants_hidden(config) -> bool:
  """Whether the loss wants (hidden, kernel) from the model (`config.fused`) rather than logits."""
  return bool(config.fused)


def _hidden_and_kernel(head):
  """(hidden, kernel) if `head` is such a pair, else None (it is logits)."""
  if isinstance(head, (tuple, list)):
    if len(head) != 2:
      raise ValueError(f"head output: a tuple must be (hidden [..., T, d], kernel [d, V]), got {len(head)} items")
    return head
  return None


def head_loss(head, targets, mask, config, context: BatchContext | None = None,
              axis_name=None, diagnose=None, inputs: dict | None = None,
              kernel_grad: bool = True, anchor=None) -> tuple[jax.Array, dict]:
  """(loss, aux) of a head output: the weighted cross-entropy in nats per supervised token of
  the global batch, and the aux scalars of `rankjax.losses.weighted_loss`.

  `head` is logits [..., T, V] (dense `weighted_loss`) or (hidden [..., T, d], kernel [d, V])
  (fused `linear_weighted_loss`: same loss, aux and gradients); `targets`, `mask`, `context`,
  `axis_name`, `diagnose` and `inputs` (a scheme's extra per-token inputs) are those of `weighted_loss`.
  `kernel_grad=False` (a frozen LM head, as under LoRA): the fused backward pass skips d kernel (its cotangent is
  zero), saving one [chunk, d] x [chunk, V] matmul per token chunk.
  `anchor`: the anchor model's head output, of the same kind as `head` (logits, or (hidden, kernel)), for schemes
  that add its KL (`Scheme.anchor_kl`, asft); None for the others.
  """
  pair = _hidden_and_kernel(head)
  anchor_pair = None if anchor is None else _hidden_and_kernel(anchor)
  if anchor is not None and (anchor_pair is None) != (pair is None):
    raise ValueError("head output: the anchor's head must be of the same kind as the model's (logits, or "
                     "(hidden, kernel))")
  if pair is None:
    return weighted_loss(head, targets, mask, config, axis_name=axis_name, context=context, diagnose=diagnose,
                         inputs=inputs, anchor=anchor)
  hidden, kernel = pair
  return linear_weighted_loss(hidden, kernel, targets, mask, config, axis_name=axis_name, context=context,
                              diagnose=diagnose, inputs=inputs, kernel_grad=kernel_grad, anchor=anchor_pair)


LOG_PROB_ONLY = {"with_expected_rank": False, "with_entropy": False, "with_rank": False}


def head_log_prob(head, targets, mask, config) -> jax.Array:
  """log p_t [..., T] (nats, stop-gradient) of a head output, forward only; 0-id targets off the mask."""
  targets = jnp.where(mask > 0, targets, 0)
  pair = _hidden_and_kernel(head)
  if pair is None:
    stats = token_stats(head, targets, **LOG_PROB_ONLY)
  else:
    hidden, kernel = pair
    stats = linear_token_stats(hidden, kernel, targets, config.token_chunk, mask=mask, vocab_chunk=config.vocab_chunk,
                               compact=config.compact_tokens, **LOG_PROB_ONLY)[0]
  return jax.lax.stop_gradient(stats.log_prob)


def self_anchored(head, targets, mask, config) -> dict:
  """Keyword arguments (`inputs`, `anchor`) of `head_loss` / `token_weights` that make a scheme's anchor model the
  model itself (`Scheme.anchor`): how one model is evaluated or inspected without a second one. asft's KL is then 0
  and its weight DFT's; psft's ratio is 1 and its weight 1 (SFT's). Empty for schemes without an anchor."""
  scheme = registry.get(config.name)
  out = {}
  if registry.ANCHOR_LOG_PROB in scheme.inputs:
    out["inputs"] = {registry.ANCHOR_LOG_PROB: head_log_prob(head, targets, mask, config)}
  if scheme.anchor_kl:
    out["anchor"] = jax.tree.map(jax.lax.stop_gradient, head)
  return out


def whole_batch_context(head_fn: Callable[[dict], object], batch: dict, config,
                        axis_name=None) -> BatchContext | None:
  """The `BatchContext` shared by the A micro-steps of one gradient-accumulation step.

  `batch` holds arrays [A, b, T] with keys "targets" and "loss_mask" (plus whatever `head_fn`
  reads); `head_fn(micro)` maps one micro-step's [b, T] arrays to its head output (see
  `head_loss`). Returns the context holding the whole batch's supervised-token count (float32)
  and, for a scheme whose weights need the whole batch's log p_t (`Scheme.batch_constants`, TALR's
  median), its constants from a forward-only pass over all A micro-steps (`lax.map`, one micro-step's
  activations at a time). Returns None for such a scheme with A == 1: the loss then builds the same
  context in its own forward pass, without a second one.
  """
  validate_config(config)
  mask = batch["loss_mask"]
  if not needs_batch_log_probs(config):
    return BatchContext(num_tokens=global_reduce.global_sum(mask > 0, axis_name))
  if mask.shape[0] == 1:
    return None
  log_probs = jax.lax.map(lambda micro: head_log_prob(head_fn(micro), micro["targets"], micro["loss_mask"], config),
                          batch)
  return batch_context(log_probs, mask, config, axis_name)
