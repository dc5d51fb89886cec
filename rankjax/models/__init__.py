"""Llama-style decoder-only transformers in Flax Linen; Hugging Face checkpoint import and export.

Generation (the sampling engine, `SamplingConfig`, `generate`) lives in `rankjax.sampling`, one floor up."""

from rankjax.models.config import default_config, validate_config
from rankjax.models.decoder import DecoderLayer, Transformer, build_model, init_cache, init_params
from rankjax.models.hf_checkpoint import (InitFrom, build_hf_model, check_init_from_workdir, from_pretrained,
                                          load_params, read_model_config, resolve_init_from,
                                          save_pretrained)
from rankjax.models.gguf_checkpoint import GGUFError, is_gguf
from rankjax.models.hf_config import HFConfigError, config_from_hf, config_to_hf, read_hf_config
from rankjax.models.params import abstract_params, count_params, logical_axes, model_shardings
from rankjax.models.sharding import DEFAULT_RULES, MESH_AXES, check_mesh_sizes, make_mesh, param_shardings

__all__ = ["default_config", "validate_config", "Transformer", "DecoderLayer", "init_cache", "build_model", "init_params",
           "logical_axes", "count_params", "from_pretrained", "save_pretrained", "build_hf_model", "load_params",
           "InitFrom", "resolve_init_from", "check_init_from_workdir", "HFConfigError", "config_from_hf", "config_to_hf",
           "read_hf_config", "read_model_config", "GGUFError", "is_gguf", "DEFAULT_RULES", "MESH_AXES", "check_mesh_sizes", "make_mesh", "param_shardings",
           "abstract_params", "model_shardings"]
