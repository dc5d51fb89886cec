"""Load Hugging Face checkpoints into rankjax models (sharded, tensor by tensor) and save them back."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from rankjax.models.errors import ConfigError, DataFileNotFoundError, InputError
from rankjax.models import config as model_config
from rankjax.models import gguf_checkpoint, hf_config, hf_keys, sharding
from rankjax.models.decoder import Transformer, build_model
from rankjax.models.params import abstract_params
from rankjax.models.safetensors_io import CheckpointReader, PendingTensor, write_checkpoint

# Files a checkpoint directory carries besides weights and config.json; copied on export when asked.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "generation_config.json", "vocab.json", "merges.txt", "tokenizer.model")
DEFAULT_MAX_SHARD_BYTES = 5 * 2**30



# A rankjax workdir as `models` must recognise it (config.init_from). The names are rankjax.rundir.layout's, spelled
# here because models sits on the bottom floor; tests/test_rundir.py checks that both agree.
RUN_CONFIG_FILE = "config.json"
CHECKPOINTS_DIR = "checkpoints"


def _is_checkpoints_dir(path: str) -> bool:
  return os.path.basename(os.path.normpath(path)) == CHECKPOINTS_DIR


def _workdir_of(path: str) -> str:
  path = os.path.normpath(path)
  return os.path.dirname(path) if _is_checkpoints_dir(path) else path


def _has_checkpoints_dir(workdir: str) -> bool:
  return os.path.isdir(os.path.join(workdir, CHECKPOINTS_DIR))


def _dtype_name(dtype) -> str:
  name = jnp.dtype(dtype).name
  if name not in model_config.DTYPES:
    raise ValueError(f"dtype {name} is not one of {sorted(model_config.DTYPES)}")
  return name


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def _set(tree: dict, path, value):
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _flat_paths(tree, prefix=()):
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from _flat_paths(v, prefix + (k,))
  else:
    yield prefix


INIT_KINDS = ("none", "hf", "gguf", "workdir")
PRETRAINED_KINDS = ("hf", "gguf")  # checkpoints that bring their architecture and tokenizer


@dataclasses.dataclass(frozen=True)
class InitFrom:
  """What a run's `init_from` points at: kind "none" (""), "hf" (a Hugging Face checkpoint directory:
  config.json next to *.safetensors), "gguf" (a llama.cpp GGUF file) or "workdir" (a rankjax workdir, or its
  checkpoints/ folder)."""

  kind: str
  path: str = ""

  @property
  def hf_dir(self) -> str:
    """Returns the HF checkpoint directory, or "" when init_from is not one."""
    return self.path if self.kind == "hf" else ""

  @property
  def pretrained(self) -> str:
    """Returns the pretrained checkpoint (HF directory or GGUF file) that brings the architecture and tokenizer, or
    "" (none, or a rankjax workdir)."""
    return self.path if self.kind in PRETRAINED_KINDS else ""


def resolve_init_from(path: str) -> InitFrom:
  """Returns what `path` (config.init_from) is; FileNotFoundError naming the path when it is neither an HF
  checkpoint nor a rankjax workdir. This is the one place that looks at the directory's contents."""
  if not path:
    return InitFrom("none")
  path = os.path.expanduser(path)
  if gguf_checkpoint.is_gguf(path):
    if not os.path.isfile(path):
      raise FileNotFoundError(f"init_from: no GGUF file at {path}")
    return InitFrom("gguf", path)
  if os.path.isfile(os.path.join(path, "config.json")) and any(
      f.endswith(".safetensors") or f == "model.safetensors.index.json" for f in os.listdir(path)):
    return InitFrom("hf", path)
  if _is_checkpoints_dir(path) or _has_checkpoints_dir(path):
    return InitFrom("workdir", path)
  raise DataFileNotFoundError(f"init_from: {path} is neither a Hugging Face checkpoint (config.json + *.safetensors), "
                          f"a GGUF file (*.gguf) nor a rankjax workdir (a directory with checkpoints/)")


# Model fields that decide the parameters' shapes: an init_from workdir must have been trained with the same.
SHAPE_FIELDS = ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim", "mlp_dim",
                "tie_embeddings", "qkv_bias", "out_bias", "qk_norm")


def check_init_from_workdir(init_from: str, config, resuming: bool = False) -> None:
  """Raises ConfigError naming the fields when `init_from` is a rankjax workdir whose config.json records a model with
  other parameter shapes than model config `config` (restoring would fail deep in Orbax). Does nothing for an HF
  checkpoint (it brings its own architecture), a workdir without config.json yet, or an unreadable one (the
  restore then names the checkpoint). resuming=True: `init_from` is the run's own workdir, about to be resumed."""
  if not init_from:
    return
  workdir = _workdir_of(os.path.expanduser(init_from))
  run_file = os.path.join(workdir, RUN_CONFIG_FILE)
  if not (_has_checkpoints_dir(workdir) and os.path.isfile(run_file)):
    return
  try:
    with open(run_file, encoding="utf-8") as f:
      run = json.load(f)
    trained = run.get("model")
  except (OSError, ValueError, AttributeError):
    return
  if not isinstance(trained, dict):
    return
  lora_rank = int((run.get("lora") or {}).get("rank", 0) or 0)
  if lora_rank and not resuming:
    raise ConfigError(f"init_from: {init_from} is a LoRA run (lora.rank={lora_rank}): its checkpoints hold adapters "
                      f"only. Start from its merged export {os.path.join(workdir, 'hf')} (config.export_hf=True "
                      "writes it), or from the base it was trained on")
  mine = {field: config[field] for field in SHAPE_FIELDS}
  mine["head_dim"] = model_config.head_dim(config)
  theirs = {field: trained[field] for field in SHAPE_FIELDS if field in trained}
  if {"hidden_size", "num_heads"} <= set(trained):
    theirs["head_dim"] = int(trained.get("head_dim") or 0) or int(trained["hidden_size"]) // int(trained["num_heads"])
  differ = [f for f, v in theirs.items() if v != mine[f]]
  if differ:
    details = ", ".join(f"model.{f}={theirs[f]!r} there, {mine[f]!r} here" for f in differ)
    if resuming:
      raise ConfigError(f"workdir {workdir} holds checkpoints of a model with other parameter shapes ({details}; "
                        f"from {run_file}): use a new --workdir, or set config.model to those sizes to resume")
    raise ConfigError(f"init_from: {init_from} was trained with other parameter shapes ({details}; from {run_file}); "
                      "set config.model to the sizes of that run")


def read_model_config(path: str):
  """The rankjax model config (float32, no remat) of a pretrained checkpoint: an HF directory (its config.json), a
  config.json file, or a GGUF file (its metadata)."""
  if gguf_checkpoint.is_gguf(path):
    return hf_config.config_from_hf(gguf_checkpoint.read_gguf_hf_config(path), path)
  return hf_config.read_hf_config(path)


def build_hf_model(path: str, dtype=jnp.bfloat16, param_dtype=None, **overrides) -> Transformer:
  """The rankjax model of checkpoint `path`'s config.json, in compute dtype `dtype` and params in
  `param_dtype` (default: `dtype`); `overrides` set further model fields (remat, attention_impl, ...)."""
  c = read_model_config(path)
  c.dtype = _dtype_name(dtype)
  c.param_dtype = _dtype_name(param_dtype or dtype)
  for key, value in overrides.items():
    if key not in c:
      raise KeyError(f"from_pretrained: model config has no field {key!r}")
    c[key] = value
  return build_model(c)


def load_params(model: Transformer, path: str, mesh: Mesh | None = None, rules=None):
  """The parameters of `model` read from safetensors checkpoint directory `path` (or GGUF file `path`, dequantised).

  Tensors are memory-mapped and converted one at a time; with `mesh`, every parameter is
  created directly in its NamedSharding (from the logical axes and `rules`, default
  `sharding.DEFAULT_RULES`) and each device reads only its own slice. Raises InputError (a ValueError)
  naming the tensor for a missing, unexpected or mis-shaped tensor.
  """
  reader = gguf_checkpoint.GGUFCheckpoint(path) if gguf_checkpoint.is_gguf(path) else CheckpointReader(path)
  logical, abstract = abstract_params(model)
  shardings = sharding.param_shardings(logical, abstract, mesh, rules) if mesh is not None else None
  mapping = hf_keys.key_map(model.config)
  mapped_paths = {p for _, p, _ in mapping}
  unmapped = [p for p in _flat_paths(abstract) if p not in mapped_paths]
  if unmapped:  # a model feature without a key rule: a bug in rankjax, not in the checkpoint
    raise AssertionError(f"hf_keys has no rule for rankjax parameters {['/'.join(p) for p in unmapped]}")

  missing = [name for name, _, _ in mapping if name not in reader]
  if missing:
    raise InputError(f"{path}: the checkpoint lacks {len(missing)} tensor(s) the config needs, e.g. {missing[:5]}")
  expected = {name for name, _, _ in mapping}
  tied_head = {"lm_head.weight"} if model.config.tie_embeddings else set()
  unexpected = [n for n in reader.names() if n not in expected | tied_head and not n.endswith(hf_keys.IGNORED_SUFFIXES)]
  if unexpected:
    raise InputError(f"{path}: the checkpoint has {len(unexpected)} tensor(s) the config does not use, e.g. "
                     f"{unexpected[:5]} (does config.json match the weights?)")

  params: dict = {}
  for name, param_path, rule in mapping:
    target = _get(abstract, param_path)
    stored = reader.array(name)
    want = hf_keys.hf_shape(rule, target.shape)
    if stored.shape != want:
      raise InputError(f"{path}: tensor {name!r} has shape {stored.shape}, but the config implies {want} "
                       f"(rankjax {'/'.join(param_path)} {target.shape})")
    if np.dtype(stored.dtype).kind in "iub":  # np.asarray would turn quantised codes into floats without a word
      raise InputError(f"{path}: tensor {name!r} is stored as {np.dtype(stored.dtype).name}: a quantised checkpoint "
                       "(its config.json's quantization_config says how), which rankjax does not dequantise; load "
                       "the unquantised weights, or a GGUF file")
    view = hf_keys.to_rankjax(rule, stored, target.shape)
    if shardings is None:
      value = jnp.asarray(np.asarray(view, dtype=target.dtype))
    else:
      value = jax.make_array_from_callback(target.shape, _get(shardings, param_path),
                                           lambda index, v=view, d=target.dtype: np.asarray(v[index], dtype=d))
    _set(params, param_path, value)
  return params


def from_pretrained(path: str, dtype=jnp.bfloat16, mesh: Mesh | None = None, rules=None, param_dtype=None,
                    **overrides):
  """(model, params) of a local Hugging Face checkpoint directory (config.json + *.safetensors), or of a GGUF file
  (llama architecture; quantised tensors are dequantised to `param_dtype`).

  `model.apply({"params": params}, input_ids)` gives logits [B, T, vocab]. `dtype` is the
  compute dtype and, unless `param_dtype` is given, the parameter dtype. With `mesh` the
  parameters are placed sharded (see `load_params`). Supported: Llama 3.x, Qwen2/2.5, Qwen3.
  """
  model = build_hf_model(path, dtype, param_dtype, **overrides)
  return model, load_params(model, path, mesh, rules)


def _host_array(x) -> np.ndarray:
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    x = multihost_utils.process_allgather(x, tiled=True)
  return np.asarray(jax.device_get(x))


def save_pretrained(model: Transformer, params, path: str, dtype=None, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                    copy_files_from: str | None = None) -> None:
  """Writes `params` as a Hugging Face checkpoint directory that transformers and vLLM load.

  Writes config.json, generation_config.json and safetensors weights (sharded with an index
  above `max_shard_bytes`), in `dtype` (default: the parameters' own dtype, so a round trip
  is exact). Tokenizer files are copied from `copy_files_from` (e.g. the checkpoint the run
  started from) when given. Every process must call it (sharded parameters are gathered);
  only process 0 writes.
  """
  c = model.config
  _, abstract = abstract_params(model)
  mapping = hf_keys.key_map(c)
  tensors = []
  for name, param_path, rule in mapping:
    leaf = _get(abstract, param_path)
    out_dtype = np.dtype(dtype if dtype is not None else _get(params, param_path).dtype)
    shape = hf_keys.hf_shape(rule, leaf.shape)

    def produce(param_path=param_path, rule=rule, out_dtype=out_dtype):
      return hf_keys.to_hf(rule, _host_array(_get(params, param_path))).astype(out_dtype)

    tensors.append(PendingTensor(name, shape, out_dtype, produce))
  if jax.process_count() > 1:  # every process takes part in the gathers; process 0 writes
    arrays = [t.produce() for t in tensors]
    tensors = [PendingTensor(t.name, t.shape, t.dtype, lambda a=a: a) for t, a in zip(tensors, arrays)]
  if jax.process_index() != 0:
    return
  os.makedirs(path, exist_ok=True)
  if copy_files_from:
    for name in TOKENIZER_FILES:
      src = os.path.join(copy_files_from, name)
      if os.path.isfile(src) and os.path.abspath(src) != os.path.abspath(os.path.join(path, name)):
        shutil.copyfile(src, os.path.join(path, name))
  hf = hf_config.config_to_hf(c)
  hf["dtype"] = np.dtype(tensors[0].dtype).name
  with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as f:
    json.dump(hf, f, indent=2, sort_keys=True)
  if not os.path.isfile(os.path.join(path, "generation_config.json")):
    with open(os.path.join(path, "generation_config.json"), "w", encoding="utf-8") as f:
      json.dump({"bos_token_id": hf["bos_token_id"], "eos_token_id": hf["eos_token_id"]}, f, indent=2)
  write_checkpoint(tensors, path, max_shard_bytes)
