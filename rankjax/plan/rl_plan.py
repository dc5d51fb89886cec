"""The memory plan of one GRPO step (`rankjax.rl`) on a TPU slice: its three programs compiled for the slice.

An RL step runs, one after another, (1) the rollout engine's prefill and decode (planned by `sampling_plan` with
prompts_per_step x num_generations slots and rl.max_new_tokens), (2) the behaviour pass (forward-only statistics,
and the reference's log-probs when rl.beta > 0) and (3) the update (forward + backward + optimizer). Between them
the state stays in HBM: the policy (or LoRA's adapters and frozen base), the optimizer moments, the reference copy
(full fine-tuning with beta > 0) and, under LoRA, the merged weights the engine decodes with. Each program's peak is
XLA's (arguments + new outputs + temporaries + code) plus whatever else is held while it runs.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import NamedSharding, PartitionSpec as P

from rankjax import models
from rankjax.plan import memory, sampling_plan
from rankjax.plan.topologies import Topology, without_persistent_cache
from rankjax.plan.train_plan import DoesNotFit, _libtpu_version, check_config, oom_excess, plan_model
from rankjax.rl import config as rl_config
from rankjax.rl.loop import _optimizer_config
from rankjax.rl.step import BATCH_KEYS, make_behaviour_fn, make_update_fn
from rankjax.train import config as run_config
from rankjax.train import state as train_state_layout

_DTYPES = {"inputs": jnp.int32, "targets": jnp.int32, "loss_mask": jnp.float32, "segment_ids": jnp.int32,
           "positions": jnp.int32}


def plan_rl(config, topology: Topology, devices, sampling: bool = True) -> dict:
  """Compiles the RL step's programs for `topology` and returns the plan (JSON-ready); DoesNotFit when a peak
  exceeds HBM."""
  rl_config.validate(config)
  rows_per_step = int(config.rl.prompts_per_step) * int(config.rl.num_generations)
  check_config(run_config.with_overrides(config, {"data.batch_size": rows_per_step}), topology)
  model = plan_model(config)
  mesh = models.make_mesh(*(int(config.mesh[a]) for a in models.MESH_AXES), devices=devices)
  state = train_state_layout.abstract_state(_optimizer_config(config), model, mesh)
  shardings = jax.tree.map(lambda s: s.sharding, state)
  frozen = train_state_layout.abstract_frozen(config, model, mesh)
  rl = config.rl
  n, t = int(rl.prompts_per_step) * int(rl.num_generations), int(config.data.seq_len)
  ways = 1
  for axis in models.sharding.BATCH_AXES:
    ways *= mesh.shape[axis]
  rows_axes = models.sharding.BATCH_AXES if n % ways == 0 else None
  rows, replicated = NamedSharding(mesh, P(rows_axes, None)), NamedSharding(mesh, P())
  batch = {k: jax.ShapeDtypeStruct((n, t), _DTYPES[k], sharding=rows) for k in BATCH_KEYS}
  advantages = jax.ShapeDtypeStruct((n,), jnp.float32, sharding=NamedSharding(mesh, P(rows_axes)))
  ref = state.params if float(rl.beta) > 0 and frozen is None else None
  behaviour_fn = jax.jit(make_behaviour_fn(model, config))
  behaviour = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rows),
                           jax.eval_shape(behaviour_fn, state.params, frozen, batch, ref))
  update_fn = jax.jit(make_update_fn(model, config), donate_argnums=0, out_shardings=(shardings, replicated))
  arguments = memory.per_device_bytes((state, frozen, batch, behaviour, ref))
  try:
    with without_persistent_cache():
      t0 = time.perf_counter()
      behaviour_compiled = behaviour_fn.lower(state.params, frozen, batch, ref).compile()
      t1 = time.perf_counter()
      update_compiled = update_fn.lower(state, frozen, batch, behaviour, advantages).compile()
      t2 = time.perf_counter()
  except Exception as e:  # XLA:TPU refuses a program that cannot fit HBM
    excess = oom_excess(str(e), arguments)
    if excess is None:
      raise
    raise DoesNotFit(f"the RL step does not fit {topology.name}: XLA needs {memory.gib(excess):.2f} GiB per chip more "
                     "than the HBM; raise config.grad_accum_steps (rollouts per micro-step), lower rl.max_new_tokens "
                     "or data.seq_len, or use LoRA") from e
  b_mem, u_mem = memory.compiled_memory(behaviour_compiled), memory.compiled_memory(update_compiled)
  held = {"parameters": memory.per_device_bytes(state.params),
          "frozen_base": memory.per_device_bytes(frozen) if frozen is not None else 0,
          "optimizer_state": memory.per_device_bytes(state.opt_state),
          "reference": memory.per_device_bytes(ref) if ref is not None else 0,
          "rollout_batch": memory.per_device_bytes(batch),
          "behaviour_outputs": memory.per_device_bytes(behaviour)}
  held["merged_for_engine"] = memory.per_device_bytes(_abstract_params(model, mesh)) if frozen is not None else 0
  # What each program holds besides its own arguments: the rest of the state.
  peaks = {"behaviour": b_mem["peak"] + held["optimizer_state"],
           "update": u_mem["peak"] + held["reference"]}
  out = {"topology": topology.name, "chips": topology.chips, "device_kind": devices[0].device_kind,
         "mesh": dict(mesh.shape), "rows": n, "seq_len": t, "rows_sharded": rows_axes is not None,
         "lora": None if frozen is None else {"rank": int(config.lora.rank),
                                              "quantize": train_state_layout.quantize_mode(config)},
         "beta": float(rl.beta), "token_weight": rl.token_weight,
         "trained_parameters": models.count_params(state.params),
         "held_per_chip_bytes": held,
         "behaviour": {**b_mem, "peak_with_state": peaks["behaviour"], "compile_seconds": t1 - t0},
         "update": {**u_mem, "peak_with_state": peaks["update"], "compile_seconds": t2 - t1},
         "hbm": topology.hbm_bytes, "engine": None,
         "versions": {"jax": jax.__version__, "libtpu": _libtpu_version()}}
  if sampling:
    engine_config = ml_collections.ConfigDict({"batch_size": n, "max_new_tokens": int(rl.max_new_tokens),
                                               "temperature": float(rl.temperature), "top_p": float(rl.top_p),
                                               "top_k": 0})
    engine = sampling_plan.plan_sampling(model.clone(lora=None), engine_config, mesh, topology.hbm_bytes,
                                         t - int(rl.max_new_tokens))
    # During rollouts the engine's program holds the policy (merged under LoRA) as its argument; the optimizer
    # state, the reference, and under LoRA the adapters and the frozen base stay too.
    engine["peak_with_state"] = (engine["memory_per_chip_bytes"]["peak"] + held["optimizer_state"]
                                 + held["reference"] + (held["parameters"] + held["frozen_base"] if frozen else 0))
    peaks["engine"] = engine["peak_with_state"]
    out["engine"] = engine
  out["peak"] = max(peaks.values())
  out["peak_program"] = max(peaks, key=peaks.get)
  out["fits"] = out["peak"] <= topology.hbm_bytes
  if not out["fits"]:
    raise DoesNotFit(f"the RL step does not fit {topology.name}: its {out['peak_program']} needs "
                     f"{memory.gib(out['peak'] - topology.hbm_bytes):.2f} GiB per chip more than the HBM; lower "
                     "rl.prompts_per_step, rl.max_new_tokens or data.seq_len, or use LoRA", {"rl": out})
  return out


def _abstract_params(model, mesh):
  logical, shapes = models.abstract_params(model.clone(lora=None))
  shardings = models.sharding.param_shardings(logical, shapes, mesh)
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def render(plan: dict) -> str:
  """plan.md of an RL plan."""
  r = plan["rl"]
  g = memory.gib
  lines = [f"# RL plan: {plan['config']} on {r['topology']} ({r['chips']} chips, {r['device_kind']})", "",
           f"Command: `{plan['command']}`", "",
           f"JAX {r['versions']['jax']}, libtpu {r['versions']['libtpu']}; compiled, not measured on a chip.", "",
           f"**{'fits' if r['fits'] else 'DOES NOT FIT'}**: peak {g(r['peak']):.2f} of {g(r['hbm']):.0f} GiB per chip, "
           f"in the {r['peak_program']} program. {r['rows']} rollouts x {r['seq_len']} tokens per step "
           f"({'rows over the batch axes' if r['rows_sharded'] else 'rows replicated'}); mesh {r['mesh']}; "
           f"{'LoRA r=' + str(r['lora']['rank']) if r['lora'] else 'full fine-tuning'}; beta {r['beta']}; "
           f"token weight {r['token_weight']}; {r['trained_parameters'] / 1e6:.1f} M trained parameters.", "",
           "| held between programs, per chip | GiB |", "|---|---:|"]
  lines += [f"| {k.replace('_', ' ')} | {g(v):.2f} |" for k, v in r["held_per_chip_bytes"].items()]
  lines += ["", "| program | arguments | temporaries | XLA peak | peak with the rest of the state | compile s |",
            "|---|---:|---:|---:|---:|---:|"]
  for name in ("behaviour", "update"):
    p = r[name]
    lines.append(f"| {name} | {g(p['arguments']):.2f} | {g(p['temporaries']):.2f} | {g(p['peak']):.2f} | "
                 f"{g(p['peak_with_state']):.2f} | {p['compile_seconds']:.0f} |")
  if r["engine"]:
    e = r["engine"]["memory_per_chip_bytes"]
    lines.append(f"| engine ({r['engine']['slots']} slots x {r['engine']['max_len']}: KV cache {g(e['kv_cache']):.2f}) "
                 f"| {g(e['parameters'] + e['decode_state']):.2f} | {g(max(e['prefill_temporaries'], e['decode_temporaries'])):.2f} "
                 f"| {g(e['peak']):.2f} | {g(r['engine']['peak_with_state']):.2f} | "
                 f"{sum(r['engine']['compile_seconds'].values()):.0f} |")
  return "\n".join(lines) + "\n"
