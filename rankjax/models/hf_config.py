"""Model config <-> Hugging Face `config.json` (Llama 3.x, Qwen2/2.5, Qwen3).

Every field of an imported config.json is accounted for: it is either mapped onto a
rankjax model field, checked to hold a value rankjax implements (e.g. `hidden_act` must be
"silu", sliding-window attention must be off), or known to be bookkeeping with no effect
on the network. Anything else is an error naming the field, so a checkpoint whose
architecture differs in a way rankjax would silently get wrong is never loaded.
"""

from __future__ import annotations

import json
import os

import ml_collections

from rankjax.models import config as model_config
from rankjax.models.errors import DataFileNotFoundError, InputError

HF_MODEL_TYPES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}

# Fields that copy straight onto a rankjax model field.
_DIRECT = {
    "vocab_size": "vocab_size", "hidden_size": "hidden_size", "intermediate_size": "mlp_dim",
    "num_hidden_layers": "num_layers", "num_attention_heads": "num_heads", "num_key_value_heads": "num_kv_heads",
    "rms_norm_eps": "norm_eps", "tie_word_embeddings": "tie_embeddings",
    "max_position_embeddings": "max_position_embeddings",
}
# Fields that cannot change the network's logits, by family: accepted and not used. The one list of them (each
# family has a test in tests/test_hf_config_fields.py); any field not here, not mapped and not checked is refused.
HARMLESS_FIELDS = {
    # Token ids the tokenizer and the generation loop use; the weights do not depend on them (bos/eos are read).
    "token ids": ("pad_token_id", "unk_token_id", "sep_token_id", "mask_token_id", "cls_token_id",
                  "decoder_start_token_id"),
    # How transformers runs or returns the model: the KV cache, output structure, TorchScript.
    "runtime switches": ("use_cache", "return_dict", "output_hidden_states", "output_attentions", "torchscript",
                         "use_bfloat16", "tf_legacy_loss", "chunk_size_feed_forward", "pruned_heads"),
    # Who wrote the file and for which task head (rankjax reads the causal-LM weights only).
    "provenance": ("architectures", "model_type", "transformers_version", "name_or_path", "tokenizer_class",
                   "finetuning_task", "id2label", "label2id", "problem_type", "prefix", "task_specific_params"),
    # The dtype the weights were saved in: rankjax reads each tensor's own dtype and casts to config.model's.
    "storage dtype": ("torch_dtype", "dtype"),
    # Initialisation of new weights; loaded weights are what they are.
    "initialisation": ("initializer_range",),
    # Sliding-window layer count: no effect while use_sliding_window is False (checked below).
    "sliding window bookkeeping": ("max_window_layers",),
    # Generation defaults of older config.json files (transformers < 4.41): decoding settings, not the network.
    "generation defaults": ("max_length", "min_length", "do_sample", "early_stopping", "num_beams", "temperature",
                            "top_k", "top_p", "typical_p", "repetition_penalty", "length_penalty",
                            "no_repeat_ngram_size", "num_return_sequences", "bad_words_ids", "num_beam_groups",
                            "diversity_penalty", "forced_bos_token_id", "forced_eos_token_id",
                            "remove_invalid_values", "encoder_no_repeat_ngram_size", "begin_suppress_tokens",
                            "suppress_tokens", "exponential_decay_length_penalty"),
    # A quantisation recipe: harmless only when the tensors are already dequantised (e.g. written by transformers
    # from a GGUF file); a quantised tensor (integer dtype, or scales beside it) is refused when the weights load.
    "quantisation (dequantised weights)": ("quantization_config",),
}
_IGNORED = {name for names in HARMLESS_FIELDS.values() for name in names}
# Fields rankjax supports only at one value: field -> (allowed values, what it would take).
_REQUIRED = {
    "hidden_act": (("silu",), "a SwiGLU MLP with SiLU"),
    "attention_dropout": ((0, 0.0), "no attention dropout"),
    "pretraining_tp": ((1,), "no tensor-parallel slicing of the MLP"),
    "mlp_bias": ((False,), "no MLP biases"),
    "use_sliding_window": ((False,), "full attention in every layer"),
    "use_mrope": ((False,), "1-D rotary positions"),
    "is_encoder_decoder": ((False,), "a decoder-only model"),
    "add_cross_attention": ((False,), "no cross-attention"),
    "tie_encoder_decoder": ((False,), "a decoder-only model"),
    "is_decoder": ((False, True), "a decoder-only model"),
}
_ROPE_KEYS = {"rope_theta", "rope_type", "type", "factor", "low_freq_factor", "high_freq_factor",
              "original_max_position_embeddings"}


class HFConfigError(InputError):
  """A config.json field rankjax cannot honour; the message names the file and the field."""


def _rope_fields(hf: dict, source: str) -> dict:
  """rankjax RoPE fields from either transformers-5 `rope_parameters` or the older `rope_theta` + `rope_scaling`."""
  params = dict(hf.get("rope_parameters") or {})
  if "rope_theta" in hf:
    params.setdefault("rope_theta", hf["rope_theta"])
  params.update(hf.get("rope_scaling") or {})
  unknown = sorted(set(params) - _ROPE_KEYS)
  if unknown:
    raise HFConfigError(f"{source}: RoPE field {unknown[0]!r} is not supported (supported: {sorted(_ROPE_KEYS)})")
  kind = params.get("rope_type", params.get("type", "default"))
  out = {"rope_theta": float(params.get("rope_theta", 10000.0))}
  if kind == "default":
    out["rope_scaling"] = "none"
  elif kind == "llama3":
    out.update(rope_scaling="llama3", rope_scaling_factor=float(params["factor"]),
               rope_low_freq_factor=float(params["low_freq_factor"]),
               rope_high_freq_factor=float(params["high_freq_factor"]),
               rope_original_max_positions=int(params["original_max_position_embeddings"]))
  else:
    raise HFConfigError(f"{source}: rope type {kind!r} is not supported (supported: 'default', 'llama3')")
  return out


def config_from_hf(hf: dict, source: str = "config.json") -> ml_collections.ConfigDict:
  """A rankjax model ConfigDict (float32, no remat) equivalent to the HF config dict `hf`.

  Raises HFConfigError naming `source` and the field for an unknown model type, an unknown
  field, or a field whose value rankjax does not implement.
  """
  model_type = hf.get("model_type")
  if model_type not in HF_MODEL_TYPES:
    raise HFConfigError(f"{source}: model_type={model_type!r} is not supported (supported: {sorted(HF_MODEL_TYPES)})")
  c = model_config.default_config()
  c.architecture = model_type
  for hf_key, key in _DIRECT.items():
    if hf_key in hf and hf[hf_key] is not None:
      c[key] = type(c[key])(hf[hf_key])
  c.head_dim = int(hf.get("head_dim") or 0)
  c.update(_rope_fields(hf, source))
  bias = bool(hf.get("attention_bias", False))
  c.qkv_bias = model_type == "qwen2" or bias
  c.out_bias = model_type != "qwen2" and bias
  c.qk_norm = model_type == "qwen3"
  if hf.get("bos_token_id") is not None:
    c.bos_token_id = int(hf["bos_token_id"])
  eos = hf.get("eos_token_id")
  if eos is not None:
    c.eos_token_ids = tuple(int(e) for e in (eos if isinstance(eos, list) else [eos]))

  handled = set(_DIRECT) | _IGNORED | {"head_dim", "rope_theta", "rope_scaling", "rope_parameters", "attention_bias",
                                        "bos_token_id", "eos_token_id", "sliding_window", "layer_types"}
  for key, value in hf.items():
    if key.startswith("_"):
      continue
    if key in _REQUIRED:
      allowed, meaning = _REQUIRED[key]
      if value not in allowed:
        raise HFConfigError(f"{source}: {key}={value!r} is not supported: rankjax implements {meaning} "
                            f"({key} in {list(allowed)})")
    elif key == "layer_types" and any(t != "full_attention" for t in value):
      raise HFConfigError(f"{source}: layer_types={value!r}: rankjax implements full attention in every layer")
    elif key not in handled:
      raise HFConfigError(f"{source}: unknown field {key!r}={value!r}; rankjax does not know how it changes the model")
  model_config.validate_config(c)
  return c


def config_to_hf(config) -> dict:
  """The HF config.json dict (transformers-5 layout, readable by older versions too) of a rankjax model config."""
  hd = model_config.head_dim(config)
  rope = {"rope_theta": float(config.rope_theta), "rope_type": "default"}
  if config.rope_scaling == "llama3":
    rope.update(rope_type="llama3", factor=float(config.rope_scaling_factor),
                low_freq_factor=float(config.rope_low_freq_factor), high_freq_factor=float(config.rope_high_freq_factor),
                original_max_position_embeddings=int(config.rope_original_max_positions))
  hf = {
      "architectures": [HF_MODEL_TYPES[config.architecture]], "model_type": config.architecture,
      "vocab_size": int(config.vocab_size), "hidden_size": int(config.hidden_size),
      "intermediate_size": int(config.mlp_dim), "num_hidden_layers": int(config.num_layers),
      "num_attention_heads": int(config.num_heads), "num_key_value_heads": int(config.num_kv_heads),
      "head_dim": hd, "hidden_act": "silu", "rms_norm_eps": float(config.norm_eps),
      "max_position_embeddings": int(config.max_position_embeddings),
      "tie_word_embeddings": bool(config.tie_embeddings), "attention_dropout": 0.0,
      "rope_theta": rope["rope_theta"], "rope_parameters": rope,
      "dtype": str(config.param_dtype),
      "bos_token_id": int(config.bos_token_id) if config.bos_token_id >= 0 else None,
  }
  eos = [int(e) for e in config.eos_token_ids if e >= 0]
  hf["eos_token_id"] = (eos[0] if len(eos) == 1 else eos) if eos else None
  if config.rope_scaling != "none":
    hf["rope_scaling"] = rope
  if config.architecture == "qwen2":
    if config.qkv_bias is not True or config.out_bias or config.qk_norm:
      raise HFConfigError("export as qwen2 needs qkv_bias=True, out_bias=False, qk_norm=False")
    hf.update(use_sliding_window=False, sliding_window=None)
  elif config.architecture == "qwen3":
    if not config.qk_norm or config.qkv_bias != config.out_bias:
      raise HFConfigError("export as qwen3 needs qk_norm=True and qkv_bias == out_bias")
    hf.update(attention_bias=bool(config.qkv_bias), use_sliding_window=False, sliding_window=None)
  else:
    if config.qk_norm or config.qkv_bias != config.out_bias:
      raise HFConfigError("export as llama needs qk_norm=False and qkv_bias == out_bias (HF attention_bias)")
    hf.update(attention_bias=bool(config.qkv_bias), mlp_bias=False, pretraining_tp=1)
  return hf


def read_hf_config(path: str) -> ml_collections.ConfigDict:
  """`config_from_hf` of `path`/config.json (or `path` itself when it is the json file)."""
  file = path if path.endswith(".json") else os.path.join(path, "config.json")
  if not os.path.isfile(file):
    raise DataFileNotFoundError(f"no Hugging Face config at {file}")
  with open(file, encoding="utf-8-sig") as f:  # -sig: a leading byte-order mark is not JSON
    try:
      hf = json.load(f)
    except json.JSONDecodeError as e:
      raise HFConfigError(f"{file}: not valid JSON ({e})") from e
  return config_from_hf(hf, file)
