"""The jit-able train step: gradient accumulation over micro-steps with global-batch token normalisation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from rankjax import losses

BATCH_KEYS = ("inputs", "targets", "loss_mask", "segment_ids", "positions")


def model_logits(model, params, micro: dict, return_hidden: bool = False):
  """Logits [b, T, V] of one micro-batch, or (hidden [b, T, d], LM-head kernel [d, V])."""
  return model.apply({"params": params}, micro["inputs"], positions=micro["positions"],
                     segment_ids=micro["segment_ids"], return_hidden=return_hidden)


def micro_batch_loss(model, params, micro: dict, loss_config, context=None):
  """(loss, aux) of one micro-batch: the fused LM-head loss when loss_config.fused, else dense logits."""
  if loss_config.fused:
    hidden, kernel = model_logits(model, params, micro, return_hidden=True)
    return losses.linear_weighted_loss(hidden, kernel, micro["targets"], micro["loss_mask"], loss_config,
                                       context=context)
  return losses.weighted_loss(model_logits(model, params, micro), micro["targets"], micro["loss_mask"],
                              loss_config, context=context)


def micro_batch_log_prob(model, params, micro: dict, loss_config):
  """log p_t [b, T] (nats) of one micro-batch, forward only."""
  targets = jnp.where(micro["loss_mask"] > 0, micro["targets"], 0)
  if loss_config.fused:
    hidden, kernel = model_logits(model, params, micro, return_hidden=True)
    mask = micro["loss_mask"] if loss_config.compact_tokens else None
    return losses.linear_token_stats(hidden, kernel, targets, loss_config.token_chunk, mask=mask,
                                     vocab_chunk=loss_config.vocab_chunk, with_expected_rank=False)[0].log_prob
  return losses.token_stats(model_logits(model, params, micro), targets, with_expected_rank=False).log_prob


def make_train_step(model, loss_config, schedule: optax.Schedule):
  """Returns step(state, batch) -> (state, metrics).

  `batch` holds arrays [A, b, T] (A accumulation micro-steps of b sequences). The
  gradient is that of the loss over all A*b sequences: every micro-step divides by the
  supervised-token count of the whole batch, and TALR's median is taken over the whole
  batch in a forward-only pre-pass. A step whose loss, gradient or updated parameters are
  not finite leaves the state unchanged and reports `nonfinite = 1`.
  """
  losses.validate_config(loss_config)

  def micro_loss(params, micro, context):
    return micro_batch_loss(model, params, micro, loss_config, context)

  def context_of(params, batch):
    if loss_config.name == "talr" and batch["inputs"].shape[0] == 1:
      return None  # one micro-step: the loss builds TALR's context in its own forward pass
    if loss_config.name != "talr":
      return losses.BatchContext(num_tokens=jnp.sum(batch["loss_mask"] > 0).astype(jnp.float32))
    log_probs = jax.lax.map(lambda micro: micro_batch_log_prob(model, params, micro, loss_config), batch)
    return losses.batch_context(log_probs, batch["loss_mask"], loss_config)

  def step(state: train_state.TrainState, batch: dict):
    batch = {k: batch[k] for k in BATCH_KEYS}
    params = state.params
    context = context_of(params, batch)
    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)
    first = jax.tree.map(lambda x: x[0], batch)
    (_, aux0), grads0 = grad_fn(params, first, context)

    def body(carry, micro):
      grads, aux = carry
      (_, aux_i), grads_i = grad_fn(params, micro, context)
      return (jax.tree.map(jnp.add, grads, grads_i), losses.accumulate_aux(aux, aux_i)), None

    rest = jax.tree.map(lambda x: x[1:], batch)
    (grads, aux), _ = jax.lax.scan(body, (grads0, aux0), rest)

    grad_norm = optax.tree.norm(grads)
    new_state = state.apply_gradients(grads=grads)
    finite = (jnp.isfinite(aux["loss"]) & jnp.isfinite(grad_norm)
              & jnp.isfinite(optax.tree.norm(new_state.params)))
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
    metrics = dict(aux, grad_norm=grad_norm, learning_rate=schedule(state.step),
                   nonfinite=1.0 - finite.astype(jnp.float32))
    return new_state, metrics

  return step
