"""AdamW schedule and weight-decay mask."""

import jax.numpy as jnp
import numpy as np
import optax

from rankjax.train import optimizer


def test_warmup_then_cosine():
  c = optimizer.default_config()
  c.learning_rate, c.warmup_fraction, c.end_lr_fraction = 1e-3, 0.1, 0.0
  s = optimizer.learning_rate_schedule(c, 100)
  np.testing.assert_allclose([s(0), s(5), s(10), s(55), s(100)], [0.0, 5e-4, 1e-3, 5e-4, 0.0], atol=1e-9)


def test_weight_decay_skips_norms_and_biases():
  params = {"kernel": jnp.ones((2, 2)), "scale": jnp.ones((2,)), "bias": jnp.ones((2,))}
  c = optimizer.default_config()
  c.learning_rate, c.warmup_fraction, c.weight_decay, c.clip_norm = 0.1, 0.0, 0.5, 0.0
  tx = optimizer.make_optimizer(c, 10)
  zero = {k: jnp.zeros_like(v) for k, v in params.items()}
  updates, _ = tx.update(zero, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  assert float(new["kernel"][0, 0]) < 1.0  # decayed
  assert float(new["scale"][0]) == 1.0 and float(new["bias"][0]) == 1.0
