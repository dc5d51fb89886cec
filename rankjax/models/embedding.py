"""Token embedding, usable as the (tied) output projection."""

import flax.linen as nn
import jax
import jax.numpy as jnp


class Embed(nn.Module):
  """Lookup table [vocab, embed]; `attend` maps hidden states back to vocabulary scores."""

  vocab_size: int
  features: int
  init_std: float = 0.02
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.embedding = self.param("embedding", nn.with_logical_partitioning(nn.initializers.normal(self.init_std), ("vocab", "embed")),
                                (self.vocab_size, self.features), self.param_dtype)

  def __call__(self, ids: jax.Array) -> jax.Array:
    return jnp.take(self.embedding, ids, axis=0).astype(self.dtype)

  def attend(self, x: jax.Array) -> jax.Array:
    return x.astype(self.dtype) @ self.embedding.astype(self.dtype).T
