"""RankTuner's bound form as the spec (section 3) and the reference implementation define it: Massey's s above
2 bits, 2 - p_max below, the floor on p s; dense, fused and vocabulary-parallel paths against float64."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

from rankjax import losses
from rankjax.losses.weights import ranktuner_weight
from tests import numpy_reference as ref
from tests.helpers import loss_config

V = 8


def _rows() -> tuple[np.ndarray, np.ndarray]:
  """Logit rows [N, V] and targets [N] covering both branches, the branch point and the floor."""
  rows, targets = [], []
  peaked = np.full(V, -4.0)
  peaked[0] = 4.0  # H well below 2 bits
  rows += [peaked, peaked, peaked]
  targets += [0, 3, 7]  # the top token, and tail tokens
  uniform4 = np.full(V, -60.0)
  uniform4[:4] = 0.0  # exactly 2 bits in float32 and float64: the branch point (Massey's side)
  rows += [uniform4, uniform4]
  targets += [1, 6]  # 6: p ~ e^-60, so p s is below the floor
  rng = np.random.default_rng(0)
  broad = rng.standard_normal((4, V)) * 0.3  # H close to 3 bits
  rows += list(broad)
  targets += [0, 2, 5, 7]
  near = np.log(np.array([0.47, 0.2, 0.15, 0.1, 0.04, 0.02, 0.01, 0.01]))  # H just under / over 2 bits
  rows += [near, near * 0.9]
  targets += [4, 4]
  deep = np.zeros(V)
  deep[5] = -40.0  # p ~ 4e-18: p s is floored, S = 1e6^K
  rows += [deep]
  targets += [5]
  return np.asarray(rows, np.float64), np.asarray(targets, np.int32)


def test_hand_values_on_both_branches_and_at_the_branch_point():
  f_k = lambda xi: math.log2(xi + 1.0) ** -2  # noqa: E731
  # H = 1.75 bits < 2: s = 2 - p_max = 1.5; target p = 1/8 has rank 4 (ties count against it).
  z = np.log(np.array([[0.5, 0.25, 0.125, 0.125]]))
  np.testing.assert_allclose(ref.ranktuner_scale(z, np.array([2]), "bound"), [(0.125 * 1.5) ** -f_k(4.0)])
  # Exactly 2 bits (uniform over 4): Massey's branch, s = 2^0 + 1 = 2; rank 4.
  z = np.zeros((1, 4))
  np.testing.assert_allclose(ref.ranktuner_scale(z, np.array([0]), "bound"), [(0.25 * 2.0) ** -f_k(4.0)])
  # 3 bits (uniform over 8): s = 3, rank 8 = xi.
  z = np.zeros((1, 8))
  np.testing.assert_allclose(ref.ranktuner_scale(z, np.array([0]), "bound"), [(0.125 * 3.0) ** -f_k(8.0)])
  # The floor: p s = 1e-12 < 1e-6, so S = 1e6^K with K from xi = max(R, s).
  z = np.log(np.array([[1 - 1e-12, 1e-12]]))
  s = 2.0 - (1 - 1e-12)
  np.testing.assert_allclose(ref.ranktuner_scale(z, np.array([1]), "bound"), [1e6 ** f_k(2.0)])
  assert 1e-12 * s < 1e-6


def test_dense_statistics_branch_like_the_reference():
  z, t = _rows()
  stats = losses.token_stats(jnp.asarray(z, jnp.float32), jnp.asarray(t))
  h64 = ref.entropy_bits(z)
  assert np.all((np.asarray(stats.entropy_bits) >= 2.0) == (h64 >= 2.0))  # no row near enough to flip
  assert np.any(h64 < 2.0) and np.any(h64 > 2.0) and np.any(h64 == 2.0)
  np.testing.assert_allclose(np.exp(np.asarray(stats.log_prob_max)), ref.max_prob(z), rtol=1e-6)


@pytest.mark.parametrize("base", ["prob", "uniform"])
@pytest.mark.parametrize("floor", [1e-6, 1e-3])
def test_dense_and_fused_weights_equal_float64(base, floor):
  z, t = _rows()
  config = loss_config(name="ranktuner", form="bound", base=base, bound_floor=floor, diagnostics=False)
  want = ref.ranktuner_weight(z, t, "bound", base, floor)
  mask = jnp.ones(t.shape, jnp.float32)
  dense = losses.token_weights(jnp.asarray(z, jnp.float32), jnp.asarray(t), mask, config)
  np.testing.assert_allclose(dense, want, rtol=2e-5)
  # Fused: hidden = the logit rows, kernel = identity, so hidden @ kernel are the same logits.
  stats, _ = losses.linear_token_stats(jnp.asarray(z, jnp.float32), jnp.eye(V), jnp.asarray(t), token_chunk=4,
                                       with_expected_rank=False)
  fused = ranktuner_weight(stats, "bound", base, floor)
  np.testing.assert_allclose(fused, want, rtol=2e-5)
  assert float(jnp.max(fused)) <= 1.0 / floor * (1 + 1e-5)


def test_vocab_parallel_weights_equal_float64():
  """p_max is a max over the whole vocabulary: pmax across the shards."""
  z, t = _rows()
  want = ref.ranktuner_weight(z, t, "bound", "uniform")
  mesh = Mesh(np.asarray(jax.devices()[:4]).reshape(1, 4), ("data", "tensor"))

  def per_device(h, w, targets):
    stats, _ = losses.linear_token_stats(h, w, targets, token_chunk=4, vocab_axis_name="tensor",
                                         with_expected_rank=False)
    return ranktuner_weight(stats, "bound", "uniform")

  fn = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(None, "tensor"), P()), out_specs=P())
  got = jax.jit(fn)(jnp.asarray(z, jnp.float32), jnp.eye(V), jnp.asarray(t))
  np.testing.assert_allclose(got, want, rtol=2e-5)


def test_bound_floor_is_validated():
  with pytest.raises(ValueError, match="bound_floor"):
    losses.validate_config(loss_config(bound_floor=0.0))
