"""Inputs at the edges of the loss's contract, in the dense and fused paths (issue 9): array-likes
under jit, non-finite values and bad target ids off the mask, out-of-range targets on it, and the
named errors for shapes and masks the loss does not define."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

from rankjax import losses
from tests.helpers import loss_config

B, T, D, V = 2, 9, 8, 13


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  hidden = rng.standard_normal((B, T, D)).astype(np.float32)
  kernel = (0.5 * rng.standard_normal((D, V))).astype(np.float32)
  targets = rng.integers(0, V, size=(B, T)).astype(np.int32)
  mask = (rng.random((B, T)) < 0.6).astype(np.float32)
  mask[0, 0], mask[1, -1] = 1.0, 0.0
  return hidden, kernel, targets, mask


def _loss_fn(path, config, targets, mask):
  """loss(hidden, kernel) -> (loss, aux) through the dense or the fused path."""
  if path == "dense":
    return lambda h, w: losses.weighted_loss(jnp.dot(h, w, preferred_element_type=jnp.float32), targets, mask, config)
  return lambda h, w: losses.linear_weighted_loss(h, w, targets, mask, config)


def _value_and_grads(path, config, h, w, targets, mask):
  """(loss, (d hidden, d kernel)), jitted with targets and mask closed over (constants)."""
  fn = jax.value_and_grad(_loss_fn(path, config, targets, mask), argnums=(0, 1), has_aux=True)
  (loss, _), grads = jax.jit(fn)(h, w)
  return loss, grads


@functools.lru_cache(maxsize=None)
def _compiled_value_and_grads(path, name):
  """jit((h, w, targets, mask) -> (loss, (d hidden, d kernel))) for scheme `name` with token_chunk 4: targets and
  mask are traced arguments (as in the train step), so one compilation serves every test and input of a path."""
  config = loss_config(name=name, token_chunk=4)

  def fn(h, w, targets, mask):
    (loss, _), grads = jax.value_and_grad(lambda h, w: _loss_fn(path, config, targets, mask)(h, w), argnums=(0, 1),
                                          has_aux=True)(h, w)
    return loss, grads
  return jax.jit(fn)


PATHS = ["dense", "fused"]

# --------------------------------------------------------------------------- array-likes


@pytest.mark.parametrize("path", PATHS)
def test_numpy_mask_and_targets_work_under_jit(path):
  """NumPy (closed-over) mask and targets: the fused path once raised TracerArrayConversionError."""
  h, w, targets, mask = _inputs()
  got = _value_and_grads(path, loss_config(name="ranktuner", token_chunk=4), h, w, targets, mask)
  want = _compiled_value_and_grads(path, "ranktuner")(h, w, targets, mask)  # traced arguments
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), got, want)


def test_list_targets_and_mask_are_accepted():
  h, w, targets, mask = _inputs()
  config = loss_config(name="sft", token_chunk=4)
  want = losses.linear_weighted_loss(h, w, targets, mask, config)[0]
  got = losses.linear_weighted_loss(h, w, targets.tolist(), mask.tolist(), config)[0]
  np.testing.assert_allclose(got, want, rtol=1e-6)

# ------------------------------------------------------------- non-finite values off the mask


@pytest.mark.parametrize("path", PATHS + ["fused_uncompacted"])
def test_nonfinite_values_off_the_mask_leave_loss_and_gradients_unchanged(path):
  """NaN/inf at unsupervised rows: the logits (dense: e.g. an overflowing head) or the hidden
  states (fused). The loss is finite, and loss and gradients equal those with finite values there
  (they once gave an all-NaN kernel gradient, 0 * NaN). The poison is an argument of one compiled
  function, so NaN, +inf and -inf and the finite baseline share one compilation per path."""
  h, w, targets, mask = _inputs()
  config = loss_config(name="ranktuner", token_chunk=4, expected_rank="histogram",
                       compact_tokens=path != "fused_uncompacted")
  off = np.argwhere(mask == 0)
  assert len(off) >= 2

  def fn(h, w, poison):
    if path == "dense":
      return losses.weighted_loss(jnp.dot(h, w, preferred_element_type=jnp.float32) + poison, targets, mask, config)
    return losses.linear_weighted_loss(h + poison, w, targets, mask, config)

  run = jax.jit(jax.value_and_grad(fn, argnums=(0, 1), has_aux=True))
  shape = (B, T, V if path == "dense" else D)
  (want_loss, _), (want_gh, want_gw) = run(h, w, np.zeros(shape, np.float32))
  for bad in (np.nan, np.inf, -np.inf):
    poison = np.zeros(shape, np.float32)
    poison[off[0][0], off[0][1], :] = bad  # a whole row
    poison[off[1][0], off[1][1], 3] = bad  # one element
    (loss, _), (gh, gw) = run(h, w, poison)
    assert np.isfinite(loss) and np.all(np.isfinite(gh)) and np.all(np.isfinite(gw)), bad
    np.testing.assert_allclose(loss, want_loss, rtol=1e-6, err_msg=str(bad))
    np.testing.assert_allclose(gw, want_gw, rtol=1e-5, atol=1e-7, err_msg=str(bad))
    np.testing.assert_allclose(gh, want_gh, rtol=1e-5, atol=1e-7, err_msg=str(bad))
    assert not np.any(np.asarray(gh)[mask == 0]), bad


# -------------------------------------------------------------------------- target ids


@functools.lru_cache(maxsize=None)
def _compiled_loss(path, name):
  """jit((h, w, targets, mask) -> loss) for scheme `name` with token_chunk 4, forward only; targets and mask traced."""
  config = loss_config(name=name, token_chunk=4)
  return jax.jit(lambda h, w, targets, mask: _loss_fn(path, config, targets, mask)(h, w)[0])


@pytest.mark.parametrize("path", PATHS)
def test_out_of_range_supervised_target_under_jit_makes_loss_nan(path):
  """Under jit (no eager check) a supervised id outside [0, V) gives a NaN loss (the train step then
  refuses the update), never the loss of a wrapped id such as V - 1 for -1."""
  h, w, targets, mask = _inputs()
  for name in ("sft", "ranktuner", "talr", "eaft"):
    run = _compiled_loss(path, name)  # one compilation per scheme and path for the three ids
    for bad_id in (-1, V, -100):
      bad = targets.copy()
      bad[0, 0] = bad_id
      loss = run(h, w, bad, mask)
      assert np.isnan(loss), (name, bad_id, loss)


def test_out_of_range_target_gradients_agree_between_dense_and_fused():
  """The fused backward pass is the derivative of its forward pass: no one-hot for an id outside
  [0, V) (the dense path's autodiff does the same), and nothing of the wrapped id V - 1."""
  h, w, targets, mask = _inputs()
  dense, fused = _compiled_value_and_grads("dense", "sft"), _compiled_value_and_grads("fused", "sft")
  for bad_id in (-1, V):  # sft: weight 1, so the gradient stays finite
    bad = targets.copy()
    bad[0, 0] = bad_id
    _, (gh_d, gw_d) = dense(h, w, bad, mask)
    _, (gh_f, gw_f) = fused(h, w, bad, mask)
    np.testing.assert_allclose(gh_f, gh_d, rtol=1e-5, atol=1e-7, err_msg=str(bad_id))
    np.testing.assert_allclose(gw_f, gw_d, rtol=1e-5, atol=1e-7, err_msg=str(bad_id))
    wrapped = targets.copy()
    wrapped[0, 0] = bad_id % V
    _, (_, gw_wrapped) = fused(h, w, wrapped, mask)
    assert not np.allclose(gw_f, gw_wrapped, rtol=1e-5, atol=1e-7), bad_id


@pytest.mark.parametrize("path", PATHS)
def test_out_of_range_targets_off_the_mask_are_ignored_under_jit(path):
  h, w, targets, mask = _inputs()
  off = np.argwhere(mask == 0)
  padded = targets.copy()
  padded[tuple(off[0])] = -100
  padded[tuple(off[1])] = V + 5
  run = _compiled_value_and_grads(path, "ranktuner")
  got = run(h, w, padded, mask)
  want = run(h, w, targets, mask)
  assert np.isfinite(got[0])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9), got, want)


def test_out_of_range_supervised_target_vocab_parallel_makes_loss_nan():
  """The vocabulary split over devices: an id no shard owns must not score as logit 0."""
  h, w, targets, mask = _inputs()
  w = np.pad(w, ((0, 0), (0, 16 - V)))  # V = 16: divisible by the 8 devices
  targets[0, 0] = 16 + 3
  mesh = Mesh(np.asarray(jax.devices()), ("tensor",))
  config = loss_config(name="sft", token_chunk=4)

  def per_device(h, w):
    return losses.linear_weighted_loss(h, w, targets, mask, config, vocab_axis_name="tensor")[0][None]

  fn = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(None, "tensor")), out_specs=P("tensor"))
  assert np.all(np.isnan(jax.jit(fn)(h, w)))


def test_token_stats_out_of_range_target_is_nan_not_wrapped():
  logits = jnp.asarray(np.random.default_rng(2).standard_normal((1, 3, V)), jnp.float32)
  targets = jnp.asarray([[-1, V, V - 1]], jnp.int32)
  lp = jax.jit(lambda z, t: losses.token_stats(z, t).log_prob)(logits, targets)
  assert np.isnan(lp[0, 0]) and np.isnan(lp[0, 1]) and np.isfinite(lp[0, 2])

# ------------------------------------------------------------------------------ named errors


@pytest.mark.parametrize("path", PATHS)
def test_eaft_with_one_token_vocabulary_raises_naming_v(path):
  h, w, targets, mask = _inputs()
  config = loss_config(name="eaft")
  with pytest.raises(ValueError, match=r"eaft needs V >= 2.*V = 1"):
    _loss_fn(path, config, np.zeros_like(targets), mask)(h, w[:, :1])


@pytest.mark.parametrize("path", PATHS)
def test_no_tokens_raise_naming_shapes(path):
  """T = 0: the fused path once divided by zero; both paths now name the shapes."""
  h, w, targets, mask = _inputs()
  config = loss_config(name="sft")
  with pytest.raises(ValueError, match=re.escape("(2, 0)")):
    _loss_fn(path, config, targets[:, :0], mask[:, :0])(h[:, :0], w)


def test_one_dimensional_logits_raise_naming_shape():
  logits = jnp.zeros((V,))
  with pytest.raises(ValueError, match=re.escape(f"logits ({V},) must be at least 2-D")):
    losses.weighted_loss(logits, jnp.asarray(1), jnp.asarray(1.0), losses.default_config())
  with pytest.raises(ValueError, match=re.escape(f"logits ({V},) must be at least 2-D")):
    losses.token_stats(logits, jnp.asarray(1))
  with pytest.raises(ValueError, match="hidden"):
    losses.linear_weighted_loss(jnp.zeros((D,)), jnp.zeros((D, V)), jnp.asarray(1), jnp.asarray(1.0),
                                losses.default_config())


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("value", [0.5, 2.0, -1.0, np.nan])
def test_mask_values_outside_0_1_raise_naming_index(path, value):
  """The mask is a set of supervised positions, not a per-token weight: concrete masks are checked."""
  h, w, targets, mask = _inputs()
  mask[1, 2] = value
  with pytest.raises(ValueError, match=re.escape("index (1, 2)") + ".*not 0 or 1"):
    _loss_fn(path, loss_config(name="sft"), targets, mask)(h, w)
  with pytest.raises(ValueError, match="not 0 or 1"):
    losses.check_mask(mask)


def test_boolean_and_integer_masks_are_accepted():
  h, w, targets, mask = _inputs()
  config = loss_config(name="sft", token_chunk=4)
  want = losses.linear_weighted_loss(h, w, targets, mask, config)[0]
  for m in (mask > 0, mask.astype(np.int32)):
    np.testing.assert_allclose(losses.linear_weighted_loss(h, w, targets, m, config)[0], want, rtol=1e-6)
