"""The dense loss: sum_t m_t w_t (-log p_t) / (supervised tokens of the global batch) from logits [..., T, V].

Its sibling `rankjax.losses.fused` gets the same statistics without materialising the logits; both then call
the shared weighting and reduction of `rankjax.losses.reduction`. Inputs (mask values, target ids, a scheme's
extra per-token inputs): see `rankjax.losses.inputs`. Gradients across devices: see
`rankjax.losses.global_reduce`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rankjax.losses.config import stats_options, topk_k
from rankjax.losses.inputs import check_anchor, check_vocab_size, checked_inputs, checked_targets
from rankjax.losses.reduction import BatchContext, Weighted, masked_weights, reduce_loss
from rankjax.losses.stats import TokenStats, check_logits_shape, padded_stats, token_stats
from rankjax.losses.weights import topk_entropy_nats


def diagnosed_token_stats(logits, targets, config, diagnose=None, anchor_logits=None) -> TokenStats:
  """`token_stats` of what `config` asks for (`stats_options`); with a traced bool `diagnose`, the
  diagnostics-only statistics are computed where it is true and hold neutral values otherwise (`lax.cond`).
  `anchor_logits`: an anchor model's logits, whose KL the stats then carry (`TokenStats.anchor_kl`)."""
  full, lean = stats_options(config), stats_options(config, diagnostics=False)
  if diagnose is None or full == lean:
    return token_stats(logits, targets, anchor_logits=anchor_logits, **full)
  return jax.lax.cond(diagnose, lambda z: token_stats(z, targets, anchor_logits=anchor_logits, **full),
                      lambda z: padded_stats(token_stats(z, targets, anchor_logits=anchor_logits, **lean), full),
                      logits)


def _stats_and_weights(logits, targets, mask, config, axis_name, context, diagnose=None,
                       inputs=None, anchor=None) -> tuple[TokenStats, Weighted]:
  logits = jnp.asarray(logits)
  targets, mask = checked_targets(targets, mask, logits.shape[-1], config)
  check_logits_shape(logits, targets, "weighted_loss")
  check_vocab_size(config, logits.shape[-1], f"logits {logits.shape}")
  inputs = checked_inputs(inputs, mask, config)
  check_anchor(anchor, config, f"the anchor model's logits, shaped like {logits.shape}")
  # Rows off the mask become 0 through a select, not a product: NaN or inf there would
  # otherwise reach the gradient as 0 * NaN.
  logits = jnp.where(mask[..., None] > 0, logits, jnp.zeros((), logits.dtype))
  if anchor is not None:
    anchor = jnp.where(mask[..., None] > 0, jax.lax.stop_gradient(jnp.asarray(anchor)), 0.0)
  stats = diagnosed_token_stats(logits, targets, config, diagnose, anchor)
  k = topk_k(config)
  topk_entropy = topk_entropy_nats(logits, k) if k else None
  weighted = masked_weights(stats, topk_entropy, mask, config, logits.shape[-1], axis_name, context, inputs)
  return stats, weighted


def token_weights(logits: jax.Array, targets: jax.Array, mask: jax.Array, config, axis_name=None,
                  context: BatchContext | None = None, inputs: dict | None = None, anchor=None) -> jax.Array:
  """Stop-gradient weights w_t of `config.name`, float32 [..., T], 0 where `mask` is 0.

  `logits` [..., T, V] score aligned `targets` [..., T]; `axis_name`, `context`, `inputs` and `anchor` as in
  `weighted_loss`.
  """
  return _stats_and_weights(logits, targets, mask, config, axis_name, context, inputs=inputs,
                            anchor=anchor)[1].weights


def weighted_loss(logits: jax.Array, targets: jax.Array, mask: jax.Array, config, axis_name=None,
                  context: BatchContext | None = None, diagnose=None,
                  inputs: dict | None = None, anchor=None) -> tuple[jax.Array, dict]:
  """Weighted cross-entropy L = sum(m w nll) / sum(m) over the global batch, in nats per token.

  Args:
    logits: [..., T, V] (at least 2-D, T >= 1), any float dtype (reduced in float32); position t
      scores targets[t].
    targets: [..., T] integer ids, in [0, V) at supervised positions (see `rankjax.losses.inputs`).
    mask: [..., T] loss mask, 0 or 1 (1 on supervised response tokens; see `rankjax.losses.inputs`).
    config: a loss config (`default_config()`), validated here.
    axis_name: mapped axis name(s) of `pmap`/`shard_map` over which the batch is split;
      both sums (and TALR's median) then span all devices.
    context: precomputed `BatchContext` (gradient accumulation); by default built from this batch.
    diagnose: None (everything `config` asks for, every call) or a bool scalar (may be traced): where false,
      the diagnostics-only statistics (`config.diagnostics`) and the histograms are not computed (the
      training loop sets it on log and dump steps only); the loss, its gradient and the weights are the
      same either way, the diagnostics-only aux values are then not meaningful and histograms are zeros.
    inputs: the extra per-token inputs [..., T] of schemes that declare some (`Scheme.inputs`, e.g. psft's
      old-policy log p_t), by name; None for the others.
    anchor: an anchor model's logits [..., T, V] (constant) for schemes that add its KL (`Scheme.anchor_kl`,
      asft: KL(p_anchor || p) per token, nats); None for the others.

  Returns:
    (loss, aux). `loss` is the global loss on every device, 0 when no token is supervised (a scheme with
    a `token_loss` adds its term to w nll). Its gradient w.r.t. this device's logits is w (softmax - onehot) / N
    for reweighted cross-entropy, the exact derivative of the global loss; whether parameter gradients
    still need a psum over devices depends on the mapping: see `rankjax.losses.global_reduce`. `aux` holds
    stop-gradient scalars: tokens, mean_weight, max_weight, frac_weight_gt1, mean_nll (nats), mean_prob, the
    scheme's whole-batch constants (talr_tau), mean_token_loss (schemes with a `token_loss`), mean_anchor_kl (nats,
    schemes with an anchor's KL), and those of
    the statistics computed (`stats_options`: all with `config.diagnostics`): mean_rank, frac_rank1,
    mean_entropy_bits (bits), mean_expected_rank, mean_ranktuner_weight; with
    `config.histograms`, the "hist/<statistic>/{counts,min,max,sum,sum_sq}" of
    `rankjax.losses.token_histograms`; with `config.dump_tokens` (and no `axis_name`), "dump/<statistic>",
    "dump/target" and "dump/mask", arrays [config.dump_sequences, T] of the first rows.
  """
  targets, mask = jnp.asarray(targets), jnp.asarray(mask)
  stats, weighted = _stats_and_weights(logits, targets, mask, config, axis_name, context, diagnose, inputs, anchor)
  return reduce_loss(stats, weighted.weights, mask, config, axis_name, weighted.context,
                     targets=jnp.where(mask > 0, targets, 0), diagnose=diagnose, token_loss=weighted.token_loss)
