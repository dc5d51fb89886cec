"""AdamW with linear warmup, cosine decay, global-norm clipping and weight decay on matrices only."""

from __future__ import annotations

import jax
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


def make_optimizer(config, total_steps: int) -> optax.GradientTransformation:
  """Builds the optax chain: [clip] -> AdamW(schedule, masked weight decay)."""
  if total_steps <= 0:
    raise ValueError(f"total_steps={total_steps} must be positive")
  schedule = learning_rate_schedule(config, total_steps)
  parts = [optax.clip_by_global_norm(config.clip_norm)] if config.clip_norm > 0 else []
  parts.append(optax.adamw(schedule, b1=config.b1, b2=config.b2, eps=config.eps,
                           weight_decay=config.weight_decay, mask=decay_mask))
  return optax.chain(*parts)
