"""Vocabulary parallelism: the kernel's vocabulary split over a mesh axis, tokens over the other,
inside shard_map; loss, aux and both gradients equal one device."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

from rankjax import losses
from tests.helpers import loss_config


def _inputs(b=4, t=10, d=16, v=64, seed=0):
  k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(seed), 4)
  h = jax.random.normal(k1, (b, t, d))
  w = 0.5 * jax.random.normal(k2, (d, v))
  targets = jax.random.randint(k3, (b, t), 0, v)
  mask = (jax.random.uniform(k4, (b, t)) > 0.3).astype(jnp.float32)
  return h, w, targets, mask


# Each case exercises its own cross-shard reduction: the histogram E[R] (per-shard counts summed), the exact E[R]
# (a sort over the whole vocabulary), TALR's median over the data axis, EAFT's top-k across shards. SFT's loss (the
# mean NLL: logsumexp and target logit across shards) is part of every scheme's aux and adds nothing. The (1, 8) mesh
# (no data split, the vocabulary in 8 shards) runs the same code as (2, 4) with more shards: one scheme there.
VOCAB_PARALLEL_CASES = [((2, 4), "ranktuner", "histogram"), ((2, 4), "ranktuner", "sort"),
                        ((2, 4), "talr", "histogram"), ((2, 4), "eaft", "histogram"),
                        ((1, 8), "ranktuner", "histogram")]


@pytest.mark.parametrize("mesh_shape,name,method", VOCAB_PARALLEL_CASES,
                         ids=[f"{name}-{method}-mesh_shape{[(2, 4), (1, 8)].index(mesh)}"
                              for mesh, name, method in VOCAB_PARALLEL_CASES])
def test_vocab_parallel_equals_single_device(mesh_shape, name, method):
  config = loss_config(name=name, expected_rank=method, token_chunk=8, vocab_chunk=4, eaft_top_k=5)
  h, w, targets, mask = _inputs()
  (l1, a1), (gh1, gw1) = jax.jit(jax.value_and_grad(
      lambda h, w: losses.linear_weighted_loss(h, w, targets, mask, config), argnums=(0, 1), has_aux=True))(h, w)
  mesh = Mesh(np.asarray(jax.devices()).reshape(mesh_shape), ("data", "tensor"))

  def per_device(h, w, t, m):
    (loss, aux), (gh, gw) = jax.value_and_grad(
        lambda h, w: losses.linear_weighted_loss(h, w, t, m, config, axis_name="data", vocab_axis_name="tensor"),
        argnums=(0, 1), has_aux=True)(h, w)
    per = lambda x: x[None, None]  # noqa: E731  one value per device: all must equal the global one
    return per(loss), jax.tree.map(per, aux), gh, gw

  each = P("data", "tensor")
  fn = jax.shard_map(per_device, mesh=mesh, in_specs=(P("data"), P(None, "tensor"), P("data"), P("data")),
                     out_specs=(each, each, P("data"), P(None, "tensor")))
  l2, a2, gh2, gw2 = jax.jit(fn)(h, w, targets, mask)
  np.testing.assert_allclose(l2, np.full(mesh_shape, l1), rtol=1e-5)
  for k in a1:
    np.testing.assert_allclose(a2[k], np.full(mesh_shape, a1[k]), rtol=1e-5, atol=1e-6, err_msg=k)
  np.testing.assert_allclose(gh2, gh1, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(gw2, gw1, rtol=1e-5, atol=1e-6)
