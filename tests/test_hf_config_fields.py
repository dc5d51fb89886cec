"""HF config.json intake: the harmless fields (models.hf_config.HARMLESS_FIELDS) are accepted without changing the
model, fields that change the model are refused by name, and quantised tensors are refused when weights load."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from rankjax import models
from rankjax.models import hf_config
from rankjax.models.errors import InputError

# A value of the kind transformers writes for each harmless field (the reader ignores the value).
_SAMPLE = {
    "pad_token_id": 0, "unk_token_id": 0, "sep_token_id": 3, "mask_token_id": 4, "cls_token_id": 5,
    "decoder_start_token_id": 1, "use_cache": True, "return_dict": True, "output_hidden_states": False,
    "output_attentions": False, "torchscript": False, "use_bfloat16": False, "tf_legacy_loss": False,
    "chunk_size_feed_forward": 0, "pruned_heads": {}, "architectures": ["LlamaForCausalLM"], "model_type": None,
    "transformers_version": "4.57.1", "name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "tokenizer_class": "GPT2Tokenizer", "finetuning_task": None, "id2label": {"0": "LABEL_0"},
    "label2id": {"LABEL_0": 0}, "problem_type": None, "prefix": None, "task_specific_params": None,
    "torch_dtype": "bfloat16", "dtype": "bfloat16", "initializer_range": 0.041666, "max_window_layers": 28,
    "max_length": 20, "min_length": 0, "do_sample": False, "early_stopping": False, "num_beams": 1,
    "temperature": 1.0, "top_k": 50, "top_p": 1.0, "typical_p": 1.0, "repetition_penalty": 1.0,
    "length_penalty": 1.0, "no_repeat_ngram_size": 0, "num_return_sequences": 1, "bad_words_ids": None,
    "num_beam_groups": 1, "diversity_penalty": 0.0, "forced_bos_token_id": None, "forced_eos_token_id": None,
    "remove_invalid_values": False, "encoder_no_repeat_ngram_size": 0, "begin_suppress_tokens": None,
    "suppress_tokens": None, "exponential_decay_length_penalty": None,
    "quantization_config": {"quant_method": "gguf"},
}


def _tiny(architecture: str):
  c = models.default_config()
  c.update(architecture=architecture, vocab_size=64, hidden_size=32, mlp_dim=64, num_layers=2, num_heads=4,
           num_kv_heads=2, qkv_bias=architecture == "qwen2", qk_norm=architecture == "qwen3")
  return c


def _base(architecture: str) -> dict:
  return models.config_to_hf(_tiny(architecture))


def test_every_harmless_field_has_a_sample_value():
  assert set(_SAMPLE) == {f for fields in hf_config.HARMLESS_FIELDS.values() for f in fields}


@pytest.mark.parametrize("architecture", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("family", sorted(hf_config.HARMLESS_FIELDS))
def test_harmless_family_is_accepted_and_changes_nothing(family, architecture):
  base = _base(architecture)
  extended = dict(base)
  for field in hf_config.HARMLESS_FIELDS[family]:
    extended[field] = base["model_type"] if field == "model_type" else _SAMPLE[field]
  assert models.config_from_hf(extended).to_dict() == models.config_from_hf(base).to_dict()


def test_issue_case_unk_token_id_in_a_llama_config(tmp_path):
  """transformers writes unk_token_id into a Llama config.json (e.g. converting SmolLM2-135M-Instruct's GGUF)."""
  hf = _base("llama")
  hf.update(unk_token_id=0, pad_token_id=2, torch_dtype="float32", transformers_version="4.57.1", use_cache=True)
  (tmp_path / "config.json").write_text(json.dumps(hf))
  assert models.read_hf_config(str(tmp_path)).to_dict() == models.config_from_hf(_base("llama")).to_dict()


def test_config_json_with_a_byte_order_mark(tmp_path):
  (tmp_path / "config.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(_base("qwen2")).encode())
  assert models.read_hf_config(str(tmp_path)).architecture == "qwen2"


@pytest.mark.parametrize("change,match", [
    ({"is_encoder_decoder": True}, r"is_encoder_decoder=True is not supported: rankjax implements a decoder-only"),
    ({"add_cross_attention": True}, r"add_cross_attention=True is not supported"),
    ({"attn_logit_softcapping": 50.0}, r"unknown field 'attn_logit_softcapping'=50.0; rankjax does not know how it"),
    ({"hidden_act": "gelu"}, r"hidden_act='gelu' is not supported"),
], ids=["encoder_decoder", "cross_attention", "softcapping", "hidden_act"])
def test_fields_that_change_the_model_are_refused(change, match):
  hf = _base("llama")
  hf.update(change)
  with pytest.raises(models.HFConfigError, match=match):
    models.config_from_hf(hf, "the/config.json")


def test_quantised_tensor_is_refused_at_load(tmp_path):
  """quantization_config is accepted in config.json only because the weights must then be dequantised: an integer
  tensor (the codes of a quantised checkpoint) is refused by name, never cast to floats."""
  model = models.build_model(_tiny("llama"))
  shapes = jax.eval_shape(lambda: models.init_params(model, jax.random.PRNGKey(0)))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: jnp.asarray(0.02 * rng.standard_normal(s.shape), s.dtype), shapes)
  models.save_pretrained(model, params, str(tmp_path))
  config = json.loads((tmp_path / "config.json").read_text())
  config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_8bit": True}
  (tmp_path / "config.json").write_text(json.dumps(config))
  models.load_params(model, str(tmp_path))  # float tensors: quantization_config alone is harmless

  tensors = load_file(str(tmp_path / "model.safetensors"))
  name = "model.layers.0.mlp.down_proj.weight"
  tensors[name] = np.clip(np.round(tensors[name] * 1000), -127, 127).astype(np.int8)
  save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
  with pytest.raises(InputError, match=rf"tensor '{name}' is stored as int8: a quantised checkpoint"):
    models.load_params(model, str(tmp_path))
