"""The jit-able pieces of an RL step: the behaviour policy's statistics and token weights (forward only), and the
policy update (clipped surrogate + KL, aggregated over completion tokens).

Both read the model's hidden states and LM head and compute per-token statistics with the fused, chunked
`losses.linear_token_stats` (no [tokens, V] logits), at the rollout temperature: logits / T, the distribution the
engine sampled from.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from rankjax import losses
from rankjax.losses import policy_gradient as pg
from rankjax.losses import weights as loss_weights
from rankjax.models import lora
from rankjax.rl import config as rl_config
from rankjax.train.train_step import model_logits

BATCH_KEYS = ("inputs", "targets", "loss_mask", "segment_ids", "positions")


def _stats(model, params, frozen, batch, temperature: float, token_chunk: int, expected_rank: str, full: bool):
  full_params = params if frozen is None else lora.combine(frozen, params)
  hidden, kernel = model_logits(model, full_params, batch, return_hidden=True)
  kernel = kernel / jnp.asarray(temperature, kernel.dtype) if temperature != 1.0 else kernel
  options = dict(with_entropy=True, with_rank=True, with_expected_rank=True, expected_rank=expected_rank) if full \
      else {}
  stats, _ = losses.linear_token_stats(hidden, kernel, batch["targets"], token_chunk=token_chunk,
                                       mask=batch["loss_mask"], kernel_grad=model.lora is None, **options)
  return stats


def _micro_steps(x, accum: int):
  """[N, ...] -> [accum, N / accum, ...]: micro-batch i holds rows i, i + accum, ... (with rows sharded in blocks
  over the devices, every device takes part in every micro-step)."""
  return x.reshape(x.shape[0] // accum, accum, *x.shape[1:]).swapaxes(0, 1)


def _rows(x):
  """The inverse of `_micro_steps`."""
  return x.swapaxes(0, 1).reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def make_behaviour_fn(model, config):
  """Returns fn(params, frozen, batch, ref_params) -> dict of [N, T] float32 arrays: `log_prob` of the sampled
  tokens under the current (behaviour) policy, `entropy_bits`, `rank`, `expected_rank`, the token `weight`
  (stop-gradient: 1, RankTuner's S_t, or the entropy_top selection over the whole batch), its `ln_scale` (ln S_t,
  RankTuner only) and `ref_log_prob` (the reference policy's, when rl.beta > 0; `ref_params` then are its full
  parameters, or for LoRA None: the frozen base with zero adapters). Forward only, in config.grad_accum_steps
  micro-batches."""
  rl = config.rl
  temperature, chunk = float(rl.temperature), int(config.loss.token_chunk)
  form = rl.ranktuner_form
  expected = config.loss.expected_rank
  accum = int(config.grad_accum_steps)

  def one(params, frozen, batch, ref_params):
    stats = _stats(model, params, frozen, batch, temperature, chunk, expected, full=True)
    out = {"log_prob": stats.log_prob, "entropy_bits": stats.entropy_bits, "rank": stats.rank.astype(jnp.float32),
           "expected_rank": stats.expected_rank}
    if rl.token_weight == "ranktuner":
      out["ln_scale"] = loss_weights.ranktuner_log_scale(stats, form, float(rl.ranktuner_bound_floor))
    if float(rl.beta) > 0:
      if frozen is not None:  # LoRA: the base is the reference (adapters at zero contribute nothing)
        ref = _stats(model, jax.tree.map(jnp.zeros_like, params), frozen, batch, temperature, chunk, expected, False)
      else:
        ref = _stats(model, ref_params, None, batch, temperature, chunk, expected, False)
      out["ref_log_prob"] = ref.log_prob
    return {k: v.astype(jnp.float32) for k, v in out.items()}

  def fn(params, frozen, batch, ref_params=None):
    batch = {k: batch[k] for k in BATCH_KEYS}
    mask = batch["loss_mask"]
    if accum == 1:
      out = one(params, frozen, batch, ref_params)
    else:
      micro = jax.tree.map(lambda x: _micro_steps(x, accum), batch)
      out = jax.tree.map(_rows, jax.lax.map(lambda b: one(params, frozen, b, ref_params), micro))
    if rl.token_weight == "ranktuner":
      out["weight"] = jnp.exp(out["ln_scale"])
    elif rl.token_weight == "entropy_top":
      out["weight"] = pg.entropy_top_weights(out["entropy_bits"], mask, float(rl.entropy_top_fraction))
    else:
      out["weight"] = jnp.ones_like(out["log_prob"])
    return {k: jax.lax.stop_gradient(v * mask) for k, v in out.items()}

  return fn


def token_loss(log_prob, behaviour: dict, advantages, mask, rl) -> tuple[jax.Array, dict]:
  """The per-token loss [N, T] and its statistics, from the current log-probs, the behaviour policy's statistics
  (`make_behaviour_fn`), per-sequence advantages [N] and the completion mask. Where the weight enters
  (rl.weight_placement): `surrogate` multiplies each token's whole term, w_t (clip surrogate + beta k3);
  `advantage` scales the advantage inside the clip, A w_t, and leaves the KL term unweighted. With beta = 0 and
  positive weights both give the same loss (min(r A w, clip(r) A w) = w min(r A, clip(r) A))."""
  w = behaviour["weight"]
  adv = advantages[:, None] * jnp.ones_like(log_prob)
  if rl.weight_placement == "advantage":
    adv = adv * w
  surrogate, ratio, clipped = pg.clipped_surrogate(log_prob, behaviour["log_prob"], adv, float(rl.epsilon),
                                                   rl_config.eps_high(rl))
  per_token = surrogate
  kl = pg.k3_kl(log_prob, behaviour["ref_log_prob"]) if float(rl.beta) > 0 else jnp.zeros_like(log_prob)
  if rl.weight_placement == "advantage":
    per_token = surrogate + float(rl.beta) * kl
  else:
    per_token = w * (surrogate + float(rl.beta) * kl)
  on = mask > 0
  aux = {"kl": jnp.sum(kl * mask), "clip_fraction": jnp.sum(clipped * mask), "ratio/mean": jnp.sum(ratio * mask),
         "ratio/min": jnp.min(jnp.where(on, ratio, jnp.inf)), "ratio/max": jnp.max(jnp.where(on, ratio, -jnp.inf))}
  return per_token, aux  # kl, clip_fraction and ratio/mean as sums over the tokens: the caller divides


def make_update_fn(model, config):
  """Returns update(state, frozen, batch, behaviour, advantages) -> (state, metrics): one optimizer step on the
  rollout batch (the adapters alone under LoRA), its gradient accumulated over config.grad_accum_steps
  micro-batches (rows i, i + A, i + 2A, ...: each device's rows take part in every micro-step) with the whole batch's
  token and sequence counts as normalisers, so any A gives the same update. A step whose loss or gradient is not
  finite leaves the state unchanged and reports nonfinite = 1."""
  rl = config.rl
  temperature, chunk = float(rl.temperature), int(config.loss.token_chunk)
  max_tokens = int(rl.length_normalizer) or int(rl.max_new_tokens)
  accum = int(config.grad_accum_steps)

  def loss_fn(params, frozen, batch, behaviour, advantages, num_tokens, num_sequences):
    mask = batch["loss_mask"]
    stats = _stats(model, params, frozen, batch, temperature, chunk, config.loss.expected_rank, full=False)
    per_token, aux = token_loss(stats.log_prob, behaviour, advantages, mask, rl)
    loss = pg.aggregate(per_token, mask, rl.aggregation, max_tokens, num_tokens, num_sequences)
    return loss, aux

  def update(state, frozen, batch, behaviour, advantages):
    batch = {k: batch[k] for k in BATCH_KEYS}
    num_tokens = jnp.maximum(jnp.sum(batch["loss_mask"]), 1.0)
    num_sequences = batch["loss_mask"].shape[0]
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def body(carry, xs):
      grads, loss, aux = carry
      (loss_i, aux_i), grads_i = grad_fn(state.params, frozen, *xs, num_tokens, num_sequences)
      merged = {k: (jnp.minimum if k == "ratio/min" else jnp.maximum if k == "ratio/max" else jnp.add)(aux[k], v)
                for k, v in aux_i.items()}
      return (jax.tree.map(jnp.add, grads, grads_i), loss + loss_i, merged), None

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    aux0 = {"kl": 0.0, "clip_fraction": 0.0, "ratio/mean": 0.0, "ratio/min": jnp.inf, "ratio/max": -jnp.inf}
    aux0 = {k: jnp.asarray(v, jnp.float32) for k, v in aux0.items()}
    xs = jax.tree.map(lambda x: _micro_steps(x, accum), (batch, behaviour, advantages))
    (grads, loss, aux), _ = jax.lax.scan(body, (zeros, jnp.zeros((), jnp.float32), aux0), xs)
    aux = {k: v / num_tokens if k in ("kl", "clip_fraction", "ratio/mean") else v for k, v in aux.items()}
    grad_norm = optax.tree.norm(grads)
    new_state = state.apply_gradients(grads=grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
    return state, {"loss": loss, "grad_norm": grad_norm, "nonfinite": 1 - finite.astype(jnp.int32), **aux}

  return update
