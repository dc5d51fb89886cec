"""rankjax's decoder gives the logits of Hugging Face's LlamaForCausalLM with the same weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rankjax import models

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _to_torch_state_dict(params, c):
  hd = models.config.head_dim(c)
  t = lambda x: torch.from_numpy(np.asarray(x, np.float32).copy())  # noqa: E731
  sd = {"model.embed_tokens.weight": t(params["embed"]["embedding"]), "model.norm.weight": t(params["final_norm"]["scale"])}
  for i in range(c.num_layers):
    p, pre = params[f"layer_{i}"], f"model.layers.{i}."
    for name in ("q", "k", "v"):
      k = np.asarray(p["attn"][name])
      sd[pre + f"self_attn.{name}_proj.weight"] = t(k.reshape(c.hidden_size, -1).T)
    sd[pre + "self_attn.o_proj.weight"] = t(np.asarray(p["attn"]["o"]).reshape(c.num_heads * hd, c.hidden_size).T)
    sd[pre + "mlp.gate_proj.weight"] = t(np.asarray(p["mlp"]["gate"]).T)
    sd[pre + "mlp.up_proj.weight"] = t(np.asarray(p["mlp"]["up"]).T)
    sd[pre + "mlp.down_proj.weight"] = t(np.asarray(p["mlp"]["down"]).T)
    sd[pre + "input_layernorm.weight"] = t(p["attn_norm"]["scale"])
    sd[pre + "post_attention_layernorm.weight"] = t(p["mlp_norm"]["scale"])
  sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
  return sd


def test_logits_match_hf_llama():
  c = models.default_config()
  c.vocab_size, c.hidden_size, c.num_layers, c.num_heads, c.num_kv_heads, c.mlp_dim = 101, 64, 2, 4, 2, 96
  c.rope_theta = 500000.0
  c.init_std = 0.2  # large weights so every layer matters
  model = models.build_model(c)
  params = models.init_params(model, jax.random.PRNGKey(0))
  params = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.PRNGKey(1), x.shape), params)  # non-unit norms

  hf_config = transformers.LlamaConfig(
      vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.mlp_dim, num_hidden_layers=c.num_layers,
      num_attention_heads=c.num_heads, num_key_value_heads=c.num_kv_heads, rms_norm_eps=c.norm_eps,
      rope_theta=c.rope_theta, tie_word_embeddings=True, attention_bias=False, mlp_bias=False,
      max_position_embeddings=256)
  hf_config._attn_implementation = "eager"
  hf = transformers.LlamaForCausalLM(hf_config).eval()
  missing, unexpected = hf.load_state_dict(_to_torch_state_dict(params, c), strict=False)
  assert not [m for m in missing if "rotary" not in m] and not unexpected, (missing, unexpected)

  ids = np.random.default_rng(0).integers(0, c.vocab_size, size=(2, 17))
  with torch.no_grad():
    expected = hf(torch.from_numpy(ids)).logits.numpy()
  got = np.asarray(model.apply({"params": params}, jnp.asarray(ids, jnp.int32)))
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
