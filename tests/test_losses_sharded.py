"""Data-parallel losses over 8 fake CPU devices equal the single-device loss on the whole batch.

`weighted_loss(..., axis_name=...)` documents that the returned loss is the *global* loss on
every device (denominator: supervised tokens of the global batch; TALR's median over the
global batch) and that its gradient w.r.t. the local logits is the exact derivative of the
global loss, i.e. the matching slice of the single-device gradient.

Every scheme is evaluated inside one mapped function per mapping (pmap, shard_map on a 1-D
mesh, shard_map on a 2-D mesh), so each mapping compiles once.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from rankjax import losses
from tests import numpy_reference as ref

N_DEV = 8
PER_DEV = 2  # sequences per device
T, V = 5, 33

SCHEMES = {
    "sft": {"name": "sft"},
    "dft": {"name": "dft"},
    "prob_power": {"name": "prob_power", "prob_power_k": 3.0},
    "talr": {"name": "talr"},
    "talr_unnormalized": {"name": "talr", "talr_normalize": False},
    "eaft": {"name": "eaft", "eaft_top_k": 8},
    "ranktuner_exact_prob": {"name": "ranktuner", "form": "exact", "base": "prob"},
    "ranktuner_exact_uniform": {"name": "ranktuner", "form": "exact", "base": "uniform"},
    "ranktuner_bound_prob": {"name": "ranktuner", "form": "bound", "base": "prob"},
    "ranktuner_bound_uniform": {"name": "ranktuner", "form": "bound", "base": "uniform"},
}
AUX_KEYS = ("tokens", "mean_weight", "max_weight", "mean_nll", "mean_rank", "mean_entropy_bits",
            "mean_expected_rank", "mean_ranktuner_weight")


def _config(overrides):
  c = losses.default_config()
  c.expected_rank = "sort"  # compared with the exact float64 reference
  for k, v in overrides.items():
    c[k] = v
  return c


CONFIGS = {k: _config(v) for k, v in SCHEMES.items()}


def _global_batch():
  """Logits [N_DEV*PER_DEV, T, V] with varied entropy; device 3 has no supervised token;
  the global count of supervised tokens is odd (numpy's median is then one middle value),
  and per-device medians differ from the global one (see test_talr_median_is_global)."""
  rng = np.random.default_rng(1234)
  b = N_DEV * PER_DEV
  temp = rng.choice([0.3, 1.0, 4.0], size=(b, T, 1))
  logits = (temp * rng.standard_normal((b, T, V))).astype(np.float32)
  targets = rng.integers(0, V, size=(b, T)).astype(np.int32)
  top = np.argmax(logits, axis=-1).astype(np.int32)
  targets = np.where(rng.random((b, T)) < 0.4, top, targets)
  mask = (rng.random((b, T)) < 0.75).astype(np.float32)
  mask[3 * PER_DEV:4 * PER_DEV] = 0.0
  mask[0, 0] = 1.0
  if int(mask.sum()) % 2 == 0:
    mask[0, 1] = 1.0 - mask[0, 1]
  return logits, targets, mask


def _per_scheme(logits, targets, mask, axis_name):
  """(loss, grad w.r.t. logits, selected aux) of every scheme, as dicts keyed by scheme."""
  out = {}
  for key, config in CONFIGS.items():
    def f(z, config=config):
      return losses.weighted_loss(z, targets, mask, config, axis_name=axis_name)
    (loss, aux), grad = jax.value_and_grad(f, has_aux=True)(logits)
    aux = {k: aux[k] for k in AUX_KEYS + ("talr_tau",) if k in aux}
    out[key] = (loss, grad, aux)
  return out


@pytest.fixture(scope="module")
def batch_and_single():
  logits, targets, mask = _global_batch()
  single = jax.jit(lambda z, t, m: _per_scheme(z, t, m, None))(logits, targets, mask)
  return (logits, targets, mask), jax.device_get(single)


def _check(mapped, single, batch, per_device_loss):
  """`per_device_loss[key]`: the loss seen by each of the 8 devices; mapped grads are global-shaped."""
  logits, targets, mask = batch
  failures = []
  for key in CONFIGS:
    loss1, grad1, aux1 = single[key]
    _, gradm, auxm = mapped[key]
    try:
      # the single-device library value is itself checked against the float64 reference
      np.testing.assert_allclose(loss1, ref.loss(logits, targets, mask, CONFIGS[key]), rtol=1e-4)
      losses_dev = np.asarray(per_device_loss[key]).reshape(-1)
      assert losses_dev.shape == (N_DEV,)
      # same terms summed in a different order (per device, then psum): float32 rounding only
      np.testing.assert_allclose(losses_dev, np.full(N_DEV, loss1), rtol=2e-6, err_msg="loss")
      np.testing.assert_allclose(np.asarray(gradm).reshape(grad1.shape), grad1, rtol=1e-5,
                                 atol=1e-7 * np.max(np.abs(grad1)), err_msg="grad")
      for k, v in aux1.items():
        got = np.asarray(auxm[k]).reshape(-1)
        np.testing.assert_allclose(got, np.full(got.shape, v), rtol=2e-6, err_msg=f"aux[{k}]")
    except AssertionError as e:
      failures.append(f"[{key}] {e}")
  assert not failures, "\n".join(failures)


def test_pmap_matches_single_device(batch_and_single):
  batch, single = batch_and_single
  logits, targets, mask = (x.reshape((N_DEV, PER_DEV) + x.shape[1:]) for x in batch)
  mapped = jax.pmap(lambda z, t, m: _per_scheme(z, t, m, "data"), axis_name="data")(logits, targets, mask)
  mapped = jax.device_get(mapped)
  _check(mapped, single, batch, {k: v[0] for k, v in mapped.items()})


def _shard_map_run(mesh, axes, batch):
  spec = P(axes)

  def body(z, t, m):
    out = _per_scheme(z, t, m, axes)
    # keep per-device scalars: give them a leading axis of length 1, concatenated over devices
    return jax.tree.map(lambda x: x[None] if x.ndim == 0 else x, out)

  fn = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec))
  mapped = jax.device_get(fn(*batch))
  return mapped


def test_shard_map_1d_mesh_matches_single_device(batch_and_single):
  batch, single = batch_and_single
  mesh = Mesh(np.array(jax.devices()[:N_DEV]), ("data",))
  mapped = _shard_map_run(mesh, "data", batch)
  _check(mapped, single, batch, {k: v[0] for k, v in mapped.items()})


def test_shard_map_2d_mesh_matches_single_device(batch_and_single):
  batch, single = batch_and_single
  mesh = Mesh(np.array(jax.devices()[:N_DEV]).reshape(4, 2), ("data", "model"))
  mapped = _shard_map_run(mesh, ("data", "model"), batch)
  _check(mapped, single, batch, {k: v[0] for k, v in mapped.items()})


def test_talr_median_is_global(batch_and_single):
  """TALR's tau equals numpy's median over all supervised tokens, not a per-device median."""
  (logits, targets, mask), single = batch_and_single
  tau = ref.talr_tau(logits, targets, mask, CONFIGS["talr"].talr_min_tau)
  np.testing.assert_allclose(single["talr"][2]["talr_tau"], tau, rtol=1e-5)
  nll = -ref.target_log_prob(logits, targets)
  local = [np.median(nll[i * PER_DEV:(i + 1) * PER_DEV][mask[i * PER_DEV:(i + 1) * PER_DEV] > 0])
           for i in range(N_DEV) if mask[i * PER_DEV:(i + 1) * PER_DEV].sum() > 0]
  assert not np.allclose(local, tau), "test data too uniform to tell a global median from local ones"
