"""The top-level run config shared by configs/*.py: model, data, loss, optimizer and the loop's fields."""

from __future__ import annotations

import ml_collections

from rankjax import losses, models
from rankjax.data import sources
from rankjax.models.errors import ConfigError
from rankjax.eval import settings as eval_settings
from rankjax.models import lora
from rankjax.train import optimizer


def base_config() -> ml_collections.ConfigDict:
  """Returns an unlocked config with every field a run reads; configs/*.py adjust and lock it."""
  c = ml_collections.ConfigDict()
  c.model = models.default_config()
  c.data = sources.default_config()
  c.loss = losses.default_config()
  c.loss.histograms = True  # quantiles of w, p, H, R, E[R], S to metrics.jsonl, histograms to TensorBoard
  c.optimizer = optimizer.default_config()
  # Low-rank adapters: rank 0 trains every parameter; rank r > 0 freezes the base (init_from) and trains adapters
  # on the projections `targets` matches (`rankjax.models.lora`).
  c.lora = lora.default_config()
  c.total_steps = 100
  c.grad_accum_steps = 1
  c.log_every = 10
  c.checkpoint_every = 100
  c.keep_checkpoints = 3
  # Checkpoint writes overlap the next steps (Orbax async): the loop waits only before the next save, before
  # export and at exit. False: every save blocks until written.
  c.checkpoint_async = True
  c.seed = 0  # parameter init, and the data order unless data.shuffle_seed >= 0
  # A rankjax workdir (or its checkpoints/) whose latest params initialise this run, or a Hugging
  # Face checkpoint directory (config.json + *.safetensors): then the model architecture comes from
  # its config.json and only config.model's dtype, param_dtype, remat and attention_impl apply.
  c.init_from = ""
  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})  # device mesh; -1: the rest
  c.export_hf = False  # at the end, write WORKDIR/hf: a Hugging Face checkpoint (safetensors + config.json)
  c.progress = True  # live progress line on stderr
  c.eval = eval_config()
  return c


def eval_config() -> ml_collections.ConfigDict:
  """The periodic sampled evaluation of a training run (`rankjax.eval`; off while every_steps is 0).

  Every `every_steps` optimizer steps (and at the last step) the current params answer the benchmarks'
  problems; `eval/<benchmark>/pass@k` go to metrics.jsonl and TensorBoard, the samples and results to
  WORKDIR/eval/step_<N>/. Fields as in configs/eval_math.py; the defaults here are a cheap check (the
  synthetic held-out problems, greedy, one sample), not the paper's protocol.
  """
  c = eval_settings.default_config()
  c.every_steps = 0  # 0 = off
  c.benchmarks = "synthetic"
  c.num_problems = 64
  c.num_samples = 1
  c.temperature = 0.0
  c.pass_k = (1,)
  c.max_new_tokens = 256
  c.prompt = "auto"  # the format the run trains with
  c.progress = False
  return c


def validate(config, device_count: int | None = None) -> None:
  """Raises ConfigError naming the field for values no run can use (before any compile). The mesh must tile
  `device_count` devices (default: this process's `jax.device_count()`; `rankjax.plan` passes a TPU slice's)."""
  sources.validate_config(config.data)
  if config.data.prompt_format == "chat" and not (config.init_from or config.data.tokenizer_path):
    raise ConfigError("config.data.prompt_format='chat' needs a tokenizer with a chat template: set "
                      "config.init_from to a Hugging Face checkpoint directory (or config.data.tokenizer_path)")
  losses.validate_config(config.loss)
  models.validate_config(config.model)
  if int(config.lora.rank) < 0:
    raise ConfigError(f"config.lora.rank={config.lora.rank} must be >= 0 (0 = full fine-tuning, no adapters)")
  for field in ("total_steps", "grad_accum_steps", "log_every", "checkpoint_every", "keep_checkpoints"):
    if int(config[field]) <= 0:
      raise ConfigError(f"config.{field}={config[field]} must be positive")
  if int(config.eval.every_steps) < 0:
    raise ConfigError(f"config.eval.every_steps={config.eval.every_steps} must be >= 0 (0 = off)")
  if config.eval.every_steps:
    eval_settings.validate(config.eval)
  if config.data.batch_size % config.grad_accum_steps:
    raise ConfigError(f"config.data.batch_size={config.data.batch_size} is not divisible by "
                      f"config.grad_accum_steps={config.grad_accum_steps}")
  import math

  import jax
  opt = config.optimizer
  if not (math.isfinite(float(opt.learning_rate)) and float(opt.learning_rate) > 0):
    raise ConfigError(f"config.optimizer.learning_rate={opt.learning_rate} must be a positive number (the peak of "
                      "the warmup-cosine schedule)")
  for field, closed in (("warmup_fraction", True), ("end_lr_fraction", True), ("b1", False), ("b2", False)):
    value = float(opt[field])
    if not (0.0 <= value <= 1.0 if closed else 0.0 <= value < 1.0):
      raise ConfigError(f"config.optimizer.{field}={opt[field]} must lie in [0, 1{']' if closed else ')'}")
  if not float(opt.eps) > 0:
    raise ConfigError(f"config.optimizer.eps={opt.eps} must be > 0")
  for field in ("weight_decay", "clip_norm"):
    if not float(opt[field]) >= 0:
      raise ConfigError(f"config.optimizer.{field}={opt[field]} must be >= 0")
  # The mesh and an init_from workdir's parameter shapes: named here, before the workdir is written.
  models.check_mesh_sizes({axis: config.mesh[axis] for axis in models.MESH_AXES},
                          jax.device_count() if device_count is None else device_count)
  models.check_init_from_workdir(config.init_from, config.model)


def load_config_file(path: str):
  """`get_config()` of a config file such as configs/demo.py (a path, relative to the working directory
  or to the repository root)."""
  import importlib.util  # noqa: PLC0415
  import os  # noqa: PLC0415
  if not os.path.isfile(path):
    repo_path = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), path)
    if not os.path.isfile(repo_path):
      raise FileNotFoundError(f"config file {path} not found")
    path = repo_path
  spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def with_overrides(config, overrides: dict):
  """A copy of `config` with dotted-key overrides applied ({"loss.name": "dft", ...}).

  Like `--config.a.b=value` flags: an unknown key raises (KeyError/AttributeError naming it)
  on a locked config.
  """
  c = config.copy_and_resolve_references()
  for key, value in overrides.items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      if not hasattr(node, "keys") or p not in node:
        raise KeyError(f"config has no field {key!r} (no group {p!r})")
      node = node[p]
    if leaf not in node:
      raise KeyError(f"config has no field {key!r}")
    try:
      node[leaf] = value
    except TypeError as e:
      raise TypeError(f"config.{key}={value!r}: {e}") from e
  return c


def with_model(config, model_config):
  """A copy of `config` whose `model` fields are those of `model_config` (the resolved architecture, e.g. an
  HF checkpoint's), so that WORKDIR/config.json records the model the run actually trained."""
  return with_overrides(config, {f"model.{k}": v for k, v in dict(model_config).items()})
