"""prob_power (the -p^k family): k = 0 is SFT and k = 1 is DFT exactly, in the dense and the fused path; the
weight's gradient is that of (1 - p^k) / k (float64 NumPy); bad k is a named error. The float64 references of
every k and fused == dense for it are in test_losses_reference.py and test_losses_fused.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rankjax import losses
from rankjax.models.errors import ConfigError
from tests import numpy_reference as ref
from tests.helpers import loss_config


def _inputs(seed=0, b=2, t=9, d=8, v=37):
  k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(seed), 4)
  h = jax.random.normal(k1, (b, t, d))
  w = 0.7 * jax.random.normal(k2, (d, v))
  targets = jax.random.randint(k3, (b, t), 0, v)
  mask = (jax.random.uniform(k4, (b, t)) > 0.3).astype(jnp.float32)
  return h, w, targets, mask


@pytest.mark.parametrize("k,twin", [(0.0, "sft"), (1.0, "dft")])
def test_k0_is_sft_and_k1_is_dft_exactly(k, twin):
  h, w, targets, mask = _inputs()
  logits = h @ w
  ours, theirs = loss_config(name="prob_power", prob_power_k=k), loss_config(name=twin)
  dense = [jax.value_and_grad(lambda x, c=c: losses.weighted_loss(x, targets, mask, c)[0])(logits)
           for c in (ours, theirs)]
  assert float(dense[0][0]) == float(dense[1][0])
  np.testing.assert_array_equal(np.asarray(dense[0][1]), np.asarray(dense[1][1]))
  fused = [jax.value_and_grad(lambda x, c=c: losses.linear_weighted_loss(x, w, targets, mask, c)[0])(h)
           for c in (ours, theirs)]
  assert float(fused[0][0]) == float(fused[1][0])
  np.testing.assert_array_equal(np.asarray(fused[0][1]), np.asarray(fused[1][1]))


@pytest.mark.parametrize("k", [0.5, 2.0, 10.0])
def test_gradient_is_that_of_one_minus_p_to_the_k_over_k(k):
  """d/dz of sum_t m_t (1 - p_t^k) / k / N (float64, by the chain rule p^k (onehot - softmax) . -1) equals the
  gradient of the weighted loss sg(p^k) (-log p)."""
  h, w, targets, mask = _inputs(seed=1)
  logits = np.asarray(h @ w, np.float64)
  t, m = np.asarray(targets), np.asarray(mask)
  p = ref.softmax(logits)
  pt = np.take_along_axis(p, t[..., None], -1)[..., 0]
  onehot = np.zeros_like(p)
  np.put_along_axis(onehot, t[..., None], 1.0, axis=-1)
  # d (1 - p_t^k)/k / dz = -p_t^(k-1) dp_t/dz = -p_t^k (onehot - p)
  want = np.where(m[..., None] > 0, -(pt ** k)[..., None] * (onehot - p), 0.0) / m.sum()
  got = jax.grad(lambda x: losses.weighted_loss(x, targets, mask,
                                                loss_config(name="prob_power", prob_power_k=k))[0])(
      jnp.asarray(logits, jnp.float32))
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-6 * max(1.0, np.abs(want).max()), rtol=1e-4)


def test_bad_k_is_named():
  with pytest.raises(ConfigError, match=r"prob_power_k=-1.0 must lie in \[0, 1000\]"):
    losses.validate_config(loss_config(name="prob_power", prob_power_k=-1.0))
