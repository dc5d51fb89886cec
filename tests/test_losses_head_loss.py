"""The two entry points of training and evaluation: `head_loss` dispatches a head output (logits or
(hidden, kernel)) to the dense or fused loss, and `whole_batch_context` builds gradient
accumulation's shared constants over all micro-steps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.training import train_state

from rankjax import losses, models
from rankjax.train.optimizer import learning_rate_schedule, make_optimizer
from rankjax.train.train_step import make_train_step
from tests.helpers import loss_config, tiny_run_config

A, B, T, D, V = 3, 2, 7, 8, 29


def _batch(seed=0):
  """Arrays [A, B, T] (hidden [A, B, T, D]) and a kernel [D, V]; a micro-step without supervised tokens."""
  rng = np.random.default_rng(seed)
  mask = (rng.random((A, B, T)) < 0.6).astype(np.float32)
  mask[1] = 0.0
  batch = {"hidden": rng.standard_normal((A, B, T, D)).astype(np.float32),
           "targets": rng.integers(0, V, size=(A, B, T)).astype(np.int32), "loss_mask": mask}
  return batch, (0.7 * rng.standard_normal((D, V))).astype(np.float32)


def _head_fn(kernel, fused):
  if fused:
    return lambda micro: (micro["hidden"], kernel)
  return lambda micro: jnp.dot(micro["hidden"], kernel, preferred_element_type=jnp.float32)


def test_wants_hidden_follows_config_fused():
  assert losses.wants_hidden(loss_config(fused=True)) is True
  assert losses.wants_hidden(loss_config(fused=False)) is False


def test_head_loss_dispatches_logits_to_dense_and_pair_to_fused():
  batch, kernel = _batch()
  h, t, m = batch["hidden"][0], batch["targets"][0], batch["loss_mask"][0]
  config = loss_config(name="ranktuner", token_chunk=4)

  @jax.jit  # one program for the four calls: op by op, the fused loss alone compiles dozens
  def all_four(h, kernel, t, m):
    logits = jnp.dot(h, kernel, preferred_element_type=jnp.float32)
    return (losses.head_loss(logits, t, m, config), losses.weighted_loss(logits, t, m, config),
            losses.head_loss((h, kernel), t, m, config), losses.linear_weighted_loss(h, kernel, t, m, config))

  dense, want_dense, fused, want_fused = all_four(h, kernel, t, m)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), dense, want_dense)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), fused, want_fused)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), fused, dense)
  with pytest.raises(ValueError, match="tuple"):
    losses.head_loss((h, kernel, kernel), t, m, config)


@pytest.mark.parametrize("fused", [False, True], ids=["logits", "hidden_kernel"])
@pytest.mark.parametrize("name", ["talr", "ranktuner"])
def test_whole_batch_context_spans_all_micro_steps(name, fused):
  """Token count and TALR's median over all A micro-steps: the micro-step losses then add up to the
  loss of the whole batch in one call."""
  batch, kernel = _batch()
  config = loss_config(name=name, token_chunk=4, fused=fused)

  @jax.jit  # one program: op by op, the fused loss compiles dozens
  def context_parts_and_whole(batch):
    context = losses.whole_batch_context(_head_fn(kernel, fused), batch, config)
    parts = [losses.head_loss(_head_fn(kernel, fused)({k: v[i] for k, v in batch.items()}), batch["targets"][i],
                              batch["loss_mask"][i], config, context=context)[0] for i in range(A)]
    flat = {k: v.reshape((A * B,) + v.shape[2:]) for k, v in batch.items()}
    return context, parts, losses.head_loss(_head_fn(kernel, fused)(flat), flat["targets"], flat["loss_mask"], config)

  context, parts, (whole, aux) = context_parts_and_whole(batch)
  assert float(context.num_tokens) == np.sum(batch["loss_mask"] > 0)
  assert (context.talr is None) == (name != "talr")
  total = sum(parts)
  np.testing.assert_allclose(total, whole, rtol=1e-5)
  if name == "talr":
    np.testing.assert_allclose(context.talr.tau, aux["talr_tau"], rtol=1e-6)


def test_whole_batch_context_talr_with_one_micro_step_is_none():
  """One micro-step: the loss builds TALR's context in its own forward pass (no pre-pass)."""
  batch, kernel = _batch()
  one = {k: v[:1] for k, v in batch.items()}
  assert losses.whole_batch_context(_head_fn(kernel, True), one, loss_config(name="talr")) is None
  context = losses.whole_batch_context(_head_fn(kernel, True), one, loss_config(name="sft"))
  assert float(context.num_tokens) == np.sum(one["loss_mask"] > 0)


def test_train_step_refuses_out_of_range_supervised_target():
  """An id outside [0, V) on a supervised position (no eager check under jit) makes the loss NaN, so
  the step leaves the parameters unchanged and reports nonfinite = 1. The fused head (the default) only: the
  dense loss's NaN is checked in test_losses_edge_cases.py, and the refusal does not depend on the head."""
  config = tiny_run_config(**{"loss.name": "sft", "loss.fused": True, "model.num_layers": 1})
  model = models.build_model(config.model)
  params = models.init_params(model, jax.random.PRNGKey(0))
  state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=make_optimizer(config.optimizer, 10))
  step = jax.jit(make_train_step(model, config.loss, learning_rate_schedule(config.optimizer, 10)))
  t, v = 8, config.model.vocab_size
  rng = np.random.default_rng(0)
  batch = {"inputs": rng.integers(0, v, size=(1, 2, t)).astype(np.int32),
           "targets": rng.integers(0, v, size=(1, 2, t)).astype(np.int32),
           "loss_mask": np.ones((1, 2, t), np.float32), "segment_ids": np.ones((1, 2, t), np.int32),
           "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (1, 2, t)).copy()}
  good_state, good = step(state, batch)
  assert float(good["nonfinite"]) == 0.0
  batch["targets"][0, 1, 3] = -1
  new_state, metrics = step(state, batch)
  assert float(metrics["nonfinite"]) == 1.0 and np.isnan(metrics["loss"])
  jax.tree.map(np.testing.assert_array_equal, new_state.params, state.params)
