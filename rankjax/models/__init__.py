"""Llama-style decoder-only transformers in Flax Linen."""

import jax
import jax.numpy as jnp
import flax.linen as nn
import ml_collections

from rankjax.models.config import default_config, validate_config
from rankjax.models.decoder import DecoderLayer, Transformer, init_cache
from rankjax.models.hf_checkpoint import build_hf_model, from_pretrained, load_params, save_pretrained
from rankjax.models.hf_config import HFConfigError, config_from_hf, config_to_hf, read_hf_config
from rankjax.models.generate import SamplingConfig, generate
from rankjax.models.params import abstract_params, model_shardings
from rankjax.models.sharding import DEFAULT_RULES, make_mesh, param_shardings
from rankjax.models.tokenizer import HFTokenizer, load_hf_tokenizer


def build_model(config) -> Transformer:
  """Validates `config` (a model ConfigDict) and returns the Flax module (hashable: its config is frozen)."""
  validate_config(config)
  return Transformer(ml_collections.FrozenConfigDict(config))


def init_params(model: Transformer, rng: jax.Array, seq_len: int = 8):
  """Initialises parameters (unboxed: plain arrays; `nn.get_partition_spec` of the boxed
  tree gives logical axes)."""
  variables = model.init(rng, jnp.zeros((1, seq_len), jnp.int32))
  return nn.meta.unbox(variables["params"])


def logical_axes(model: Transformer):
  """Pytree of logical axis names (PartitionSpec of logical names) for each parameter."""
  return abstract_params(model)[0]


def count_params(params) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(params))


__all__ = ["default_config", "validate_config", "Transformer", "DecoderLayer", "init_cache", "build_model", "init_params",
           "logical_axes", "count_params", "from_pretrained", "save_pretrained", "build_hf_model", "load_params",
           "HFConfigError", "config_from_hf", "config_to_hf", "read_hf_config", "DEFAULT_RULES", "make_mesh",
           "param_shardings", "abstract_params", "model_shardings", "SamplingConfig", "generate", "HFTokenizer", "load_hf_tokenizer"]
