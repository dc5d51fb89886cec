"""Compiles a run's real train step for a TPU slice it does not have, and measures the compiled program.

The model comes from config.model, or from the config.json of config.init_from (an HF checkpoint directory, whose
weights are never read; a directory holding only config.json will do). The state, its shardings, the batch
sharding and the jitted step (with donation) come from `rankjax.train.state`, the functions the training loop
uses, so the plan compiles what `rankjax.main` would run on that slice with the same JAX and libtpu.
"""

from __future__ import annotations

import os
import re
import time

import jax
import numpy as np

from rankjax import models
from rankjax.models import flops, lora
from rankjax.models.errors import ConfigError
from rankjax.plan import collectives, memory
from rankjax.plan.topologies import Topology, without_persistent_cache
from rankjax.train import config as run_config
from rankjax.train import state as train_state_layout


class DoesNotFit(Exception):
  """The step needs more HBM per chip than the slice has: the message is one line saying by how much and what to
  change; `plan` holds what was measured (None when XLA refused to compile)."""

  def __init__(self, message: str, plan: dict | None = None):
    super().__init__(message)
    self.plan = plan


def plan_model(config):
  """The run's model without reading any weight: the architecture of init_from's config.json (an HF checkpoint, or
  only its config.json) or GGUF metadata with config.model's runtime fields, else config.model."""
  from rankjax.train.loop import HF_RUNTIME_FIELDS  # noqa: PLC0415
  path = os.path.expanduser(config.init_from)
  hf_dir = os.path.isfile(os.path.join(path, "config.json")) and not os.path.isdir(os.path.join(path, "checkpoints"))
  if path and (hf_dir or (models.is_gguf(path) and os.path.isfile(path))):  # a GGUF file: its metadata only
    runtime = {k: config.model[k] for k in HF_RUNTIME_FIELDS}
    model = models.build_hf_model(path, runtime.pop("dtype"), runtime.pop("param_dtype"), **runtime)
  elif path and not os.path.exists(path):
    raise ConfigError(f"config.init_from={config.init_from}: no such directory (the plan reads only its config.json)")
  else:
    model = models.build_model(config.model)
  lora.validate(config.lora, model.config)
  spec = lora.spec_from_config(config)
  return model if spec is None else model.clone(lora=spec)


NOT_READ = "<not read by the plan>"


def check_config(config, topology: Topology) -> None:
  """`rankjax.train.config.validate` for a run on `topology`'s chips (the mesh error names them). The plan reads no
  data and no weights: the data files and an init_from that holds only config.json need not be there."""
  overrides = {}
  if config.data.source != "synthetic" and not config.data.files.manual_dir:
    overrides["data.files.manual_dir"] = NOT_READ
  run_config.validate(run_config.with_overrides(config, overrides), device_count=topology.chips)


def batch_ways(config, chips: int) -> int:
  """Returns the number of ways the batch is split on `chips` chips: data * fsdp of config.mesh (-1 resolved)."""
  sizes = {axis: int(config.mesh[axis]) for axis in models.MESH_AXES}
  known = int(np.prod([s for s in sizes.values() if s != -1]))
  sizes = {axis: (chips // known if s == -1 else s) for axis, s in sizes.items()}
  return int(np.prod([sizes[a] for a in models.sharding.BATCH_AXES]))


def _advice(config, topology: Topology, over_bytes: int) -> str:
  ways = {axis: int(config.mesh[axis]) for axis in models.MESH_AXES}
  hints = []
  if ways["fsdp"] != -1 and ways["fsdp"] < topology.chips:
    hints.append("config.mesh.fsdp=-1 (shard parameters and optimizer over every chip)")
  micro = int(config.data.batch_size) // int(config.grad_accum_steps)
  split = batch_ways(config, topology.chips)
  if micro % split:
    hints.append(f"a micro-batch that divides among the {split} batch ways (now {micro}: every chip computes all of "
                 "it)")
  elif micro > 1 and (micro // 2) % split == 0:
    hints.append(f"a smaller micro-batch (config.grad_accum_steps={2 * int(config.grad_accum_steps)}: "
                 f"{micro // 2} sequences per micro-step)")
  if config.model.remat != "layer":
    hints.append("config.model.remat=layer")
  hints.append("a larger slice")
  return (f"the train step does not fit {topology.name}: it needs {memory.gib(over_bytes):.2f} GiB per chip more "
          f"than the {memory.gib(topology.hbm_bytes):.0f} GiB of HBM; try " + ", or ".join(hints))


_SCALE = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}
_SIZE = r"([\d.]+)([KMGT]?)"
# XLA:TPU's two ways of refusing a program too big for HBM (libtpu 0.0.42): the whole program, or its temporaries
# alone (then the arguments come on top).
_EXCEEDED_BY = re.compile(r"Exceeded hbm capacity by " + _SIZE)
_TEMPORARIES = re.compile(r"memory required for HLO temporaries \(" + _SIZE + r"\) exceeds available HBM \(" + _SIZE
                          + r"\)")


def _bytes(number: str, unit: str) -> int:
  return int(float(number) * _SCALE[unit])


def oom_excess(message: str, argument_bytes: int) -> int | None:
  """Bytes per chip by which XLA:TPU's out-of-memory compile error `message` says the program exceeds HBM (None
  when `message` is another error); `argument_bytes` per chip (state and batch) are added where XLA counted only
  the temporaries."""
  m = _EXCEEDED_BY.search(message)
  if m:
    return _bytes(*m.groups())
  m = _TEMPORARIES.search(message)
  if m:
    return _bytes(m.group(1), m.group(2)) + argument_bytes - _bytes(m.group(3), m.group(4))
  return None


def plan_train(config, topology: Topology, devices, mfu: float = 0.4) -> dict:
  """Compiles `config`'s train step for `topology` (its compile-only `devices`) and returns the plan (JSON-ready):
  per-chip bytes (parameters, optimizer state, batch, new outputs, temporaries, code, peak) against HBM, model and
  XLA FLOPs, the roofline step time and tokens/s at `mfu` of the chip's peak, the collectives per step and the
  compile time. Raises DoesNotFit (one line, with the plan so far) when the peak exceeds HBM or XLA refuses to fit
  it; ConfigError for a config no run could use (the mesh must tile the slice's chips)."""
  check_config(config, topology)
  model = plan_model(config)
  sizes = {axis: int(config.mesh[axis]) for axis in models.MESH_AXES}
  mesh = models.make_mesh(sizes["data"], sizes["fsdp"], sizes["tensor"], devices=devices)
  state = train_state_layout.abstract_state(config, model, mesh)
  shardings = jax.tree.map(lambda s: s.sharding, state)
  accum = int(config.grad_accum_steps)
  micro = int(config.data.batch_size) // accum
  batch_sharding = train_state_layout.batch_sharding(mesh, micro, process_count=1, quiet=True)
  inputs = train_state_layout.abstract_step_inputs(config, mesh, batch_sharding)
  step = train_state_layout.jit_train_step(config, model, shardings, mesh)
  frozen = train_state_layout.abstract_frozen(config, model, mesh)  # LoRA's base (QLoRA: quantised), None without
  # asft without LoRA: the initial parameters, a second frozen copy placed like the params
  anchor = state.params if train_state_layout.needs_initial_anchor(config, model) else None
  anchor_weights = anchor if anchor is not None else getattr(state, "anchor_params", None)  # or psft's snapshot
  t0 = time.perf_counter()
  lowered = step.lower(state, *inputs, frozen, anchor)
  t1 = time.perf_counter()
  try:
    with without_persistent_cache():
      compiled = lowered.compile()
  except Exception as e:  # XLA:TPU refuses a program that cannot fit HBM
    excess = oom_excess(str(e), memory.per_device_bytes((state, inputs[0], frozen, anchor)))
    if excess is None:
      raise
    raise DoesNotFit(_advice(config, topology, excess)) from e
  t2 = time.perf_counter()

  seq_len, batch = int(config.data.seq_len), int(config.data.batch_size)
  tokens = batch * seq_len
  model_flops = flops.flops_per_token(model.config, seq_len) * tokens
  peak_flops = flops.peak_flops_per_device(devices[0], "bfloat16")
  compute_s = model_flops / (topology.chips * peak_flops) if peak_flops else float("nan")
  mem = memory.compiled_memory(compiled)
  cost = memory.compiled_cost(compiled)
  per_chip = {
      "parameters": memory.per_device_bytes(state.params),
      "frozen_base": memory.per_device_bytes(frozen) if frozen is not None else 0,
      # asft's initial parameters (full fine-tuning) or psft's old-policy snapshot: the anchor model's weights
      "anchor": memory.per_device_bytes(anchor_weights) if anchor_weights is not None else 0,
      "optimizer_state": memory.per_device_bytes(state.opt_state),
      "batch": memory.per_device_bytes(inputs[0]),
      "outputs_new": mem["outputs_new"],
      "temporaries": mem["temporaries"],
      "code": mem["code"],
      "peak": mem["peak"],
      "hbm": topology.hbm_bytes,
      "margin": topology.hbm_bytes - mem["peak"],
  }
  plan = {
      "topology": topology.name, "libtpu_topology": topology.libtpu_name, "chips": topology.chips,
      "device_kind": devices[0].device_kind,
      "mesh": dict(mesh.shape), "batch_sharding": str(batch_sharding.spec),
      # a micro-batch that does not divide among the batch ways is replicated: every chip computes all of it
      "batch_replicated": micro % batch_ways(config, topology.chips) != 0,
      "model": {k: model.config[k] for k in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
                                             "mlp_dim", "dtype", "param_dtype", "remat", "attention_impl")},
      "parameters": models.count_params(state.params),  # trained ones (LoRA: the adapters)
      "lora": None if frozen is None else {"rank": int(config.lora.rank), "alpha": float(config.lora.alpha),
                                           "targets": config.lora.targets,
                                           "quantize": train_state_layout.quantize_mode(config),
                                           "frozen_parameters": models.count_params(
                                               models.abstract_params(model.clone(lora=None))[1])},
      "loss": {"name": config.loss.name, "form": config.loss.get("form", ""),
               "token_chunk": int(config.loss.get("token_chunk", 0))},
      "batch": {"global_sequences": batch, "seq_len": seq_len, "grad_accum_steps": accum, "micro_batch": micro,
                "tokens_per_step": tokens},
      "memory_per_chip_bytes": per_chip, "xla_memory_bytes": mem,
      "fits": mem["peak"] <= topology.hbm_bytes,
      "model_flops_per_step": model_flops,
      "xla": {"flops_per_chip": cost["flops"], "bytes_accessed_per_chip": cost["bytes_accessed"],
              "note": (f"XLA counts the body of a loop once: the accumulation scan runs {accum - 1} of the {accum} "
                       "micro-steps, so its figure covers about 2 of them (the first, unrolled, and one "
                       "iteration), including rematerialised recomputation" if accum > 2 else
                       "one execution, including rematerialised recomputation")},
      "roofline": {"peak_flops_per_chip": peak_flops, "mfu": mfu, "step_seconds_at_peak": compute_s,
                   "step_seconds": compute_s / mfu, "tokens_per_second": tokens * mfu / compute_s},
      "collectives_per_step": collectives.collective_stats(compiled.as_text()),
      "lower_seconds": t1 - t0, "compile_seconds": t2 - t1,
      "versions": {"jax": jax.__version__, "libtpu": _libtpu_version()},
  }
  if not plan["fits"]:
    raise DoesNotFit(_advice(config, topology, mem["peak"] - topology.hbm_bytes), plan)
  return plan


def _libtpu_version() -> str:
  from importlib import metadata  # noqa: PLC0415
  try:
    return metadata.version("libtpu")
  except metadata.PackageNotFoundError:
    return ""
