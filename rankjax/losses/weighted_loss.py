"""The reduction: sum_t m_t w_t (-log p_t) / (supervised tokens of the global batch).

Inputs shared by the dense and fused losses:
- mask: 0 or 1 per position, the set of supervised positions (not a per-token weight). Concrete
  masks with any other value raise ValueError; under jit (no check) a position is supervised
  iff mask > 0. Positions off the mask do not touch the loss or the gradient, even with NaN
  or inf logits (hidden states) or any target id there (e.g. -100).
- targets at supervised positions: ids in [0, V). Eager calls raise ValueError naming the
  first bad one; under jit an id outside makes the loss NaN (never wrapped around), so the
  train step, which refuses non-finite steps, refuses it.
- gradients across devices: see `rankjax.losses.global_reduce`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from rankjax.losses import global_reduce, token_histograms
from rankjax.losses.config import needs_batch_log_probs, stats_options, validate_config
from rankjax.losses.stats import TokenStats, check_logits_shape, padded_stats, token_stats
from rankjax.losses.weights import (TalrContext, ranktuner_log_scale, scheme_weight, talr_context,
                                   topk_entropy_nats)

# How aux scalars of gradient-accumulation micro-steps combine into the full batch's.
# Means are already divided by the global token count, so they add up.
AUX_KEEP = ("tokens", "talr_tau")
AUX_MAX = ("max_weight",)


@struct.dataclass
class BatchContext:
  """Constants of the whole global batch, shared by all its micro-steps and devices.

  num_tokens: supervised tokens of the global batch (float32 scalar), the loss denominator.
  talr: TALR's temperature and normaliser (None for other schemes).
  """

  num_tokens: jax.Array
  talr: TalrContext | None = None


def batch_context(log_prob: jax.Array, mask: jax.Array, config, axis_name=None) -> BatchContext:
  """Builds the `BatchContext` from the log-probs and mask of the *whole* global batch.

  Gradient accumulation calls this once on every micro-step's (forward-only) log p_t,
  so TALR's median and the token count span all micro-steps.
  """
  talr = None
  if needs_batch_log_probs(config):
    talr = talr_context(log_prob, mask, config.talr_min_tau, config.talr_normalize, axis_name)
  return BatchContext(num_tokens=global_reduce.global_sum(mask > 0, axis_name), talr=talr)


def check_targets(targets, vocab_size: int, mask=None, where: str = "targets") -> None:
  """Raises ValueError naming the first out-of-range target id at a supervised position (all
  positions without `mask`). Checks concrete arrays only; under jit (tracers) it does nothing."""
  if isinstance(targets, jax.core.Tracer) or isinstance(mask, jax.core.Tracer):
    return
  t = np.asarray(targets)
  supervised = np.ones(t.shape, bool) if mask is None else np.asarray(mask) > 0
  bad = np.argwhere(((t < 0) | (t >= vocab_size)) & supervised)
  if bad.size:
    idx = tuple(int(i) for i in bad[0])
    raise ValueError(f"{where}: token id {int(t[idx])} at index {idx} is outside [0, {vocab_size})")


def check_mask(mask, where: str = "loss mask") -> None:
  """Raises ValueError naming the first entry of `mask` that is neither 0 nor 1. Checks concrete
  arrays only; under jit (tracers) it does nothing and a position is supervised iff mask > 0."""
  if isinstance(mask, jax.core.Tracer):
    return
  m = np.asarray(mask)
  bad = np.argwhere(~((m == 0) | (m == 1)))
  if bad.size:
    idx = tuple(int(i) for i in bad[0])
    raise ValueError(f"{where}: value {m[idx]!r} at index {idx} of shape {m.shape} is not 0 or 1 "
                     "(the mask selects supervised tokens; it is not a per-token weight)")


def check_vocab_size(config, vocab_size: int, what: str) -> None:
  """Raises ValueError if scheme `config.name` is undefined at this vocabulary size (`what` names the shape)."""
  if config.name == "eaft" and vocab_size < 2:
    raise ValueError(f"loss config: eaft needs V >= 2 (its entropy is divided by ln min(eaft_top_k, V)); "
                     f"got V = {vocab_size} from {what}")


def checked_targets(targets, mask, vocab_size: int, config):
  """Validates config, shapes, target ids and mask values; returns (targets with unsupervised
  positions (any id, e.g. -100) set to 0, mask), both jax arrays."""
  validate_config(config)
  targets, mask = jnp.asarray(targets), jnp.asarray(mask)
  if mask.shape != targets.shape:
    raise ValueError(f"loss mask shape {mask.shape} differs from targets shape {targets.shape}")
  check_targets(targets, vocab_size, mask)
  check_mask(mask)
  return jnp.where(mask > 0, targets, 0), mask


def masked_weights(stats: TokenStats, topk_entropy, mask, config, vocab_size: int, axis_name, context):
  """The weighting step: (weights [..., T], 0 off the mask; the BatchContext used)."""
  if context is None:
    context = batch_context(stats.log_prob, mask, config, axis_name)
  w = scheme_weight(stats, config, context.talr, topk_entropy, vocab_size)
  return jnp.where(mask > 0, w, 0.0), context


def diagnosed_token_stats(logits, targets, config, diagnose=None) -> TokenStats:
  """`token_stats` of what `config` asks for (`stats_options`); with a traced bool `diagnose`, the
  diagnostics-only statistics are computed where it is true and hold neutral values otherwise (`lax.cond`)."""
  full, lean = stats_options(config), stats_options(config, diagnostics=False)
  if diagnose is None or full == lean:
    return token_stats(logits, targets, **full)
  return jax.lax.cond(diagnose, lambda z: token_stats(z, targets, **full),
                      lambda z: padded_stats(token_stats(z, targets, **lean), full), logits)


def _stats_and_weights(logits, targets, mask, config, axis_name, context, diagnose=None):
  logits = jnp.asarray(logits)
  targets, mask = checked_targets(targets, mask, logits.shape[-1], config)
  check_logits_shape(logits, targets, "weighted_loss")
  check_vocab_size(config, logits.shape[-1], f"logits {logits.shape}")
  # Rows off the mask become 0 through a select, not a product: NaN or inf there would
  # otherwise reach the gradient as 0 * NaN.
  logits = jnp.where(mask[..., None] > 0, logits, jnp.zeros((), logits.dtype))
  stats = diagnosed_token_stats(logits, targets, config, diagnose)
  topk_entropy = topk_entropy_nats(logits, config.eaft_top_k) if config.name == "eaft" else None
  w, context = masked_weights(stats, topk_entropy, mask, config, logits.shape[-1], axis_name, context)
  return stats, w, context


def token_weights(logits: jax.Array, targets: jax.Array, mask: jax.Array, config, axis_name=None,
                  context: BatchContext | None = None) -> jax.Array:
  """Stop-gradient weights w_t of `config.name`, float32 [..., T], 0 where `mask` is 0.

  `logits` [..., T, V] score aligned `targets` [..., T]; `axis_name` as in `weighted_loss`.
  """
  return _stats_and_weights(logits, targets, mask, config, axis_name, context)[1]


def _log_relative_scale(stats: TokenStats, config):
  """ln S_t of RankTuner under config's form when the run is RankTuner or diagnostics are on, else None."""
  if config.name == "ranktuner" or config.diagnostics:
    return ranktuner_log_scale(stats, config.form, config.bound_floor)
  return None


def _ranktuner_weight(stats: TokenStats, log_scale, config):
  """RankTuner's w_t = b_t S_t from ln S_t (as `weights.ranktuner_weight` forms it)."""
  return jnp.exp(log_scale + (jax.lax.stop_gradient(stats.log_prob) if config.base == "prob" else 0.0))


def _per_token(stats: TokenStats, w, scale) -> dict:
  """The per-token statistics the histograms and dumps show, by GRIDS name (missing ones left out)."""
  out = {"weight": w, "prob": jnp.exp(jax.lax.stop_gradient(stats.log_prob)), "entropy_bits": stats.entropy_bits,
         "rank": stats.rank, "expected_rank": stats.expected_rank, "relative_scale": scale}
  return {k: v for k, v in out.items() if v is not None}


DUMP_PREFIX = "dump/"


def _dump_rows(per_token: dict, targets, mask, rows: int) -> dict:
  """The first `rows` sequences' per-token statistics, targets and mask, [rows, T] each ("dump/<name>")."""
  flat = lambda x: x.reshape((-1,) + x.shape[-1:])[:rows]  # noqa: E731
  out = {DUMP_PREFIX + k: flat(v) for k, v in per_token.items()}
  out[DUMP_PREFIX + "target"] = flat(targets)
  out[DUMP_PREFIX + "mask"] = flat(mask)
  return out


def _aux(stats: TokenStats, w, nll, mask, config, axis_name, context, targets=None, diagnose=None) -> dict:
  m = (mask > 0)
  n = jnp.maximum(context.num_tokens, 1.0)

  def mean(x):
    return global_reduce.global_sum(jnp.where(m, x, 0.0), axis_name) / n

  aux = {
      "tokens": context.num_tokens,
      "mean_weight": mean(w),
      "max_weight": global_reduce.global_max(jnp.where(m, w, 0.0), axis_name),
      "frac_weight_gt1": mean((w > 1.0).astype(jnp.float32)),
      "mean_nll": mean(nll),
      "mean_prob": mean(jnp.exp(-nll)),
  }
  if stats.rank is not None:
    aux["mean_rank"] = mean(stats.rank.astype(jnp.float32))
    aux["frac_rank1"] = mean((stats.rank == 1).astype(jnp.float32))
  if stats.entropy_bits is not None:
    aux["mean_entropy_bits"] = mean(stats.entropy_bits)
  if stats.expected_rank is not None:
    aux["mean_expected_rank"] = mean(stats.expected_rank)
    aux["mean_expected_rank_interval"] = mean(stats.expected_rank_hi - stats.expected_rank_lo)
  log_scale = _log_relative_scale(stats, config)
  if config.diagnostics:
    rt = w if config.name == "ranktuner" else _ranktuner_weight(stats, log_scale, config)
    aux["mean_ranktuner_weight"] = mean(rt)
  if context.talr is not None:
    aux["talr_tau"] = context.talr.tau
  if config.histograms or config.dump_tokens:
    per_token = _per_token(stats, w, None if log_scale is None else jnp.exp(log_scale))
    if config.histograms:
      def histograms(per_token):
        out = {}
        for name, values in per_token.items():
          out.update(token_histograms.token_histogram(name, values, mask, axis_name))
        return out
      if diagnose is None:
        aux.update(histograms(per_token))
      else:  # only on steps that are read
        aux.update(jax.lax.cond(diagnose, histograms, lambda x: jax.tree.map(
            lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(histograms, x)), per_token))
    # Rows of this device's shard would not be the batch's first rows: dumps only without a mapped axis.
    if config.dump_tokens and axis_name is None and targets is not None:
      aux.update(_dump_rows(per_token, targets, mask, int(config.dump_sequences)))
  return jax.tree.map(jax.lax.stop_gradient, aux)


def weighted_loss(logits: jax.Array, targets: jax.Array, mask: jax.Array, config, axis_name=None,
                  context: BatchContext | None = None, diagnose=None) -> tuple[jax.Array, dict]:
  """Weighted cross-entropy L = sum(m w nll) / sum(m) over the global batch, in nats per token.

  Args:
    logits: [..., T, V] (at least 2-D, T >= 1), any float dtype (reduced in float32); position t
      scores targets[t].
    targets: [..., T] integer ids, in [0, V) at supervised positions (see the module docstring).
    mask: [..., T] loss mask, 0 or 1 (1 on supervised response tokens; see the module docstring).
    config: a loss config (`default_config()`), validated here.
    axis_name: mapped axis name(s) of `pmap`/`shard_map` over which the batch is split;
      both sums (and TALR's median) then span all devices.
    context: precomputed `BatchContext` (gradient accumulation); by default built from this batch.
    diagnose: None (everything `config` asks for, every call) or a bool scalar (may be traced): where false,
      the diagnostics-only statistics (`config.diagnostics`) and the histograms are not computed (the
      training loop sets it on log and dump steps only); the loss, its gradient and the weights are the
      same either way, the diagnostics-only aux values are then not meaningful and histograms are zeros.

  Returns:
    (loss, aux). `loss` is the global loss on every device, 0 when no token is supervised.
    Its gradient w.r.t. this device's logits is w (softmax - onehot) / N, the exact
    derivative of the global loss; whether parameter gradients still need a psum over
    devices depends on the mapping: see `rankjax.losses.global_reduce`. `aux` holds stop-gradient scalars:
    tokens, mean_weight, max_weight, frac_weight_gt1, mean_nll (nats), mean_prob, talr_tau, and those of
    the statistics computed (`stats_options`: all with `config.diagnostics`): mean_rank, frac_rank1,
    mean_entropy_bits (bits), mean_expected_rank, mean_ranktuner_weight; with
    `config.histograms`, the "hist/<statistic>/{counts,min,max,sum,sum_sq}" of
    `rankjax.losses.token_histograms`; with `config.dump_tokens` (and no `axis_name`), "dump/<statistic>",
    "dump/target" and "dump/mask", arrays [config.dump_sequences, T] of the first rows.
  """
  targets, mask = jnp.asarray(targets), jnp.asarray(mask)
  stats, w, context = _stats_and_weights(logits, targets, mask, config, axis_name, context, diagnose)
  return reduce_loss(stats, w, mask, config, axis_name, context, targets=jnp.where(mask > 0, targets, 0),
                     diagnose=diagnose)


def reduce_loss(stats: TokenStats, w, mask, config, axis_name, context: BatchContext,
                targets=None, diagnose=None) -> tuple[jax.Array, dict]:
  """The reduction sum(m w nll) / N_global and the aux (see `weighted_loss`); `targets` (ids, 0 off the mask)
  only feed the token dump (`config.dump_tokens`); `diagnose` as in `weighted_loss`."""
  nll = -stats.log_prob
  n = jnp.maximum(context.num_tokens, 1.0)
  local = jnp.sum(jnp.where(mask > 0, w * nll, 0.0)) / n
  if axis_name is None:
    loss = local
  else:
    total = jax.lax.psum(jax.lax.stop_gradient(local), axis_name)
    loss = local + jax.lax.stop_gradient(total - local)
  aux = _aux(stats, w, jax.lax.stop_gradient(nll), mask, config, axis_name, context, targets, diagnose)
  aux["loss"] = jax.lax.stop_gradient(loss)
  return loss, aux


def accumulate_aux(total: dict, step: dict) -> dict:
  """Combines the aux of one more micro-step into `total` (sum of global means, max, or keep; histograms add
  their counts and sums and take min/max; dumped rows stay those of the first micro-step)."""
  out = {}
  for k, v in step.items():
    if k.startswith(DUMP_PREFIX):
      out[k] = total[k]
    elif token_histograms.is_histogram_key(k):
      out[k] = token_histograms.combine(k, total[k], v)
    elif k in AUX_KEEP:
      out[k] = v
    elif k in AUX_MAX:
      out[k] = jnp.maximum(total[k], v)
    else:
      out[k] = total[k] + v
  return out
