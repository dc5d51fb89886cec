"""A trained model back in memory for evaluation and diagnostics: an HF checkpoint directory or a rankjax
workdir (its latest checkpoint, its tokenizer, and the prompt format it was trained with)."""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import ml_collections

from rankjax import models
from rankjax.models import lora, quantized
from rankjax.data import sources
from rankjax.data.hf_tokenizer import HFTokenizer
from rankjax.data.tokenizer import load_tokenizer
from rankjax.rundir import layout
from rankjax.train import checkpointing
from rankjax.train import state as train_state_layout


@dataclasses.dataclass
class Checkpoint:
  """A loaded checkpoint: model, params on the mesh, tokenizer, and how it was trained (for the prompt)."""

  model: object
  params: object
  tokenizer: HFTokenizer
  trained_format: str = ""  # "plain" / "chat" for a rankjax workdir, "" for an HF checkpoint
  plain_template: str = ""
  data_config: ml_collections.ConfigDict | None = None  # a rankjax workdir's data config (its synthetic corpus)
  describe: dict = dataclasses.field(default_factory=dict)  # path (and step): part of the eval's settings


def _read_run_config(workdir: str) -> ml_collections.ConfigDict:
  path = layout.config_path(workdir)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"checkpoint {workdir}: no config.json (is it a rankjax workdir?)")
  with open(path, encoding="utf-8") as f:
    return ml_collections.ConfigDict(json.load(f))


def _workdir_tokenizer(run, workdir: str, vocab_size: int) -> HFTokenizer:
  """The tokenizer a rankjax run trained with: data.tokenizer_path, its init_from HF checkpoint's or GGUF file's,
  or its own."""
  candidates = [run.data.tokenizer_path]
  init = run.get("init_from", "")
  if init and (os.path.isfile(os.path.join(init, "config.json")) or models.is_gguf(init)):
    candidates.append(init)
  candidates.append(os.path.join(workdir, "tokenizer.json"))
  for path in (c for c in candidates if c):
    if os.path.exists(path):
      tokenizer = load_tokenizer(path)
      if tokenizer.vocab_size > vocab_size:
        raise ValueError(f"checkpoint {workdir}: tokenizer {path} has {tokenizer.vocab_size} tokens, more than the "
                         f"model's vocab_size {vocab_size}")
      return tokenizer
  raise FileNotFoundError(f"checkpoint {workdir}: no tokenizer found at {[c for c in candidates if c]}")


def _merged_lora_params(run, workdir: str, model, spec: lora.LoraSpec, mesh):
  """A LoRA run's base (as its training loaded it: init_from, or config.seed's initialisation; dequantised after
  QLoRA's quantisation) with the adapters of its latest checkpoint merged in: the parameters of the plain `model`,
  the same as the run's merged export."""
  adapted = model.clone(lora=spec)
  frozen, _ = train_state_layout.load_frozen(run, adapted, mesh)
  base = quantized.dequantize_tree(frozen, models.config.resolve_dtype(model.config.param_dtype))
  adapters = checkpointing.restore_params(workdir, lora.split(checkpointing.params_target(adapted, mesh))[1])
  return lora.merged(base, adapters, spec)


def load_checkpoint(path: str, mesh=None, dtype: str = "") -> Checkpoint:
  """Loads an HF checkpoint directory, a GGUF file or a rankjax workdir (latest checkpoint) onto `mesh` (None: the first
  device), in compute dtype `dtype` ("": bfloat16 for HF checkpoints, the run's own for a rankjax workdir)."""
  if mesh is None:
    mesh = models.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  init = models.resolve_init_from(path)
  if init.kind == "none":
    raise ValueError("eval config: checkpoint is empty; set --config.checkpoint=PATH (an HF checkpoint directory "
                     "or a rankjax workdir)")
  if init.pretrained:
    model = models.build_hf_model(init.path, dtype or "bfloat16")
    params = models.load_params(model, init.path, mesh)
    return Checkpoint(model, params, load_tokenizer(init.path), describe={"checkpoint": os.path.abspath(init.path)})
  workdir = layout.workdir_of(init.path)
  run = _read_run_config(workdir)
  model_config = models.default_config()
  model_config.update(dict(run.model))
  if dtype:
    model_config.dtype = dtype
  model = models.build_model(model_config)
  spec = lora.spec_from_config(run) if "lora" in run else None
  if spec is None:
    params = checkpointing.restore_params(workdir, checkpointing.params_target(model, mesh))
  else:
    params = _merged_lora_params(run, workdir, model, spec, mesh)
  step = checkpointing.latest_step(workdir)
  data = sources.default_config()
  data.update(dict(run.data))
  return Checkpoint(model, params, _workdir_tokenizer(run, workdir, model.config.vocab_size),
                    trained_format=data.prompt_format, plain_template=sources.resolved(data, "plain_template"),
                    data_config=data, describe={"checkpoint": os.path.abspath(workdir), "checkpoint_step": step})
