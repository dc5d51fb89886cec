"""The histogram estimate of E[R]: the certified interval always holds the exact value and the
estimate is within the documented bound (1 - e^-delta) / 2, on random, Zipf-like and adversarial rows."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from rankjax.losses import expected_rank as er
from tests import numpy_reference as ref


def _rows(kind, v, n=16, seed=0):
  rng = np.random.default_rng(seed)
  if kind == "normal":
    return rng.normal(size=(n, v)) * rng.uniform(0.1, 8.0, size=(n, 1))
  if kind == "zipf":  # LM-like: log p ~ -s log(rank), shuffled over the vocabulary, plus noise
    s = rng.uniform(0.8, 1.6, size=(n, 1))
    z = -s * np.log(np.arange(1, v + 1))[None] + 0.3 * rng.normal(size=(n, v))
    return rng.permuted(z, axis=1)
  if kind == "ties":
    return np.round(rng.normal(size=(n, v)) * 3) / 2
  if kind == "peaked":
    z = rng.normal(size=(n, v))
    z[np.arange(n), rng.integers(0, v, n)] += 40.0
    return z
  raise ValueError(kind)


@pytest.mark.parametrize("kind", ["normal", "zipf", "ties", "peaked"])
@pytest.mark.parametrize("v,delta", [(7, 0.01), (1000, 0.01), (32000, 0.01), (32000, 0.1)])
def test_histogram_interval_contains_exact_and_error_within_bound(kind, v, delta):
  z = _rows(kind, v).astype(np.float32)
  exact = ref.expected_rank(z.astype(np.float64))
  lse = jnp.asarray(np.log(np.exp(z.astype(np.float64) - z.max(-1, keepdims=True)).sum(-1)) + z.max(-1), jnp.float32)
  est, lo, hi = (np.asarray(x, np.float64) for x in er.expected_rank_by_histogram(jnp.asarray(z), lse, delta, 40.0))
  assert np.all(lo <= exact) and np.all(exact <= hi), (lo, exact, hi)
  bound = (1 - math.exp(-delta)) / 2 + 2 * er.ROUNDING_SLACK
  assert np.all(np.abs(est - exact) <= bound * exact), np.max(np.abs(est - exact) / exact)


def test_all_equal_and_one_hot_rows():
  v = 500
  z = np.zeros((2, v), np.float32)
  z[1, 3] = 100.0
  lse = jnp.asarray([math.log(v), 100.0], jnp.float32)
  est, lo, hi = er.expected_rank_by_histogram(jnp.asarray(z), lse, 0.01, 40.0)
  assert lo[0] <= (v + 1) / 2 <= hi[0]
  np.testing.assert_allclose(est[1], 1.0, atol=1e-6)
