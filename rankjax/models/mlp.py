"""SwiGLU feed-forward block."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from rankjax.models.lora import LoraSpec, adapter_delta
from rankjax.models.quantized import projection_kernel
from rankjax.models.sharding import constrain_activations

HIDDEN_AXES = ("activation_batch", "activation_length", "activation_mlp")


class SwiGLU(nn.Module):
  """down(silu(gate(x)) * up(x))."""

  mlp_dim: int
  init_std: float = 0.02
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  lora: LoraSpec | None = None

  def _linear(self, name: str, x: jax.Array, shape: tuple[int, int], axes: tuple[str, str]) -> jax.Array:
    kernel = projection_kernel(self, name, nn.initializers.normal(self.init_std), shape, axes, self.param_dtype,
                               self.dtype)
    y = x @ kernel
    delta = adapter_delta(self, name, x, shape, 1, axes, self.lora, self.dtype, self.param_dtype)
    return y if delta is None else y + delta

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d = x.shape[-1]
    x = x.astype(self.dtype)
    h = jax.nn.silu(self._linear("gate", x, (d, self.mlp_dim), ("embed", "mlp"))) * \
        self._linear("up", x, (d, self.mlp_dim), ("embed", "mlp"))
    h = constrain_activations(h, HIDDEN_AXES)
    return constrain_activations(self._linear("down", h, (self.mlp_dim, d), ("mlp", "embed")))
