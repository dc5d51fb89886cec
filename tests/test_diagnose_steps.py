"""Statistics computed on demand: `token_stats` computes only what is asked for (same values), a scheme
computes only what its weights need, and a step with `diagnose=False` skips the diagnostics and histograms
while its loss, gradient and update equal those of a diagnosed step (dense and fused, and in the train step)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rankjax import losses
from rankjax.losses.config import stats_options
from tests.helpers import loss_config
from tests.test_train import _batch, _setup

NONE = {"with_entropy": False, "with_rank": False, "with_expected_rank": False}


def _logits(b=2, t=9, v=300, seed=0):
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(b, t, v)).astype(np.float32) * rng.uniform(0.5, 6.0, size=(b, t, 1)).astype(np.float32)
  return jnp.asarray(z), jnp.asarray(rng.integers(0, v, size=(b, t)), jnp.int32)


@pytest.mark.parametrize("flags", [NONE, dict(NONE, with_entropy=True), dict(NONE, with_rank=True),
                                   dict(NONE, with_expected_rank=True, expected_rank="histogram")])
def test_token_stats_computes_what_is_asked_and_the_same_values(flags):
  z, t = _logits()
  full = losses.token_stats(z, t, expected_rank="histogram")
  part = losses.token_stats(z, t, **{"expected_rank": "histogram", **flags})
  asked = {"entropy_bits": flags["with_entropy"], "rank": flags["with_rank"],
           "expected_rank": flags["with_expected_rank"]}
  for key, want in asked.items():
    assert (part[key] is not None) == want, key
    if want:
      np.testing.assert_array_equal(np.asarray(part[key]), np.asarray(full[key]), err_msg=key)
  np.testing.assert_array_equal(np.asarray(part.log_prob), np.asarray(full.log_prob))
  np.testing.assert_array_equal(np.asarray(part.log_prob_max), np.asarray(full.log_prob_max))
  # The same gradient of log p_t whatever else is computed.
  g = lambda **kw: jax.grad(lambda z: jnp.sum(losses.token_stats(z, t, **kw).log_prob))(z)  # noqa: E731
  np.testing.assert_allclose(np.asarray(g(**flags)), np.asarray(jax.nn.one_hot(t, z.shape[-1]) - jax.nn.softmax(z)),
                             atol=1e-6)


@pytest.mark.parametrize("name,form,needs", [
    ("sft", "exact", set()), ("dft", "exact", set()), ("talr", "exact", set()), ("eaft", "exact", set()),
    ("ranktuner", "exact", {"rank", "expected_rank"}), ("ranktuner", "bound", {"entropy_bits", "rank"})])
def test_schemes_compute_only_what_their_weights_need(name, form, needs):
  config = loss_config(name=name, form=form, diagnostics=False)
  z, t = _logits()
  h, w = z.reshape(-1, z.shape[-1]), jnp.eye(z.shape[-1])
  stats, _ = jax.jit(lambda h, w, t: losses.linear_token_stats(h, w, t, token_chunk=5, **stats_options(config)))(
      h, w, t.reshape(-1))  # jitted: op by op, the fused statistics compile far more
  computed = {k for k in ("entropy_bits", "rank", "expected_rank") if stats[k] is not None}
  assert computed == needs
  assert {k for k in ("entropy_bits", "rank", "expected_rank") if stats_options(loss_config(name=name, form=form))[
      {"entropy_bits": "with_entropy", "rank": "with_rank", "expected_rank": "with_expected_rank"}[k]]} == {
          "entropy_bits", "rank", "expected_rank"}  # diagnostics: everything


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("name,form", [("ranktuner", "exact"), ("ranktuner", "bound"), ("sft", "exact")])
def test_undiagnosed_call_has_the_same_loss_and_gradient(fused, name, form):
  config = loss_config(name=name, form=form, diagnostics=True, histograms=True, token_chunk=4)
  rng = np.random.default_rng(1)
  h = jnp.asarray(rng.normal(size=(3, 11, 8)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(8, 50)), jnp.float32)
  t = jnp.asarray(rng.integers(0, 50, size=(3, 11)), jnp.int32)
  m = jnp.asarray(rng.random((3, 11)) < 0.6, jnp.float32)

  def f(h, w, diagnose):
    if fused:
      return losses.linear_weighted_loss(h, w, t, m, config, diagnose=diagnose)
    return losses.weighted_loss(h @ w, t, m, config, diagnose=diagnose)

  run = jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))
  (loss_on, aux_on), grads_on = run(h, w, jnp.bool_(True))
  (loss_off, aux_off), grads_off = run(h, w, jnp.bool_(False))
  (loss_static, aux_static), _ = jax.jit(jax.value_and_grad(lambda h, w: f(h, w, None), argnums=(0, 1),
                                                            has_aux=True))(h, w)  # diagnose=None: a Python constant
  np.testing.assert_allclose(loss_on, loss_off, rtol=1e-6)
  np.testing.assert_allclose(loss_on, loss_static, rtol=1e-6)
  for a, b in zip(grads_on, grads_off):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-8)
  for k in ("mean_weight", "mean_nll", "mean_expected_rank", "mean_ranktuner_weight"):
    np.testing.assert_allclose(aux_on[k], aux_static[k], rtol=1e-6, err_msg=k)
  np.testing.assert_allclose(aux_on["mean_weight"], aux_off["mean_weight"], rtol=1e-6)
  assert float(aux_on["hist/weight/counts"].sum()) == float(m.sum())
  assert float(aux_off["hist/weight/counts"].sum()) == 0.0  # histograms skipped
  assert set(aux_on) == set(aux_off)


def test_train_step_update_does_not_depend_on_diagnose():
  # One scheme, one compile: the loss-level tests above cover every scheme and the diagnose=None default.
  config, state, step = _setup("ranktuner")
  batch = _batch(np.random.default_rng(0), 2, 3, 12, config.model.vocab_size)
  run = jax.jit(step)
  s_on, m_on = run(state, batch, jnp.bool_(True))
  s_off, m_off = run(state, batch, jnp.bool_(False))
  for a, b in zip(jax.tree.leaves(s_on.params), jax.tree.leaves(s_off.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
  for k in ("loss", "mean_nll", "mean_weight", "grad_norm"):
    np.testing.assert_allclose(m_on[k], m_off[k], rtol=1e-6, err_msg=k)
  assert float(m_on["hist/weight/counts"].sum()) == float(batch["loss_mask"].sum())
  assert float(m_off["hist/weight/counts"].sum()) == 0.0
