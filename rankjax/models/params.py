"""A model's parameter shapes, logical axes and mesh shardings, without allocating the parameters."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from rankjax.models import sharding


def abstract_params(model):
  """(logical-axis PartitionSpec tree, jax.ShapeDtypeStruct tree) of `model`'s parameters."""
  boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32)))["params"]
  return nn.get_partition_spec(boxed), nn.meta.unbox(boxed)


def model_shardings(model, mesh: Mesh, rules=None):
  """Tree of NamedSharding for `model`'s parameters on `mesh` (logical axes -> mesh axes by `rules`)."""
  logical, abstract = abstract_params(model)
  return sharding.param_shardings(logical, abstract, mesh, rules)


def logical_axes(model):
  """Pytree of logical axis names (PartitionSpec of logical names) for each parameter."""
  return abstract_params(model)[0]


def count_params(params) -> int:
  """Returns the number of scalars in the parameter tree `params`."""
  return sum(int(x.size) for x in jax.tree.leaves(params))
