"""SwiGLU feed-forward block."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from rankjax.models.sharding import constrain_activations

HIDDEN_AXES = ("activation_batch", "activation_length", "activation_mlp")


class SwiGLU(nn.Module):
  """down(silu(gate(x)) * up(x))."""

  mlp_dim: int
  init_std: float = 0.02
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d = x.shape[-1]
    init = nn.initializers.normal(self.init_std)
    gate = self.param("gate", nn.with_logical_partitioning(init, ("embed", "mlp")), (d, self.mlp_dim), self.param_dtype)
    up = self.param("up", nn.with_logical_partitioning(init, ("embed", "mlp")), (d, self.mlp_dim), self.param_dtype)
    down = self.param("down", nn.with_logical_partitioning(init, ("mlp", "embed")), (self.mlp_dim, d), self.param_dtype)
    x = x.astype(self.dtype)
    h = jax.nn.silu(x @ gate.astype(self.dtype)) * (x @ up.astype(self.dtype))
    return constrain_activations(constrain_activations(h, HIDDEN_AXES) @ down.astype(self.dtype))
