"""LoRA adapters written as a Hugging Face PEFT adapter (adapter_model.safetensors + adapter_config.json) that
`peft.PeftModel.from_pretrained` loads onto the transformers base model."""

from __future__ import annotations

import json
import os
import re

import jax
import numpy as np
import safetensors.numpy

from rankjax.models import hf_keys, lora
from rankjax.models.hf_checkpoint import _host_array

ADAPTER_FILE = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # PeftModel wraps the causal LM; its tensor names start with this


def _hf_module(hf_weight_name: str) -> str:
  return hf_weight_name[: -len(".weight")]


def adapter_tensors(model, adapters) -> dict[str, np.ndarray]:
  """{PEFT tensor name: array} of `adapters` (a LoRA model's adapter tree) in torch's layout:
  lora_A.weight [r, in] and lora_B.weight [out, r], float32 unless the adapters are of another dtype. Every process
  must call it (sharded adapters are gathered)."""
  out = {}
  for hf_name, path, rule in hf_keys.key_map(model.config):
    node = adapters
    for key in path[:-1]:
      node = node.get(key, {}) if isinstance(node, dict) else {}
    a = node.get(path[-1] + lora.SUFFIX_A) if isinstance(node, dict) else None
    if a is None:
      continue
    b = node[path[-1] + lora.SUFFIX_B]
    a, b = _host_array(a), _host_array(b)
    rank = a.shape[-1]
    module = PEFT_PREFIX + _hf_module(hf_name)
    out[module + ".lora_A.weight"] = np.ascontiguousarray(a.reshape(-1, rank).T)
    out[module + ".lora_B.weight"] = np.ascontiguousarray(b.reshape(rank, -1).T)
  return out


def _target_modules(names: list[str], num_layers: int) -> list[str] | str:
  """PEFT's `target_modules`: the projections' short names when every layer has the same ones, else a regex
  that PEFT matches in full against module names such as "model.layers.3.self_attn.q_proj"."""
  modules = sorted({n[len(PEFT_PREFIX):-len(".lora_A.weight")] for n in names if n.endswith(".lora_A.weight")})
  short = sorted({m.rsplit(".", 1)[-1] for m in modules})
  if len(modules) == len(short) * num_layers:
    return short
  return "|".join(re.escape(m) for m in modules)


def save_peft_adapter(model, adapters, path: str, base_model_name_or_path: str = "") -> None:
  """Writes `adapters` of the LoRA `model` to `path` as a PEFT adapter: adapter_model.safetensors and
  adapter_config.json (r, lora_alpha, target modules, dropout). Every process must call it; process 0 writes."""
  spec = model.lora
  if spec is None:
    raise ValueError("save_peft_adapter: the model has no LoRA adapters (config.lora.rank is 0)")
  tensors = adapter_tensors(model, adapters)
  if jax.process_index() != 0:
    return
  os.makedirs(path, exist_ok=True)
  config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": int(spec.rank), "lora_alpha": float(spec.alpha),
            "lora_dropout": float(spec.dropout), "target_modules": _target_modules(list(tensors),
                                                                                    int(model.config.num_layers)),
            "bias": "none", "fan_in_fan_out": False, "use_rslora": False, "inference_mode": True,
            "base_model_name_or_path": base_model_name_or_path, "modules_to_save": None}
  with open(os.path.join(path, "adapter_config.json"), "w", encoding="utf-8") as f:
    json.dump(config, f, indent=2, sort_keys=True)
  target = os.path.join(path, ADAPTER_FILE)
  safetensors.numpy.save_file(tensors, target + ".tmp", metadata={"format": "pt"})
  os.replace(target + ".tmp", target)
