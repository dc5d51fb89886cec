"""Device meshes with named axes and parameter shardings from logical axis names.

Mesh axes: "data" (batch), "fsdp" (batch and parameters: ZeRO-3 style), "tensor" (heads,
MLP and vocabulary: Megatron style). Each parameter carries logical axis names (see
`rankjax.models.logical_axes`); `rules` map them onto mesh axes.
"""

from __future__ import annotations

import contextlib
import threading

from absl import logging

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rankjax.models.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")
DEFAULT_RULES = (("vocab", "tensor"), ("embed", "fsdp"), ("heads", "tensor"), ("kv_heads", "tensor"),
                 ("kv", None), ("mlp", "tensor"), ("norm", None))
BATCH_AXES = ("data", "fsdp")  # the batch dimension is split over both
# Activations between blocks: rows over the batch axes, the hidden dimension whole. Without a constraint XLA may
# follow the FSDP parameters' split of "embed" into the activations and all-reduce every norm and projection
# (`python -m rankjax.plan` counted 3.1 TiB of all-reduce per step for Qwen2.5-7B on v5p-8 before these existed).
# Inside a block: heads and the MLP's hidden units split over "tensor" (Megatron), as the weights are.
ACTIVATION_RULES = (("activation_batch", BATCH_AXES), ("activation_length", None), ("activation_embed", None),
                    ("activation_heads", "tensor"), ("activation_kv", None), ("activation_mlp", "tensor"))
ACTIVATION_AXES = ("activation_batch", "activation_length", "activation_embed")
_ACTIVATION_MESH = threading.local()


def check_mesh_sizes(sizes: dict, device_count: int, where: str = "config.mesh") -> None:
  """Raises ConfigError naming `where` unless the mesh sizes {"data", "fsdp", "tensor"} tile `device_count`
  devices: each a positive size or -1 (the remaining devices; at most one), their product equal to the count
  (dividing it when one is -1)."""
  sizes = {axis: int(sizes[axis]) for axis in MESH_AXES}
  shown = ", ".join(f"{where}.{a}={s}" for a, s in sizes.items())
  for axis, size in sizes.items():
    if size == 0 or size < -1:
      raise ConfigError(f"{where}.{axis}={size} must be a positive size, or -1 for all remaining devices")
  rest = [axis for axis, size in sizes.items() if size == -1]
  if len(rest) > 1:
    raise ConfigError(f"{where}: at most one of data/fsdp/tensor may be -1 (the remaining devices); got {shown}")
  known = int(np.prod([s for s in sizes.values() if s != -1]))
  if rest and device_count % known:
    raise ConfigError(f"{where}: the fixed axes multiply to {known}, which does not divide the {device_count} devices "
                      f"of this run ({shown})")
  if not rest and known != device_count:
    raise ConfigError(f"{where}: data*fsdp*tensor = {known} but this run has {device_count} devices ({shown}); "
                      "the product must equal the device count (set one axis to -1 to take the rest)")


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
  """A ("data", "fsdp", "tensor") mesh; one size may be -1 (all remaining devices)."""
  devices = np.asarray(jax.devices() if devices is None else devices)
  sizes = [data, fsdp, tensor]
  if sizes.count(-1) > 1:
    raise ValueError(f"mesh: at most one of data/fsdp/tensor may be -1, got {sizes}")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if devices.size % known:
      raise ValueError(f"mesh: {devices.size} devices are not divisible by fsdp*tensor*data = {known}")
    sizes[sizes.index(-1)] = devices.size // known
  if int(np.prod(sizes)) != devices.size:
    raise ValueError(f"mesh: data*fsdp*tensor = {int(np.prod(sizes))} but there are {devices.size} devices")
  return Mesh(devices.reshape(sizes), MESH_AXES)


def mesh_spec(logical: P, shape: tuple[int, ...], mesh: Mesh, rules=DEFAULT_RULES) -> P:
  """The mesh PartitionSpec of a parameter with logical axes `logical` and `shape`.

  A mesh axis that is absent from `mesh`, of size 1, or does not divide the dimension is
  dropped (that dimension is replicated, and the first few such cases are logged).
  """
  spec = nn.logical_to_mesh_axes(logical, rules)
  out = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    axes = tuple(a for a in axes if a in mesh.shape and mesh.shape[a] > 1)
    size = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
    if dim % size:
      logging.log_first_n(logging.INFO, "sharding: dimension %d of %s is not divisible by %s; replicated", 10, dim, logical, axes)
      axes = ()
    out.append(axes[0] if len(axes) == 1 else (axes or None))
  return P(*out)


def param_shardings(logical_specs, abstract_params, mesh: Mesh, rules=None):
  """A tree of NamedSharding for parameters, from the logical-axis tree and shapes (`jax.ShapeDtypeStruct` tree)."""
  rules = DEFAULT_RULES if rules is None else tuple(rules)
  return jax.tree.map(lambda spec, a: NamedSharding(mesh, mesh_spec(spec, a.shape, mesh, rules)),
                      logical_specs, abstract_params, is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh: Mesh, ndim: int = 3, batch_axis: int = 1) -> NamedSharding:
  """Sharding of a batch array whose `batch_axis` splits over the mesh's data and fsdp axes."""
  spec = [None] * ndim
  spec[batch_axis] = tuple(a for a in BATCH_AXES if a in mesh.shape)
  return NamedSharding(mesh, P(*spec))


@contextlib.contextmanager
def activation_sharding(mesh: Mesh | None):
  """Within this context, `constrain_activations` pins activations to `mesh` by `ACTIVATION_RULES` (at trace
  time: enter it inside the jitted function). `mesh` None: no constraint."""
  previous = getattr(_ACTIVATION_MESH, "mesh", None)
  _ACTIVATION_MESH.mesh = mesh
  try:
    yield
  finally:
    _ACTIVATION_MESH.mesh = previous


def constrain_activations(x, logical=ACTIVATION_AXES):
  """`x` (default [batch, length, embed]) constrained to the sharding of `logical` axes on the mesh of the enclosing
  `activation_sharding` context (dimensions a mesh axis does not divide stay whole); `x` unchanged outside one."""
  mesh = getattr(_ACTIVATION_MESH, "mesh", None)
  if mesh is None:
    return x
  spec = mesh_spec(P(*logical), x.shape, mesh, ACTIVATION_RULES)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
