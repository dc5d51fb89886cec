"""Model configuration of the Llama-style decoder."""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections

from rankjax.models.errors import ConfigError

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
ARCHITECTURES = ("llama", "qwen2", "qwen3")  # the Hugging Face model_type written on export
ROPE_SCALINGS = ("none", "llama3")
REMAT_POLICIES = ("none", "layer", "dots_saveable")
ATTENTION_IMPLS = ("xla", "dot_product_attention", "cudnn")


def default_config() -> ml_collections.ConfigDict:
  """Returns a tiny Llama-style config (about 1M parameters); every size is a field."""
  c = ml_collections.ConfigDict()
  c.architecture = "llama"  # one of ARCHITECTURES; decides the HF format on export
  c.vocab_size = 512
  c.hidden_size = 128
  c.num_layers = 4
  c.num_heads = 4
  c.num_kv_heads = 2  # grouped-query attention: num_heads must be a multiple
  c.head_dim = 0  # 0: hidden_size // num_heads
  c.mlp_dim = 384
  c.rope_theta = 10000.0
  # Llama 3.x long-context RoPE ("llama3": low frequencies divided by the factor, a smooth ramp between).
  c.rope_scaling = "none"
  c.rope_scaling_factor = 8.0
  c.rope_low_freq_factor = 1.0
  c.rope_high_freq_factor = 4.0
  c.rope_original_max_positions = 8192
  c.max_position_embeddings = 4096  # recorded for export; RoPE itself has no maximum
  c.norm_eps = 1e-5
  c.tie_embeddings = True
  c.qkv_bias = False  # biases on q/k/v (Qwen2)
  c.out_bias = False  # bias on the attention output projection (Llama with attention_bias=True)
  c.qk_norm = False  # RMSNorm over head_dim on queries and keys before RoPE (Qwen3)
  c.bos_token_id = -1  # -1: none; recorded for export
  c.eos_token_ids = (-1,)  # recorded for export and generation; (-1,): none
  c.dtype = "float32"  # compute dtype
  c.param_dtype = "float32"
  c.remat = "none"  # one of REMAT_POLICIES: "layer" recomputes each layer, "dots_saveable" keeps matmul outputs
  c.attention_impl = "xla"  # one of ATTENTION_IMPLS; "dot_product_attention" lets JAX pick (cuDNN flash on GPU)
  c.init_std = 0.02
  return c


def resolve_dtype(name: str):
  """Maps a dtype name from the config to a jnp dtype, with a clear error."""
  if name not in DTYPES:
    raise ConfigError(f"model config: dtype {name!r} is not one of {sorted(DTYPES)}")
  return DTYPES[name]


def head_dim(config) -> int:
  return int(config.head_dim) or int(config.hidden_size) // int(config.num_heads)


def validate_config(config) -> None:
  """Raises ConfigError naming the field if the model sizes are inconsistent."""
  for field in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "mlp_dim"):
    if int(config[field]) <= 0:
      raise ConfigError(f"model config: {field}={config[field]} must be positive")
  if config.num_heads % config.num_kv_heads:
    raise ConfigError(f"model config: num_heads={config.num_heads} is not a multiple of "
                      f"num_kv_heads={config.num_kv_heads}")
  if not config.head_dim and config.hidden_size % config.num_heads:
    raise ConfigError(f"model config: hidden_size={config.hidden_size} is not divisible by "
                      f"num_heads={config.num_heads}; set head_dim")
  if head_dim(config) % 2:
    raise ConfigError(f"model config: head_dim={head_dim(config)} must be even for rotary embeddings")
  resolve_dtype(config.dtype)
  resolve_dtype(config.param_dtype)
  for field, allowed in (("architecture", ARCHITECTURES), ("rope_scaling", ROPE_SCALINGS),
                         ("remat", REMAT_POLICIES), ("attention_impl", ATTENTION_IMPLS)):
    if config[field] not in allowed:
      raise ConfigError(f"model config: {field}={config[field]!r} is not one of {allowed}")
  if config.rope_scaling == "llama3" and not config.rope_high_freq_factor > config.rope_low_freq_factor:
    raise ConfigError("model config: rope_high_freq_factor must exceed rope_low_freq_factor for llama3 RoPE scaling")
