"""Frozen projection kernels stored quantised (QLoRA, Dettmers et al. 2023, arXiv 2305.14314), dequantised where
they are used.

Modes:
  "int8": symmetric int8 per output channel: scale = max |W| over the input axes / 127; 1 byte per weight plus one
          float32 per output unit.
  "nf4":  4-bit NormalFloat codes (the QLoRA paper's 16 levels, quantiles of a standard normal scaled to [-1, 1]) in
          blocks of 64 consecutive weights of the flattened kernel, each block scaled by its absmax (float32, no
          double quantisation); two codes per byte: 0.5 byte per weight plus 4 bytes per 64 weights.

A quantised kernel lives in the "quantized" variable collection at the path of the kernel it replaces; the decoder's
projections read it from there when it is present (`projection_kernel`), so the parameter tree keeps only what is
not quantised. Dequantised in the compute dtype right before the matmul; under remat the dequantised copy is
recomputed in the backward pass instead of being kept.
"""

from __future__ import annotations

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from rankjax.models.tree_paths import build, items

MODES = ("none", "int8", "nf4")
NF4_BLOCK = 64
COLLECTION = "quantized"
# The NF4 data type of the QLoRA paper (appendix E): 16 levels, 0 exactly representable.
NF4_LEVELS = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                       -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                       0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                       0.7229568362236023, 1.0], np.float32)


@flax.struct.dataclass
class QuantizedKernel:
  """A kernel of `shape` (its first `in_ndim` axes the input) stored as `values` (int8 [*shape], or nf4 codes
  packed two per uint8 [blocks, 32]) and float32 `scales` ([*out] per output unit, or [blocks] per block)."""

  values: jax.Array
  scales: jax.Array
  shape: tuple = flax.struct.field(pytree_node=False)
  mode: str = flax.struct.field(pytree_node=False)
  in_ndim: int = flax.struct.field(pytree_node=False, default=1)

  @property
  def nbytes(self) -> int:
    return int(self.values.size * self.values.dtype.itemsize + self.scales.size * self.scales.dtype.itemsize)


def quantize(w: jax.Array, mode: str, in_ndim: int = 1) -> QuantizedKernel:
  """`w` quantised in `mode` ("int8" or "nf4"); jit-able."""
  w32 = jnp.asarray(w, jnp.float32)
  if mode == "int8":
    scale = jnp.max(jnp.abs(w32), axis=tuple(range(in_ndim))) / 127.0
    safe = jnp.where(scale > 0, scale, 1.0)
    values = jnp.clip(jnp.round(w32 / safe), -127, 127).astype(jnp.int8)
    return QuantizedKernel(values, scale, tuple(w.shape), mode, in_ndim)
  if mode == "nf4":
    flat = w32.reshape(-1)
    pad = (-flat.size) % NF4_BLOCK
    blocks = jnp.pad(flat, (0, pad)).reshape(-1, NF4_BLOCK)
    absmax = jnp.max(jnp.abs(blocks), axis=1)
    normalised = blocks / jnp.where(absmax > 0, absmax, 1.0)[:, None]
    midpoints = jnp.asarray((NF4_LEVELS[1:] + NF4_LEVELS[:-1]) / 2)
    codes = jnp.searchsorted(midpoints, normalised).astype(jnp.uint8)  # the nearest level's index
    packed = (codes[:, 0::2] << 4) | codes[:, 1::2]
    return QuantizedKernel(packed, absmax, tuple(w.shape), mode, in_ndim)
  raise ValueError(f"quantize: mode {mode!r} is not one of {MODES[1:]}")


def dequantize(q: QuantizedKernel, dtype=jnp.float32) -> jax.Array:
  """The kernel `q` stands for, of q.shape, in `dtype` (the product in float32)."""
  if q.mode == "int8":
    return (q.values.astype(jnp.float32) * q.scales).astype(dtype)
  codes = jnp.stack([q.values >> 4, q.values & 15], axis=-1).reshape(q.values.shape[0], NF4_BLOCK)
  blocks = jnp.asarray(NF4_LEVELS)[codes.astype(jnp.int32)] * q.scales[:, None]
  size = int(np.prod(q.shape))
  return blocks.reshape(-1)[:size].reshape(q.shape).astype(dtype)


def projection_kernel(module: nn.Module, name: str, init, shape: tuple, axes: tuple, param_dtype, dtype):
  """The kernel `name` of `module` in `dtype`: dequantised from the "quantized" collection when the model is applied
  with one there, else the ordinary parameter (declared with `init` and logical `axes`)."""
  if module.has_variable(COLLECTION, name):
    return dequantize(module.get_variable(COLLECTION, name), dtype)
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, param_dtype).astype(dtype)


def _in_ndim(path: tuple) -> int:
  return 2 if path[-2:] == ("attn", "o") else 1


def quantize_projections(params, mode: str, is_target) -> dict:
  """`params` (nested dicts) with each projection kernel at a path for which `is_target("layer_0/attn/q")` holds
  replaced by its QuantizedKernel; jit-able."""
  return build((path, quantize(leaf, mode, _in_ndim(path)) if is_target("/".join(path)) else leaf)
               for path, leaf in items(params))


def is_base_projection(path: str) -> bool:
  """True for the kernels QLoRA stores quantised: every layer's seven projections (never the embedding, the LM head,
  norms or biases), whichever of them carry adapters."""
  from rankjax.models.lora import PROJECTIONS  # noqa: PLC0415 (lora imports nothing from here; kept lazy anyway)
  return path.startswith("layer_") and path.endswith(PROJECTIONS)


def quantized_sharding(q: QuantizedKernel, kernel_sharding):
  """The NamedShardings of the stored arrays of `q` (abstract or real) whose kernel has `kernel_sharding`: int8
  values as the kernel, their scales as its output axes; nf4 blocks split over the mesh axes that split the kernel
  when they divide the block count, else replicated."""
  from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: PLC0415
  mesh, spec = kernel_sharding.mesh, tuple(kernel_sharding.spec) + (None,) * len(q.shape)
  if q.mode == "int8":
    return q.replace(values=kernel_sharding, scales=NamedSharding(mesh, P(*spec[q.in_ndim:len(q.shape)])))
  axes = tuple(a for entry in spec if entry for a in ((entry,) if isinstance(entry, str) else entry))
  ways = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
  rows = P(axes if axes and q.values.shape[0] % ways == 0 else None)
  return q.replace(values=NamedSharding(mesh, rows), scales=NamedSharding(mesh, rows))


def variables(params) -> dict:
  """The variables to `apply` a model with: {"params": the plain arrays} plus {"quantized": the QuantizedKernels}
  when `params` holds any."""
  leaves = list(items(params))
  quantized = [(p, v) for p, v in leaves if isinstance(v, QuantizedKernel)]
  if not quantized:
    return {"params": params}
  return {"params": build((p, v) for p, v in leaves if not isinstance(v, QuantizedKernel)),
          COLLECTION: build(quantized)}


def dequantize_tree(params, dtype) -> dict:
  """`params` with every QuantizedKernel replaced by its dequantised array in `dtype`."""
  return build((p, dequantize(v, dtype) if isinstance(v, QuantizedKernel) else v)
                for p, v in items(params))


def tree_nbytes(params) -> int:
  """Bytes of a parameter tree, QuantizedKernels at their stored size."""
  return sum(int(x.size * x.dtype.itemsize) for x in jax.tree.leaves(params))
