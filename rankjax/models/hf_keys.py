"""The declarative map between rankjax parameter paths and Hugging Face tensor names and layouts.

Layouts:
  "same":   identical array (the embedding [vocab, hidden]).
  "vector": HF stores a 1-D tensor; rankjax may split it (a q bias [heads * head_dim] is [heads, head_dim]).
  "linear": HF stores `nn.Linear.weight` [out, in]; rankjax stores [*in_dims, *out_dims] with the
            first `in_ndim` axes the input (q [hidden, heads, head_dim]: in_ndim 1;
            o [heads, head_dim, hidden]: in_ndim 2). Import is transpose-then-reshape.
Llama, Qwen2 and Qwen3 share names; a rule with `when` applies only if that config flag holds.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class KeyRule:
  hf: str  # tensor name; "{i}" is the layer index
  path: str  # rankjax parameter path, "/"-separated; "{i}" is the layer index
  layout: str  # "same" | "vector" | "linear"
  in_ndim: int = 1
  when: str = ""  # "", "qkv_bias", "out_bias", "qk_norm" or "untied"


_LAYER = "model.layers.{i}."
RULES = (
    KeyRule("model.embed_tokens.weight", "embed/embedding", "same"),
    KeyRule("model.norm.weight", "final_norm/scale", "vector"),
    KeyRule("lm_head.weight", "lm_head", "linear", when="untied"),
    KeyRule(_LAYER + "input_layernorm.weight", "layer_{i}/attn_norm/scale", "vector"),
    KeyRule(_LAYER + "post_attention_layernorm.weight", "layer_{i}/mlp_norm/scale", "vector"),
    KeyRule(_LAYER + "self_attn.q_proj.weight", "layer_{i}/attn/q", "linear"),
    KeyRule(_LAYER + "self_attn.k_proj.weight", "layer_{i}/attn/k", "linear"),
    KeyRule(_LAYER + "self_attn.v_proj.weight", "layer_{i}/attn/v", "linear"),
    KeyRule(_LAYER + "self_attn.o_proj.weight", "layer_{i}/attn/o", "linear", in_ndim=2),
    KeyRule(_LAYER + "self_attn.q_proj.bias", "layer_{i}/attn/q_bias", "vector", when="qkv_bias"),
    KeyRule(_LAYER + "self_attn.k_proj.bias", "layer_{i}/attn/k_bias", "vector", when="qkv_bias"),
    KeyRule(_LAYER + "self_attn.v_proj.bias", "layer_{i}/attn/v_bias", "vector", when="qkv_bias"),
    KeyRule(_LAYER + "self_attn.o_proj.bias", "layer_{i}/attn/o_bias", "vector", when="out_bias"),
    KeyRule(_LAYER + "self_attn.q_norm.weight", "layer_{i}/attn/q_norm/scale", "vector", when="qk_norm"),
    KeyRule(_LAYER + "self_attn.k_norm.weight", "layer_{i}/attn/k_norm/scale", "vector", when="qk_norm"),
    KeyRule(_LAYER + "mlp.gate_proj.weight", "layer_{i}/mlp/gate", "linear"),
    KeyRule(_LAYER + "mlp.up_proj.weight", "layer_{i}/mlp/up", "linear"),
    KeyRule(_LAYER + "mlp.down_proj.weight", "layer_{i}/mlp/down", "linear"),
)
# Tensors some checkpoints carry that hold nothing to load (recomputed RoPE buffers).
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def _applies(rule: KeyRule, config) -> bool:
  if rule.when == "untied":
    return not config.tie_embeddings
  return not rule.when or bool(config[rule.when])


def key_map(config) -> list[tuple[str, tuple[str, ...], KeyRule]]:
  """Every (HF tensor name, rankjax param path tuple, rule) of a model config, in checkpoint order."""
  out = []
  for rule in RULES:
    if not _applies(rule, config):
      continue
    layers = range(config.num_layers) if "{i}" in rule.hf else [None]
    for i in layers:
      hf, path = (rule.hf, rule.path) if i is None else (rule.hf.format(i=i), rule.path.format(i=i))
      out.append((hf, tuple(path.split("/")), rule))
  return out


def hf_shape(rule: KeyRule, shape: tuple[int, ...]) -> tuple[int, ...]:
  """The HF tensor shape of a rankjax parameter of `shape`."""
  if rule.layout == "same":
    return tuple(shape)
  if rule.layout == "vector":
    return (int(np.prod(shape)),)
  return (int(np.prod(shape[rule.in_ndim:])), int(np.prod(shape[:rule.in_ndim])))


def to_rankjax(rule: KeyRule, hf_array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  """The HF tensor rearranged to the rankjax layout `shape` (a view when possible: no bytes copied)."""
  if rule.layout == "linear":
    return hf_array.T.reshape(shape)
  return hf_array.reshape(shape)


def to_hf(rule: KeyRule, array: np.ndarray) -> np.ndarray:
  """The rankjax parameter rearranged to the HF layout."""
  return array.reshape(hf_shape(rule, array.shape)[::-1]).T if rule.layout == "linear" else \
      array.reshape(hf_shape(rule, array.shape))
