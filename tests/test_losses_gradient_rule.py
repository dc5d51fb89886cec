"""The gradient rule of rankjax.losses.global_reduce, checked: under shard_map (check_vma=True)
JAX sums a replicated parameter's gradient over the token axis itself; under pmap (or
check_vma=False) the caller psums it. Either way the result is the single-device gradient."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from rankjax import losses
from tests.helpers import loss_config

N_DEV, PER_DEV, T, D, V = 8, 2, 5, 6, 17


def _inputs():
  rng = np.random.default_rng(0)
  h = rng.standard_normal((N_DEV * PER_DEV, T, D)).astype(np.float32)
  w = rng.standard_normal((D, V)).astype(np.float32)
  targets = rng.integers(0, V, size=(N_DEV * PER_DEV, T)).astype(np.int32)
  mask = (rng.random((N_DEV * PER_DEV, T)) < 0.7).astype(np.float32)
  return h, w, targets, mask


CONFIG = loss_config(name="ranktuner", token_chunk=4)


def _kernel_grad(h, w, t, m, axis_name, fused):
  def loss(w):
    if fused:
      return losses.linear_weighted_loss(h, w, t, m, CONFIG, axis_name=axis_name)[0]
    return losses.weighted_loss(jnp.dot(h, w, preferred_element_type=jnp.float32), t, m, CONFIG, axis_name=axis_name)[0]
  return jax.grad(loss)(w)


def test_replicated_parameter_gradient_summed_by_shard_map_and_by_caller_under_pmap():
  h, w, targets, mask = _inputs()
  single = {fused: jax.jit(lambda h, w, t, m, fused=fused: _kernel_grad(h, w, t, m, None, fused))(h, w, targets, mask)
            for fused in (False, True)}  # jitted: the fused loss op by op compiles far more than one program
  mesh = Mesh(np.asarray(jax.devices()), ("data",))
  for fused in (False, True):
    def checked(h, w, t, m, fused=fused):  # no psum: JAX inserts it (transpose of the replicated w)
      return _kernel_grad(h, w, t, m, "data", fused)

    def unchecked(h, w, t, m, fused=fused):  # check_vma=False: per-device partial gradients
      return jax.lax.psum(_kernel_grad(h, w, t, m, "data", fused), "data")

    specs = dict(mesh=mesh, in_specs=(P("data"), P(), P("data"), P("data")), out_specs=P())
    by_jax = jax.jit(jax.shard_map(checked, **specs))(h, w, targets, mask)
    by_caller = jax.jit(jax.shard_map(unchecked, check_vma=False, **specs))(h, w, targets, mask)
    split = lambda x: x.reshape((N_DEV, PER_DEV) + x.shape[1:])  # noqa: E731
    by_pmap = jax.pmap(lambda h, t, m, fused=fused: jax.lax.psum(_kernel_grad(h, w, t, m, "data", fused), "data"),
                       axis_name="data")(split(h), split(targets), split(mask))[0]
    for got in (by_jax, by_caller, by_pmap):
      np.testing.assert_allclose(got, single[fused], rtol=1e-5, atol=1e-7)
