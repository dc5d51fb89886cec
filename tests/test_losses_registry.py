"""The table of loss schemes: a scheme registered from this file alone has its config fields and checks, trains
through the dense and the fused loss and the train step, and can take extra per-token inputs and a loss term of
its own; the table refuses clashing entries."""

from __future__ import annotations

import contextlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.training import train_state

from rankjax import losses, models
from rankjax.losses import registry
from rankjax.train.optimizer import learning_rate_schedule, make_optimizer
from rankjax.train.train_step import make_train_step
from tests.helpers import loss_config, tiny_run_config

V = 23


def _scaled_square_weight(args: losses.WeightArgs):
  """w_t = toy_scale * p_t^2."""
  return args.config.toy_scale * jnp.exp(2.0 * args.stats.log_prob)


def _validate_toy(config):
  if not float(config.toy_scale) > 0:
    raise ValueError(f"loss config: toy_scale={config.toy_scale} must be > 0")


TOY = losses.Scheme(name="toy_square", weight=_scaled_square_weight, validate=_validate_toy,
                    fields={"toy_scale": 2.0})


def _anchor_weight(args: losses.WeightArgs):
  """w_t = p_ref,t (a reference model's probability of the target)."""
  return jnp.exp(args.inputs["ref_log_prob"])


def _anchor_term(log_prob, args: losses.WeightArgs):
  """toy_anchor_coef / 2 (log p_t - log p_ref,t)^2: differentiable in log p_t."""
  return 0.5 * args.config.toy_anchor_coef * (log_prob - args.inputs["ref_log_prob"]) ** 2


ANCHOR = losses.Scheme(name="toy_anchor", weight=_anchor_weight, inputs=("ref_log_prob",), token_loss=_anchor_term,
                       fields={"toy_anchor_coef": 0.5})


@contextlib.contextmanager
def registered(*schemes):
  """The table with `schemes` added, restored afterwards whatever happens."""
  added = []
  try:
    for s in schemes:
      added.append(losses.register(s).name)
    yield
  finally:
    for name in added:
      losses.unregister(name)


def _problem(b=2, t=9, d=8, v=V, seed=0):
  k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(seed), 4)
  h = jax.random.normal(k1, (b, t, d))
  w = 0.7 * jax.random.normal(k2, (d, v))
  targets = jax.random.randint(k3, (b, t), 0, v)
  mask = (jax.random.uniform(k4, (b, t)) > 0.3).astype(jnp.float32).at[:, 0].set(1.0)
  return h, w, targets, mask


def _log_softmax64(z):
  z = np.asarray(z, np.float64)
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _reference(h, w, targets, mask, weight_and_term):
  """float64 loss and d loss / d logits of sum m (w nll + term) / sum m, with (w, term, d term / d log p) from
  `weight_and_term(log_p_target)`."""
  logp = _log_softmax64(np.asarray(h, np.float64) @ np.asarray(w, np.float64))
  t, m = np.asarray(targets), np.asarray(mask, np.float64)
  lp = np.take_along_axis(logp, t[..., None], -1)[..., 0]
  weight, term, d_term = weight_and_term(lp)
  n = m.sum()
  loss = np.sum(m * (weight * -lp + term)) / n
  onehot = np.eye(logp.shape[-1])[t]
  d_log_p = m * (-weight + d_term) / n  # d loss / d log p_t
  return loss, d_log_p[..., None] * (onehot - np.exp(logp))


def _dense_loss_and_logit_grad(config, h, w, targets, mask, **kw):
  """(loss, aux, d loss / d logits) of the dense loss at logits h @ w."""
  f = lambda z: losses.weighted_loss(z, targets, mask, config, **kw)  # noqa: E731
  (loss, aux), g = jax.value_and_grad(f, has_aux=True)(jnp.dot(h, w))
  return loss, aux, g


def _dense_and_fused(config, h, w, targets, mask, **kw):
  dense = jax.value_and_grad(lambda h, w: losses.weighted_loss(jnp.dot(h, w, preferred_element_type=jnp.float32),
                                                               targets, mask, config, **kw),
                             argnums=(0, 1), has_aux=True)
  fused = jax.value_and_grad(lambda h, w: losses.linear_weighted_loss(h, w, targets, mask, config, **kw),
                             argnums=(0, 1), has_aux=True)
  return jax.jit(dense)(h, w), jax.jit(fused)(h, w)


def _assert_close(a, b, rtol=1e-5, atol=1e-6):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol), a, b)


def test_toy_scheme_gets_config_fields_and_validation_then_leaves():
  assert "toy_square" not in losses.SCHEMES and "toy_scale" not in losses.default_config()
  with registered(TOY):
    assert "toy_square" in losses.SCHEMES and "toy_square" in tuple(losses.SCHEMES)
    config = loss_config(name="toy_square")
    assert config.toy_scale == 2.0
    losses.validate_config(config)
    for name in ("toy_square", "sft"):  # a field is checked whatever the run's scheme
      with pytest.raises(ValueError, match="toy_scale"):
        losses.validate_config(loss_config(name=name, toy_scale=0.0))
    h, w, targets, mask = _problem()
    with pytest.raises(ValueError, match="toy_scale"):
      losses.weighted_loss(jnp.dot(h, w), targets, mask, loss_config(name="toy_square", toy_scale=-1.0))
    with pytest.raises(ValueError, match="toy_scale"):
      losses.linear_weighted_loss(h, w, targets, mask, loss_config(name="toy_square", toy_scale=-1.0))
    # Its weights read log p_t only: no other statistic is computed for it.
    options = losses.config.stats_options(loss_config(name="toy_square", diagnostics=False))
    assert not (options["with_entropy"] or options["with_rank"] or options["with_expected_rank"])
  assert "toy_square" not in losses.SCHEMES and "toy_scale" not in losses.default_config()
  with pytest.raises(ValueError, match=re.escape("name='toy_square' is not one of")):
    losses.validate_config(loss_config(name="toy_square"))


@pytest.mark.parametrize("diagnostics", [False, True])
def test_toy_scheme_dense_fused_and_float64_reference_agree(diagnostics):
  with registered(TOY):
    config = loss_config(name="toy_square", toy_scale=3.0, token_chunk=5, diagnostics=diagnostics)
    h, w, targets, mask = _problem()
    ((l1, a1), g1), ((l2, a2), g2) = _dense_and_fused(config, h, w, targets, mask)
    _assert_close((l1, a1, g1), (l2, a2, g2), rtol=2e-5, atol=1e-6)
    want_loss, want_grad = _reference(h, w, targets, mask, lambda lp: (3.0 * np.exp(2 * lp), 0.0, 0.0))
    loss, _, grad = _dense_loss_and_logit_grad(config, h, w, targets, mask)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-7)
    weights = losses.token_weights(jnp.dot(h, w), targets, mask, config)
    np.testing.assert_allclose(weights, np.where(mask > 0, 3.0 * np.exp(2 * _target_log_prob(h, w, targets)), 0.0),
                               rtol=1e-5, atol=1e-7)


def _target_log_prob(h, w, targets):
  logp = _log_softmax64(np.asarray(h, np.float64) @ np.asarray(w, np.float64))
  return np.take_along_axis(logp, np.asarray(targets)[..., None], -1)[..., 0]


def test_toy_scheme_trains_through_the_train_step_dense_and_fused():
  """Two micro-steps per step, three steps: the fused and the dense train steps give the same losses and
  parameters, and the model learns (the NLL falls; the loss itself need not, as the weights grow with p_t)."""
  with registered(TOY):
    config = tiny_run_config(**{"loss.name": "toy_square", "loss.token_chunk": 24})
    model = models.build_model(config.model)
    params = models.init_params(model, jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    a, b, t = 2, 4, 16
    tokens = rng.integers(3, 40, size=(a * b, t + 1)).astype(np.int32)
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "loss_mask": np.ones((a * b, t), np.float32),
             "segment_ids": np.ones((a * b, t), np.int32),
             "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (a * b, t)).copy()}
    batch = {k: v.reshape(a, b, t) for k, v in batch.items()}
    runs = {}
    for fused in (True, False):
      loss_config_ = config.loss.copy_and_resolve_references()
      loss_config_.fused = fused
      state = train_state.TrainState.create(apply_fn=model.apply, params=params,
                                            tx=make_optimizer(config.optimizer, 10))
      step = jax.jit(make_train_step(model, loss_config_, learning_rate_schedule(config.optimizer, 10)))
      history = []
      for _ in range(3):
        state, metrics = step(state, batch)
        history.append((float(metrics["loss"]), float(metrics["mean_nll"])))
        assert float(metrics["nonfinite"]) == 0.0
      runs[fused] = (history, state.params)
    np.testing.assert_allclose(runs[True][0], runs[False][0], rtol=1e-4)
    _assert_close(runs[True][1], runs[False][1], rtol=2e-4, atol=2e-6)
    assert runs[True][0][-1][1] < runs[True][0][0][1]


def test_scheme_with_per_token_inputs_and_its_own_loss_term():
  """A scheme reading a reference model's log p_t (an extra per-token input) and adding a term differentiable
  in log p_t: dense == fused == float64, the input is required and shape-checked, NaN off the mask is harmless."""
  with registered(ANCHOR):
    config = loss_config(name="toy_anchor", token_chunk=4)
    h, w, targets, mask = _problem(seed=1)
    ref = jnp.asarray(np.random.default_rng(1).uniform(-4.0, -0.1, size=targets.shape), jnp.float32)
    ref_nan = jnp.where(mask > 0, ref, jnp.nan)
    inputs = {"ref_log_prob": ref_nan}
    ((l1, a1), g1), ((l2, a2), g2) = _dense_and_fused(config, h, w, targets, mask, inputs=inputs)
    _assert_close((l1, a1, g1), (l2, a2, g2), rtol=2e-5, atol=1e-6)
    assert np.isfinite(float(l1)) and "mean_token_loss" in a1
    r = np.asarray(ref, np.float64)
    want_loss, want_grad = _reference(h, w, targets, mask, lambda lp: (np.exp(r), 0.25 * (lp - r) ** 2, 0.5 * (lp - r)))
    loss, _, grad = _dense_loss_and_logit_grad(config, h, w, targets, mask, inputs=inputs)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-7)
    head = losses.head_loss((h, w), targets, mask, config, inputs=inputs)
    _assert_close(head, (l2, a2), rtol=1e-6, atol=1e-7)
    logits = jnp.dot(h, w)
    with pytest.raises(ValueError, match="ref_log_prob"):
      losses.weighted_loss(logits, targets, mask, config)
    with pytest.raises(ValueError, match="ref_log_prob"):
      losses.linear_weighted_loss(h, w, targets, mask, config, inputs={"ref_log_prob": ref[:, :-1]})
    with pytest.raises(ValueError, match="unexpected"):
      losses.weighted_loss(logits, targets, mask, loss_config(name="sft"), inputs=inputs)


def test_table_refuses_clashes_and_keeps_builtins():
  with pytest.raises(ValueError, match="already registered"):
    losses.register(losses.Scheme(name="dft", weight=_scaled_square_weight))
  with pytest.raises(ValueError, match="eaft_top_k"):
    losses.register(losses.Scheme(name="toy_clash", weight=_scaled_square_weight, fields={"eaft_top_k": 3}))
  assert "toy_clash" not in losses.SCHEMES
  with pytest.raises(ValueError, match="built in"):
    losses.unregister("ranktuner")
  with pytest.raises(ValueError, match="not registered"):
    losses.unregister("toy_never")
  with registered(losses.Scheme(name="toy_common", weight=_scaled_square_weight, fields={"token_chunk": 3})):
    with pytest.raises(ValueError, match="token_chunk"):
      losses.default_config()
  assert tuple(losses.SCHEMES)[:5] == ("sft", "dft", "talr", "eaft", "ranktuner")
  assert registry.get("eaft").stat_needs(loss_config(name="eaft", eaft_top_k=7)).topk_entropy == 7
