"""Compiles the evaluation engine's prefill and decode chunk for a TPU slice: the KV cache and peak bytes per chip.

The engine (`rankjax.sampling.engine.Engine`) is the one the evaluation harness and periodic evaluation use:
`config.eval.batch_size` decode slots over the mesh's batch axes, a cache of max_len = bucketed prompt width +
`config.eval.max_new_tokens` positions per slot, parameters sharded as in training. The prefill is planned at its
largest: every slot's prompt at once (rows = the slots rounded up to a power of two, as the engine pads them),
`prompt_len` tokens wide.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from rankjax import models
from rankjax.plan import memory
from rankjax.plan.topologies import without_persistent_cache
from rankjax.sampling.buckets import bucket_length
from rankjax.sampling.config import SamplingConfig
from rankjax.sampling.engine import Engine, Request, filtering_bound, kv_cache_bytes


def plan_sampling(model, eval_config, mesh, hbm_bytes: int, prompt_len: int = 1024) -> dict:
  """Compiles prefill and one decode chunk (`steps_per_sync` tokens per slot) of `model` with `eval_config`'s slots,
  sampling settings and max_new_tokens on `mesh` (compile-only devices are fine) and returns per-chip bytes
  (parameters, KV cache and decode state, temporaries, peak of each program) against `hbm_bytes`."""
  slots, max_new = int(eval_config.batch_size), int(eval_config.max_new_tokens)
  width = bucket_length(int(prompt_len))
  engine = Engine(model, None, slots, width + max_new, mesh)
  sampling = SamplingConfig(max_new_tokens=max_new, temperature=float(eval_config.temperature),
                            top_p=float(eval_config.top_p), top_k=int(eval_config.top_k))
  keys = [[0, 0]] if sampling.temperature > 0 else None
  k_max = filtering_bound([Request([0], sampling, keys)], int(model.config.vocab_size))
  logical, shapes = models.abstract_params(model)
  shardings = models.sharding.param_shardings(logical, shapes, mesh)
  params = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
  state = engine.abstract_state(max_new, max_stops=2)
  rows = 1 << (slots - 1).bit_length()
  replicated = NamedSharding(mesh, P())
  ids = jax.ShapeDtypeStruct((rows, width), jnp.int32, sharding=replicated)
  lengths = jax.ShapeDtypeStruct((rows,), jnp.int32, sharding=replicated)

  with without_persistent_cache():
    t0 = time.perf_counter()
    prefill = Engine._prefill.lower(engine, params, ids, lengths).compile()
    t1 = time.perf_counter()
    decode = Engine._decode.lower(engine, k_max, params, state).compile()
    t2 = time.perf_counter()
  prefill_mem, decode_mem = memory.compiled_memory(prefill), memory.compiled_memory(decode)
  peak = max(prefill_mem["peak"], decode_mem["peak"])
  return {
      "slots": slots, "max_len": width + max_new, "prompt_width": width, "max_new_tokens": max_new,
      "prefill_rows": rows, "steps_per_sync": engine.steps_per_sync, "k_max": k_max,
      "memory_per_chip_bytes": {
          "parameters": memory.per_device_bytes(params),
          "kv_cache": memory.per_device_bytes(state["cache"]),
          "decode_state": memory.per_device_bytes(state),
          "prefill_temporaries": prefill_mem["temporaries"], "prefill_peak": prefill_mem["peak"],
          "decode_temporaries": decode_mem["temporaries"], "decode_peak": decode_mem["peak"],
          "peak": peak, "hbm": hbm_bytes, "margin": hbm_bytes - peak},
      "kv_cache_bytes_all_chips": kv_cache_bytes(model.config, slots, width + max_new),
      "fits": peak <= hbm_bytes,
      "compile_seconds": {"prefill": t1 - t0, "decode": t2 - t1},
  }
