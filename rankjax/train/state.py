"""The train state's layout on a mesh: one function (`state_shardings`) gives the shardings that both the real state
(`create_state`, used by the training loop) and the abstract one (`abstract_state`, compiled by `rankjax.plan` for a
pod it does not have) are built with, so a plan compiles exactly what a run executes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rankjax import models
from rankjax.models import lora, quantized
from rankjax.train.optimizer import learning_rate_schedule, make_optimizer
from rankjax.losses import registry as loss_registry
from rankjax.train.train_step import RunState, make_train_step


# The dtypes of the batch arrays `rankjax.data.pipeline` yields (checked against a real batch in tests/test_plan.py).
BATCH_DTYPES = {"inputs": jnp.int32, "targets": jnp.int32, "loss_mask": jnp.float32, "segment_ids": jnp.int32,
                "positions": jnp.int32}


def run_optimizer(config) -> optax.GradientTransformation:
  """The run's optax chain (config.optimizer over config.total_steps)."""
  return make_optimizer(config.optimizer, config.total_steps)


def trainable(model, tree):
  """The part of a parameter-shaped tree the optimizer holds: the adapters when `model` has LoRA, else all of it."""
  return lora.split(tree)[1] if model.lora is not None else tree


def has_snapshot(config) -> bool:
  """Whether config.loss's scheme keeps an old-policy snapshot in the state (`Scheme.anchor == "snapshot"`, psft)."""
  return loss_registry.get(config.loss.name).anchor == "snapshot"


def needs_initial_anchor(config, model) -> bool:
  """Whether the step takes the initial parameters as its anchor (`Scheme.anchor == "initial"`, asft, without
  LoRA: a LoRA run anchors on its frozen base)."""
  return loss_registry.get(config.loss.name).anchor == "initial" and model.lora is None


def state_shardings(model, tx: optax.GradientTransformation, mesh: Mesh,
                    snapshot: bool = False) -> train_state.TrainState:
  """A TrainState whose leaves are the NamedShardings of the run's state on `mesh` (with LoRA: the adapters only).

  Parameters: logical axes -> mesh axes by `models.DEFAULT_RULES`. Optimizer state: every copy of the parameter tree
  in it (Adam's moments) takes the parameters' shardings (`optax.tree_map_params`); the rest (step counters) is
  replicated. The step counter is replicated. `snapshot`: the state holds an old-policy copy of the params
  (`RunState.anchor_params`, psft), sharded like them.
  """
  replicated = NamedSharding(mesh, P())
  params = trainable(model, models.model_shardings(model, mesh))
  opt_shapes = jax.eval_shape(tx.init, trainable(model, models.abstract_params(model)[1]))
  opt_state = optax.tree_map_params(tx, lambda _, sharding: sharding, opt_shapes, params,
                                    transform_non_params=lambda _: replicated)
  return RunState(step=replicated, apply_fn=model.apply, params=params, tx=tx, opt_state=opt_state,
                  anchor_params=params if snapshot else None)


def abstract_state(config, model, mesh: Mesh) -> train_state.TrainState:
  """The state `create_state` would make on `mesh`, as `jax.ShapeDtypeStruct`s carrying their shardings (nothing is
  allocated, no weight is read)."""
  tx = run_optimizer(config)
  snapshot = has_snapshot(config)
  shardings = state_shardings(model, tx, mesh, snapshot)
  params = trainable(model, models.abstract_params(model)[1])
  shapes = RunState(step=jax.ShapeDtypeStruct((), jnp.int32), apply_fn=model.apply, params=params,
                    tx=tx, opt_state=jax.eval_shape(tx.init, params), anchor_params=params if snapshot else None)
  return jax.tree.map(lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes, shardings)


def load_base(config, model, mesh: Mesh, init: models.InitFrom | None = None):
  """The parameters of `model` without adapters, placed on `mesh`: from `init` (an HF checkpoint, a GGUF file or
  another run's workdir; default: resolved from config.init_from), else a random initialisation from config.seed."""
  from rankjax.train import checkpointing  # noqa: PLC0415 (orbax only where a state is really made)
  init = models.resolve_init_from(config.init_from) if init is None else init
  base = model.clone(lora=None)
  if init.pretrained:
    return models.load_params(base, init.path, mesh)
  if init.kind == "workdir":  # restored into their shardings: no random initialisation to compile and run
    return checkpointing.restore_params(init.path, checkpointing.params_target(base, mesh))
  make = jax.jit(lambda rng: models.init_params(base, rng, config.data.seq_len),
                 out_shardings=models.model_shardings(base, mesh))
  return make(jax.random.PRNGKey(config.seed))


def quantize_mode(config) -> str:
  """config.lora.quantize ("none", "int8" or "nf4"); "none" without LoRA."""
  return str(config.lora.get("quantize", "none")) if int(config.lora.rank) else "none"


def _quantize_fn(mode: str):
  return lambda tree: quantized.quantize_projections(tree, mode, quantized.is_base_projection)


def _frozen_shardings(abstract_frozen, base_shardings):
  """Shardings of a (possibly quantised) frozen tree: a plain leaf keeps its parameter's, a quantised kernel
  `quantized.quantized_sharding` of it."""
  from rankjax.models.tree_paths import build, items  # noqa: PLC0415
  kernel = dict(items(base_shardings))
  return build((p, quantized.quantized_sharding(v, kernel[p]) if isinstance(v, quantized.QuantizedKernel) else kernel[p])
               for p, v in items(abstract_frozen))


def abstract_frozen(config, model, mesh: Mesh):
  """The frozen base a LoRA `model`'s step takes, as `jax.ShapeDtypeStruct`s with their shardings (None without
  LoRA): what `load_frozen` would place on `mesh`, quantised as config.lora.quantize says."""
  if model.lora is None:
    return None
  base = model.clone(lora=None)
  logical, abstract = models.abstract_params(base)
  shardings = models.param_shardings(logical, abstract, mesh)
  mode = quantize_mode(config)
  if mode != "none":
    abstract = jax.eval_shape(_quantize_fn(mode), abstract)
    shardings = _frozen_shardings(abstract, shardings)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def load_frozen(config, model, mesh: Mesh, init: models.InitFrom | None = None):
  """(frozen base, its fingerprint) of a LoRA `model` on `mesh`: `load_base`'s parameters, with their projection
  kernels quantised when config.lora.quantize says so (the fingerprint is of the unquantised base)."""
  base = load_base(config, model, mesh, init)
  fingerprint = lora.fingerprint(base)
  mode = quantize_mode(config)
  if mode == "none":
    return base, fingerprint
  shardings = _frozen_shardings(jax.eval_shape(_quantize_fn(mode), base), jax.tree.map(lambda x: x.sharding, base))
  frozen = jax.jit(_quantize_fn(mode), out_shardings=shardings)(base)  # the unquantised base is freed on return
  return frozen, fingerprint


def copy_params(params, shardings):
  """A copy of `params` in new buffers placed by `shardings`: the step donates the state, and a buffer held twice (by
  the params and by an anchor) cannot be donated."""
  return jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=shardings)(params)


def create_state(config, model, mesh: Mesh, init: models.InitFrom | None = None) -> train_state.TrainState:
  """Fresh TrainState placed on `mesh` by `state_shardings`, step 0: params from config.seed, or from `init` (an HF
  checkpoint or another run's workdir; default: resolved from config.init_from), and their optimizer state. With
  LoRA (`model.lora`) the params are the adapters alone (A random from config.seed, B zero); the frozen base is
  `load_base`'s."""
  tx = run_optimizer(config)
  snapshot = has_snapshot(config)
  shardings = state_shardings(model, tx, mesh, snapshot)
  if model.lora is not None:  # XLA drops the base's random initialisation: only the adapters are computed
    make = jax.jit(lambda rng: lora.split(models.init_params(model, rng, config.data.seq_len))[1],
                   out_shardings=shardings.params)
    params = make(jax.random.PRNGKey(config.seed))
  else:
    params = load_base(config, model, mesh, init)
  opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
  anchor = copy_params(params, shardings.params) if snapshot else None
  return RunState(step=jax.device_put(jnp.zeros((), jnp.int32), shardings.step), apply_fn=model.apply, params=params,
                  tx=tx, opt_state=opt_state, anchor_params=anchor)


def batch_sharding(mesh: Mesh, micro_batch: int, process_count: int | None = None,
                   quiet: bool = False) -> NamedSharding:
  """Sharding of a batch [A, b, T]: rows over the mesh's data and fsdp axes, or replicated (with a note unless
  `quiet`) when `micro_batch` b does not divide among them. Multi-host (`process_count` > 1, default
  jax.process_count()): ValueError unless the batch ways are a multiple of the processes and divide b."""
  process_count = jax.process_count() if process_count is None else process_count
  batch_ways = int(np.prod([mesh.shape[a] for a in models.sharding.BATCH_AXES]))
  if process_count > 1 and (batch_ways % process_count or micro_batch % batch_ways):
    # Each host feeds rows_per_host = batch / processes rows; that is only its share of the global
    # batch when the batch axis is split across hosts.
    raise ValueError(f"multi-host: the batch is split over data*fsdp = {batch_ways} ways, which must be a multiple "
                     f"of the {process_count} processes and divide the micro-batch of {micro_batch}; "
                     "change config.mesh or config.data.batch_size")
  if micro_batch % batch_ways:
    if not quiet:
      print(f"[rankjax] micro-batch {micro_batch} is not divisible by the data*fsdp mesh size {batch_ways}: "
            "every device computes the whole batch", flush=True)
    return NamedSharding(mesh, P())
  return models.sharding.batch_sharding(mesh)


def watch_nonfinite(step_fn):
  """step_fn with a device-side record of the first refused step, so the loop need not read every step's
  `nonfinite` on the host: (state, batch, first_bad, done, diagnose, frozen, anchor) -> (state, metrics, first_bad);
  first_bad is the optimizer step (1-based) of the first non-finite step, or 0; `diagnose`, `frozen` and `anchor` as
  in `make_train_step`."""
  def step(state, batch, first_bad, done, diagnose=None, frozen=None, anchor=None):
    state, metrics = step_fn(state, batch, diagnose, frozen, anchor)
    first_bad = jnp.where((first_bad == 0) & (metrics["nonfinite"] > 0), done, first_bad)
    return state, metrics, first_bad
  return step


def jit_train_step(config, model, shardings: train_state.TrainState, mesh: Mesh):
  """The run's jitted step (state, batch, first_bad, done, diagnose, frozen, anchor) -> (state, metrics, first_bad):
  the state is donated and comes back in `shardings`; metrics and first_bad are replicated; `frozen` is the base of a
  LoRA model (None without LoRA); `anchor` the initial parameters of an asft run without LoRA (`load_base`), else
  None."""
  replicated = NamedSharding(mesh, P())
  schedule = learning_rate_schedule(config.optimizer, config.total_steps)
  step = make_train_step(model, config.loss, schedule, mesh, dropout_seed=int(config.seed))
  return jax.jit(watch_nonfinite(step), donate_argnums=0,
                 out_shardings=(shardings, replicated, replicated))


def abstract_step_inputs(config, mesh: Mesh, batch_shardings: NamedSharding) -> tuple:
  """(batch, first_bad, done, diagnose) as `jax.ShapeDtypeStruct`s: the batch arrays [A, b, T] the data pipeline
  feeds (A = config.grad_accum_steps, b = config.data.batch_size / A, T = config.data.seq_len; dtypes
  `BATCH_DTYPES`)."""
  accum = int(config.grad_accum_steps)
  shape = (accum, int(config.data.batch_size) // accum, int(config.data.seq_len))
  batch = {k: jax.ShapeDtypeStruct(shape, dtype, sharding=batch_shardings) for k, dtype in BATCH_DTYPES.items()}
  replicated = NamedSharding(mesh, P())
  scalar = lambda dtype: jax.ShapeDtypeStruct((), dtype, sharding=replicated)  # noqa: E731
  return batch, scalar(jnp.int32), scalar(jnp.int32), scalar(jnp.bool_)
