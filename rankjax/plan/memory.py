"""Per-chip bytes: of abstract arrays from their shardings, and of a compiled program from XLA's memory analysis."""

from __future__ import annotations

import math

import jax
import numpy as np


def per_device_bytes(tree) -> int:
  """Bytes one device holds of the `jax.ShapeDtypeStruct` tree `tree` (each leaf's shard shape from its sharding;
  a replicated leaf counts whole). The largest over devices, which for even shardings is every device's."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
    total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
  return int(total)


def compiled_memory(compiled) -> dict:
  """Bytes per device of a compiled program, from XLA's `memory_analysis()`:

  arguments, outputs (all), aliased (outputs written into donated arguments), outputs_new (outputs - aliased),
  temporaries, code, and peak = arguments + outputs_new + temporaries + code: what the device must hold at once
  at worst while the program runs (XLA's buffer assignment already overlaps temporaries whose lives do not).
  """
  m = compiled.memory_analysis()
  arguments = int(m.argument_size_in_bytes)
  outputs = int(m.output_size_in_bytes)
  aliased = int(m.alias_size_in_bytes)
  temporaries = int(m.temp_size_in_bytes)
  code = int(m.generated_code_size_in_bytes)
  return {"arguments": arguments, "outputs": outputs, "aliased": aliased, "outputs_new": outputs - aliased,
          "temporaries": temporaries, "code": code, "peak": arguments + outputs - aliased + temporaries + code}


def compiled_cost(compiled) -> dict:
  """XLA's cost analysis of one execution on one device: {"flops", "bytes_accessed"} (NaN where absent). XLA
  counts a while loop's body once, whatever its trip count."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older JAX: one dict per program
    cost = cost[0] if cost else {}
  cost = cost or {}
  return {"flops": float(cost.get("flops", float("nan"))),
          "bytes_accessed": float(cost.get("bytes accessed", float("nan")))}


def gib(n: float) -> float:
  """Bytes -> GiB (2**30 bytes)."""
  return n / 1024 ** 3
