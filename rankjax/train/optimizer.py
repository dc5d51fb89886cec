"""AdamW with linear warmup, cosine decay, global-norm clipping and weight decay on matrices only."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax


def default_config() -> ml_collections.ConfigDict:
  """Returns the optimizer config (the paper's recipe: betas (0.9, 0.95), wd 0.01, clip 1.0, 10% warmup)."""
  c = ml_collections.ConfigDict()
  c.learning_rate = 5e-5  # peak
  c.warmup_fraction = 0.1  # of total_steps
  c.end_lr_fraction = 0.0  # cosine decays to peak * end_lr_fraction
  c.b1 = 0.9
  c.b2 = 0.95
  c.eps = 1e-8
  c.weight_decay = 0.01
  c.clip_norm = 1.0  # global-norm clipping; 0 disables
  # "float32": gradients, Adam moments and the update are float32 even for bfloat16 params
  # (only the stored params are rounded); "param": the optimizer works in the params' dtype.
  c.state_dtype = "float32"
  return c


def learning_rate_schedule(config, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to the peak over warmup_fraction * total_steps, then cosine decay."""
  warmup = int(round(config.warmup_fraction * total_steps))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=config.learning_rate, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1), end_value=config.learning_rate * config.end_lr_fraction)


def decay_mask(params):
  """True for parameters with weight decay: matrices and embeddings; norms' scales and biases (ndim < 2) are excluded."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def in_float32(inner: optax.GradientTransformation) -> optax.GradientTransformation:
  """Runs `inner` on float32 copies of gradients and params (so its state is float32) and
  returns updates in the params' dtype."""
  f32 = lambda tree: jax.tree.map(lambda x: x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x,  # noqa: E731
                                  tree)

  def init(params):
    return inner.init(f32(params))

  def update(updates, state, params=None):
    new, state = inner.update(f32(updates), state, None if params is None else f32(params))
    return jax.tree.map(lambda u, g: u.astype(g.dtype), new, updates), state

  return optax.GradientTransformation(init, update)


def make_optimizer(config, total_steps: int) -> optax.GradientTransformation:
  """Builds the optax chain: [clip] -> AdamW(schedule, masked weight decay), in float32 if config.state_dtype says so."""
  if total_steps <= 0:
    raise ValueError(f"total_steps={total_steps} must be positive")
  if config.state_dtype not in ("float32", "param"):
    raise ValueError(f"optimizer.state_dtype={config.state_dtype!r} is not one of ('float32', 'param')")
  schedule = learning_rate_schedule(config, total_steps)
  parts = [optax.clip_by_global_norm(config.clip_norm)] if config.clip_norm > 0 else []
  parts.append(optax.adamw(schedule, b1=config.b1, b2=config.b2, eps=config.eps,
                           weight_decay=config.weight_decay, mask=decay_mask))
  chain = optax.chain(*parts)
  return in_float32(chain) if config.state_dtype == "float32" else chain
