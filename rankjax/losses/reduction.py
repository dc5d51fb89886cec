"""The reduction both losses share: weights of the scheme, masked; sum_t m_t w_t (-log p_t) / (supervised tokens
of the global batch); the aux scalars, histograms and token dumps; and their accumulation over micro-steps.

The dense loss (`rankjax.losses.weighted_loss`) and the fused one (`rankjax.losses.fused`) differ only in how
they get the token statistics; from there on both call `masked_weights` and `reduce_loss`. Inputs follow
`rankjax.losses.inputs`; gradients across devices: see `rankjax.losses.global_reduce`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from rankjax.losses import global_reduce, registry, token_histograms
from rankjax.losses.stats import TokenStats
from rankjax.losses.weights import TalrContext, ranktuner_log_scale

DUMP_PREFIX = "dump/"
# Aux scalars of gradient-accumulation micro-steps that are maxima over the batch; the whole-batch
# constants ("tokens" and the schemes' `batch_aux`) are kept; the rest are means already divided by the
# global token count, so they add up.
AUX_MAX = ("max_weight",)


@struct.dataclass
class BatchContext:
  """Constants of the whole global batch, shared by all its micro-steps and devices.

  num_tokens: supervised tokens of the global batch (float32 scalar), the loss denominator.
  constants: the scheme's whole-batch constants (`Scheme.batch_constants`, e.g. TALR's `TalrContext`);
    None for schemes without.
  """

  num_tokens: jax.Array
  constants: Any = None

  @property
  def talr(self) -> TalrContext | None:
    """TALR's temperature and normaliser when the constants are TALR's, else None."""
    return self.constants if isinstance(self.constants, TalrContext) else None


def batch_context(log_prob: jax.Array, mask: jax.Array, config, axis_name=None) -> BatchContext:
  """Builds the `BatchContext` from the log-probs and mask of the *whole* global batch.

  Gradient accumulation calls this once on every micro-step's (forward-only) log p_t,
  so TALR's median and the token count span all micro-steps.
  """
  scheme = registry.get(config.name)
  constants = None
  if scheme.batch_constants is not None:
    constants = scheme.batch_constants(log_prob, mask, config, axis_name)
  return BatchContext(num_tokens=global_reduce.global_sum(mask > 0, axis_name), constants=constants)


@struct.dataclass
class Weighted:
  """The weighting step's result: w [..., T] (stop-gradient, 0 off the mask), the `BatchContext` used, and the
  scheme's extra per-token loss term (`Scheme.token_loss`, 0 off the mask; None for reweighted cross-entropy)."""

  weights: jax.Array
  context: BatchContext
  token_loss: jax.Array | None = None


def masked_weights(stats: TokenStats, topk_entropy, mask, config, vocab_size: int, axis_name,
                   context: BatchContext | None, inputs: dict | None = None) -> Weighted:
  """The weighting step of scheme `config.name`, the `BatchContext` built from this batch when `context` is
  None; `inputs`: the scheme's extra per-token inputs (`rankjax.losses.inputs.checked_inputs`)."""
  scheme = registry.get(config.name)
  if context is None:
    context = batch_context(stats.log_prob, mask, config, axis_name)
  if scheme.batch_constants is not None and context.constants is None:
    raise ValueError(f"loss: scheme {scheme.name!r} needs the whole batch's constants in the BatchContext "
                     "(build it with rankjax.losses.batch_context or whole_batch_context)")
  args = registry.weight_args(stats, config, context.constants, topk_entropy, vocab_size, inputs)
  w = jax.lax.stop_gradient(scheme.weight(args))
  term = None
  if scheme.token_loss is not None:
    term = jnp.where(mask > 0, scheme.token_loss(stats.log_prob, args), 0.0)
  return Weighted(weights=jnp.where(mask > 0, w, 0.0), context=context, token_loss=term)


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
         "rank": stats.rank, "expected_rank": stats.expected_rank, "relative_scale": scale,
         "anchor_kl": None if stats.anchor_kl is None else jax.lax.stop_gradient(stats.anchor_kl)}
  return {k: v for k, v in out.items() if v is not None}


def _dump_rows(per_token: dict, targets, mask, rows: int) -> dict:
  """The first `rows` sequences' per-token statistics, targets and mask, [rows, T] each ("dump/<name>")."""
  flat = lambda x: x.reshape((-1,) + x.shape[-1:])[:rows]  # noqa: E731
  out = {DUMP_PREFIX + k: flat(v) for k, v in per_token.items()}
  out[DUMP_PREFIX + "target"] = flat(targets)
  out[DUMP_PREFIX + "mask"] = flat(mask)
  return out


def _aux(stats: TokenStats, w, nll, mask, config, axis_name, context, targets=None, diagnose=None,
         token_loss=None) -> dict:
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
  if token_loss is not None:
    aux["mean_token_loss"] = mean(token_loss)
  if stats.anchor_kl is not None:
    aux["mean_anchor_kl"] = mean(jax.lax.stop_gradient(stats.anchor_kl))
  if stats.rank is not None:
    aux["mean_rank"] = mean(stats.rank.astype(jnp.float32))
    aux["frac_rank1"] = mean((stats.rank == 1).astype(jnp.float32))
  if stats.entropy_bits is not None:
    aux["mean_entropy_bits"] = mean(stats.entropy_bits)
  if stats.expected_rank is not None:
    aux["mean_expected_rank"] = mean(stats.expected_rank)
    aux["mean_expected_rank_interval"] = mean(stats.expected_rank_hi - stats.expected_rank_lo)
  # RankTuner's weight and scale are the diagnostics of every run (the method the others are compared with).
  log_scale = _log_relative_scale(stats, config)
  if config.diagnostics:
    rt = w if config.name == "ranktuner" else _ranktuner_weight(stats, log_scale, config)
    aux["mean_ranktuner_weight"] = mean(rt)
  if context.constants is not None:
    for key, value in registry.get(config.name).batch_aux.items():
      aux[key] = value(context.constants)
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


def reduce_loss(stats: TokenStats, w, mask, config, axis_name, context: BatchContext,
                targets=None, diagnose=None, token_loss=None) -> tuple[jax.Array, dict]:
  """The reduction sum(m (w nll + token_loss)) / N_global and the aux (see `rankjax.losses.weighted_loss`);
  `token_loss` is the scheme's extra per-token term (`Weighted.token_loss`, None for reweighted cross-entropy);
  `targets` (ids, 0 off the mask) only feed the token dump (`config.dump_tokens`); `diagnose` as in
  `weighted_loss`."""
  nll = -stats.log_prob
  n = jnp.maximum(context.num_tokens, 1.0)
  per_token = w * nll if token_loss is None else w * nll + token_loss
  local = jnp.sum(jnp.where(mask > 0, per_token, 0.0)) / n
  if axis_name is None:
    loss = local
  else:
    total = jax.lax.psum(jax.lax.stop_gradient(local), axis_name)
    loss = local + jax.lax.stop_gradient(total - local)
  aux = _aux(stats, w, jax.lax.stop_gradient(nll), mask, config, axis_name, context, targets, diagnose,
             None if token_loss is None else jax.lax.stop_gradient(token_loss))
  aux["loss"] = jax.lax.stop_gradient(loss)
  return loss, aux


def accumulate_aux(total: dict, step: dict) -> dict:
  """Combines the aux of one more micro-step into `total` (sum of global means, max, or keep; histograms add
  their counts and sums and take min/max; dumped rows stay those of the first micro-step)."""
  keep = {"tokens"} | registry.batch_aux_keys()
  out = {}
  for k, v in step.items():
    if k.startswith(DUMP_PREFIX):
      out[k] = total[k]
    elif token_histograms.is_histogram_key(k):
      out[k] = token_histograms.combine(k, total[k], v)
    elif k in keep:
      out[k] = v
    elif k in AUX_MAX:
      out[k] = jnp.maximum(total[k], v)
    else:
      out[k] = total[k] + v
  return out
