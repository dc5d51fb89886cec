"""Model configuration of the Llama-style decoder."""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def default_config() -> ml_collections.ConfigDict:
  """Returns a tiny Llama-style config (about 1M parameters); every size is a field."""
  c = ml_collections.ConfigDict()
  c.vocab_size = 512
  c.hidden_size = 128
  c.num_layers = 4
  c.num_heads = 4
  c.num_kv_heads = 2  # grouped-query attention: num_heads must be a multiple
  c.head_dim = 0  # 0: hidden_size // num_heads
  c.mlp_dim = 384
  c.rope_theta = 10000.0
  c.norm_eps = 1e-5
  c.tie_embeddings = True
  c.qkv_bias = False
  c.dtype = "float32"  # compute dtype
  c.param_dtype = "float32"
  c.remat = False  # rematerialise each decoder layer in the backward pass
  c.init_std = 0.02
  return c


def resolve_dtype(name: str):
  """Maps a dtype name from the config to a jnp dtype, with a clear error."""
  if name not in DTYPES:
    raise ValueError(f"model config: dtype {name!r} is not one of {sorted(DTYPES)}")
  return DTYPES[name]


def head_dim(config) -> int:
  return int(config.head_dim) or int(config.hidden_size) // int(config.num_heads)


def validate_config(config) -> None:
  """Raises ValueError naming the field if the model sizes are inconsistent."""
  for field in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "mlp_dim"):
    if int(config[field]) <= 0:
      raise ValueError(f"model config: {field}={config[field]} must be positive")
  if config.num_heads % config.num_kv_heads:
    raise ValueError(f"model config: num_heads={config.num_heads} is not a multiple of num_kv_heads={config.num_kv_heads}")
  if not config.head_dim and config.hidden_size % config.num_heads:
    raise ValueError(f"model config: hidden_size={config.hidden_size} is not divisible by num_heads={config.num_heads}; set head_dim")
  if head_dim(config) % 2:
    raise ValueError(f"model config: head_dim={head_dim(config)} must be even for rotary embeddings")
  resolve_dtype(config.dtype)
  resolve_dtype(config.param_dtype)
