"""GRPO's pure pieces against float64 NumPy: advantages, the clipped surrogate's gradient, k3 KL, token weights,
aggregation, reward parsing and errors. No model is compiled here (tests/test_grpo.py trains one)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rankjax.losses import policy_gradient as pg
from rankjax.models.errors import ConfigError
from rankjax.rl import rewards

jax.config.update("jax_enable_x64", False)
RNG = np.random.default_rng(0)


def _np_advantages(r: np.ndarray, estimator: str) -> np.ndarray:
  r = r.astype(np.float64)
  out = np.empty_like(r)
  for i, group in enumerate(r):
    g = len(group)
    if estimator == "grpo":
      out[i] = (group - group.mean()) / (group.std() + 1e-6)
    elif estimator == "drgrpo":
      out[i] = group - group.mean()
    else:  # leave-one-out baseline, written the long way
      out[i] = [group[j] - (group.sum() - group[j]) / (g - 1) for j in range(g)]
  return out


@pytest.mark.parametrize("estimator", pg.ESTIMATORS)
def test_advantages_match_numpy(estimator):
  r = np.concatenate([RNG.integers(0, 2, (3, 8)), RNG.normal(size=(2, 8)), np.ones((1, 8))]).astype(np.float32)
  got = np.asarray(pg.group_advantages(r, estimator))
  np.testing.assert_allclose(got, _np_advantages(r, estimator), rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(got[-1], 0.0)  # a group of equal rewards carries no signal


def test_bad_estimator_and_shape_are_named():
  with pytest.raises(ValueError, match="estimator 'ppo' is not one of"):
    pg.group_advantages(np.zeros((2, 4)), "ppo")
  with pytest.raises(ValueError, match=r"rewards must be \[prompts, generations\]"):
    pg.group_advantages(np.zeros(8), "grpo")


def test_ratio_one_gives_the_reinforce_gradient():
  """At log_prob == old_log_prob (ratio 1) and beta = 0, the gradient of the clipped surrogate w.r.t. log p_t is
  -A_t: the REINFORCE gradient with those advantages (token_mean divides by the token count)."""
  lp = jnp.asarray(RNG.normal(size=(4, 6)) - 2.0, jnp.float32)
  adv = jnp.asarray(RNG.normal(size=(4, 1)) * jnp.ones((4, 6)), jnp.float32)
  mask = jnp.asarray(RNG.integers(0, 2, (4, 6)), jnp.float32).at[0, 0].set(1.0)

  def loss(x):
    per_token, _, _ = pg.clipped_surrogate(x, lp, adv, 0.2, 0.2)
    return pg.aggregate(per_token, mask, "token_mean", 6)

  grad = np.asarray(jax.grad(loss)(lp))
  np.testing.assert_allclose(grad, -np.asarray(adv * mask) / float(mask.sum()), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("advantage", [1.0, -1.0])
def test_clipping_zeroes_the_gradient_outside_the_range(advantage):
  """A > 0: tokens whose ratio exceeds 1 + eps_high get no gradient, below it they do; A < 0: those under
  1 - eps_low get none. The clipped indicator marks exactly those tokens."""
  old = jnp.zeros(5)
  ratios = jnp.asarray([0.5, 0.85, 1.0, 1.15, 1.6])
  lp = jnp.log(ratios)
  adv = jnp.full(5, advantage)
  grad = np.asarray(jax.grad(lambda x: pg.clipped_surrogate(x, old, adv, 0.2, 0.3)[0].sum())(lp))
  _, _, clipped = pg.clipped_surrogate(lp, old, adv, 0.2, 0.3)
  # d(-r A)/d log p = -r A where unclipped
  want_clipped = np.array([False, False, False, False, True]) if advantage > 0 else \
      np.array([True, False, False, False, False])
  np.testing.assert_array_equal(np.asarray(clipped) > 0, want_clipped)
  np.testing.assert_allclose(grad, np.where(want_clipped, 0.0, -np.asarray(ratios) * advantage), rtol=1e-6)


def test_k3_is_nonnegative_and_zero_for_equal_policies():
  lp = jnp.asarray(RNG.normal(size=100) - 3.0)
  ref = jnp.asarray(RNG.normal(size=100) - 3.0)
  kl = np.asarray(pg.k3_kl(lp, ref))
  assert (kl >= 0).all()
  np.testing.assert_allclose(np.asarray(pg.k3_kl(lp, lp)), 0.0, atol=1e-7)
  d = np.asarray(ref, np.float64) - np.asarray(lp, np.float64)
  np.testing.assert_allclose(kl, np.exp(d) - d - 1.0, rtol=1e-5, atol=1e-6)


def test_entropy_top_keeps_the_highest_entropy_fraction_of_supervised_tokens():
  entropy = jnp.asarray([[5.0, 1.0, 4.0, 9.0], [2.0, 3.0, 8.0, 0.5]])
  mask = jnp.asarray([[1, 1, 1, 0], [1, 1, 1, 1]], jnp.float32)  # the 9.0 is off the mask
  w = np.asarray(pg.entropy_top_weights(entropy, mask, 0.3))  # ceil(0.3 * 7) = 3 tokens: 8, 5, 4
  np.testing.assert_array_equal(w, [[1, 0, 1, 0], [0, 0, 1, 0]])
  assert np.asarray(pg.entropy_top_weights(entropy, mask, 1.0)).sum() == 7


@pytest.mark.parametrize("mode", pg.AGGREGATIONS)
def test_aggregation_matches_numpy(mode):
  x = RNG.normal(size=(3, 5))
  m = RNG.integers(0, 2, (3, 5)).astype(np.float64)
  m[2] = 0  # a sequence without tokens
  got = float(pg.aggregate(jnp.asarray(x, jnp.float32), jnp.asarray(m, jnp.float32), mode, 7))
  if mode == "token_mean":
    want = (x * m).sum() / m.sum()
  elif mode == "seq_mean_token_mean":
    want = np.mean([(x[i] * m[i]).sum() / max(m[i].sum(), 1) for i in range(3)])
  else:
    want = (x * m).sum() / (3 * 7)
  np.testing.assert_allclose(got, want, rtol=1e-5)


class _Pool:
  lost = 0

  def grade_many(self, pairs):
    return [c.strip().endswith(g) for c, g in pairs]


def test_rewards_weighted_sum_and_named_errors():
  total, parts = rewards.compute_rewards("correct,format:0.5", ["The answer is 4.", "no idea", "#### 3"],
                                         ["4.", "1", "5"], _Pool())
  np.testing.assert_allclose(parts["correct"], [1, 0, 0])
  np.testing.assert_allclose(parts["format"], [1, 0, 1])
  np.testing.assert_allclose(total, [1.5, 0, 0.5])
  with pytest.raises(ConfigError, match="unknown reward function 'corect'"):
    rewards.parse("corect")
  with pytest.raises(ConfigError, match="weight 'x' of 'format' is not a number"):
    rewards.parse("format:x")

  def broken(completions, golds, pool):
    raise KeyError("field")

  rewards.register("broken_for_test", broken)
  try:
    with pytest.raises(rewards.RewardError, match=r"reward function 'broken_for_test' raised KeyError"):
      rewards.compute_rewards("broken_for_test", ["a"], ["b"], _Pool())
    rewards.register("broken_for_test", lambda c, g, p: [float("nan")] * len(c))
    with pytest.raises(rewards.RewardError, match="or a non-finite one"):
      rewards.compute_rewards("broken_for_test", ["a"], ["b"], _Pool())
  finally:
    rewards.REWARDS.pop("broken_for_test")
