"""The schemes that read a second model, at the loss level: asft (DFT + beta KL(p_ref || p), the KL streamed per token
chunk in the fused head) and psft (PPO's clipped ratio against an old policy, as its gradient-equivalent weight).

Float64 NumPy references of value and gradient; fused == dense; asft with beta = 0 is DFT and psft with the old policy
equal to the current one is SFT (its unclipped form's gradient at r = 1); data-parallel over 8 devices equals one
device; bad fields and missing anchors are named errors. The train step's side (anchor forward passes, the snapshot,
resume) is tests/test_anchored_training.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

from rankjax import losses
from rankjax.models.errors import ConfigError
from tests import numpy_reference as ref
from tests.helpers import loss_config

B, T, D, V = 2, 9, 8, 37


def _problem(seed=0, drift=0.3):
  """Hidden states and kernel of the model, and of an anchor `drift` away from it; targets; a mask with a gap."""
  k = jax.random.split(jax.random.PRNGKey(seed), 6)
  h = jax.random.normal(k[0], (B, T, D))
  w = 0.7 * jax.random.normal(k[1], (D, V))
  h_a = h + drift * jax.random.normal(k[2], (B, T, D))
  w_a = w + drift * jax.random.normal(k[3], (D, V))
  targets = jax.random.randint(k[4], (B, T), 0, V)
  mask = (jax.random.uniform(k[5], (B, T)) > 0.3).astype(jnp.float32).at[:, 0].set(1.0).at[1, 4:6].set(0.0)
  return h, w, h_a, w_a, targets, mask


def _onehot(t, v):
  out = np.zeros(t.shape + (v,))
  np.put_along_axis(out, t[..., None], 1.0, axis=-1)
  return out


def _asft_reference(z, z_a, t, m, beta):
  """(loss, d loss / d z) in float64: sum_t m_t (p_t (-log p_t) + beta KL(p_a || p)) / N, p_t held constant in the
  weight; d/dz = m (p_t (softmax - onehot) + beta (softmax - p_a)) / N."""
  ls, ls_a = ref.log_softmax(z), ref.log_softmax(z_a)
  lp = np.take_along_axis(ls, t[..., None], -1)[..., 0]
  kl = np.sum(np.exp(ls_a) * (ls_a - ls), -1)
  n = m.sum()
  loss = np.sum(m * (np.exp(lp) * -lp + beta * kl)) / n
  p, p_a = np.exp(ls), np.exp(ls_a)
  grad = (m / n)[..., None] * (np.exp(lp)[..., None] * (p - _onehot(t, z.shape[-1])) + beta * (p - p_a))
  return loss, grad


def _psft_surrogate_grad(z, old_log_prob, t, m, eps):
  """d/dz of PSFT's objective sum_t m_t -min(r_t, clip(r_t, 1 - eps, 1 + eps)) / N (advantage 1), r_t = p_t / p_old,t,
  in float64: -r (onehot - softmax) where the unclipped branch is the minimum (r <= 1 + eps), 0 where the clip binds."""
  ls = ref.log_softmax(z)
  lp = np.take_along_axis(ls, t[..., None], -1)[..., 0]
  r = np.exp(lp - old_log_prob)
  live = r <= 1.0 + eps
  return (m / m.sum())[..., None] * np.where(live, r, 0.0)[..., None] * -(_onehot(t, z.shape[-1]) - np.exp(ls))


def _f64(*xs):
  return [np.asarray(x, np.float64) for x in xs]


@pytest.mark.parametrize("beta", [0.1, 2.0])
def test_asft_value_and_gradient_match_float64(beta):
  h, w, h_a, w_a, targets, mask = _problem()
  z, z_a = h @ w, h_a @ w_a
  config = loss_config(name="asft", asft_beta=beta)
  (loss, aux), grad = jax.value_and_grad(
      lambda x: losses.weighted_loss(x, targets, mask, config, anchor=z_a), has_aux=True)(z)
  want_loss, want_grad = _asft_reference(*_f64(z, z_a), np.asarray(targets), np.asarray(mask), beta)
  np.testing.assert_allclose(float(loss), want_loss, rtol=2e-6)
  np.testing.assert_allclose(np.asarray(grad), want_grad, atol=2e-7, rtol=1e-4)
  assert aux["mean_token_loss"] > 0  # beta KL, nats per supervised token


@pytest.mark.parametrize("name,extra", [("asft", {"asft_beta": 0.5}), ("psft", {"psft_epsilon": 0.1})])
def test_fused_equals_dense(name, extra):
  """The fused head (ragged token chunks, vocabulary slices of 16 of 37 -> the divisor 37, compacted tokens) gives the
  dense loss and gradients w.r.t. hidden and kernel; the anchor's logits exist one chunk at a time."""
  h, w, h_a, w_a, targets, mask = _problem(seed=1)
  config = loss_config(name=name, token_chunk=4, vocab_chunk=16, **extra)
  if name == "asft":
    dense_kw, fused_kw = {"anchor": h_a @ w_a}, {"anchor": (h_a, w_a)}
  else:
    old = losses.head_log_prob(h_a @ w_a, targets, mask, config)
    dense_kw = fused_kw = {"inputs": {"anchor_log_prob": old}}
  dense = jax.value_and_grad(lambda a, b: losses.weighted_loss(a @ b, targets, mask, config, **dense_kw)[0],
                             (0, 1))(h, w)
  fused = jax.value_and_grad(lambda a, b: losses.linear_weighted_loss(a, b, targets, mask, config, **fused_kw)[0],
                             (0, 1))(h, w)
  np.testing.assert_allclose(float(fused[0]), float(dense[0]), rtol=1e-6)
  for got, want in zip(fused[1], dense[1]):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-7, rtol=1e-5)


def test_asft_with_beta_zero_is_dft():
  """Bit for bit, dense and fused: the KL term adds 0 to the loss and 0 (softmax - p_ref) to the logits' cotangent."""
  h, w, h_a, w_a, targets, mask = _problem(seed=2)
  asft, dft = loss_config(name="asft", asft_beta=0.0, token_chunk=4), loss_config(name="dft", token_chunk=4)
  dense = lambda a, b, c, **kw: losses.weighted_loss(a @ b, targets, mask, c, **kw)[0]  # noqa: E731
  fused = lambda a, b, c, **kw: losses.linear_weighted_loss(a, b, targets, mask, c, **kw)[0]  # noqa: E731
  for run, anchor in ((dense, h_a @ w_a), (fused, (h_a, w_a))):
    ours = jax.value_and_grad(lambda a, b: run(a, b, asft, anchor=anchor), (0, 1))(h, w)
    theirs = jax.value_and_grad(lambda a, b: run(a, b, dft), (0, 1))(h, w)
    assert float(ours[0]) == float(theirs[0])
    for x, y in zip(ours[1], theirs[1]):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_kl_is_zero_against_itself_and_positive_otherwise():
  h, w, h_a, w_a, targets, _ = _problem(seed=3)
  same = losses.token_stats(h @ w, targets, anchor_logits=h @ w)
  np.testing.assert_allclose(np.asarray(same.anchor_kl), 0.0, atol=2e-6)
  other = losses.token_stats(h @ w, targets, anchor_logits=h_a @ w_a)
  z, z_a = _f64(h @ w, h_a @ w_a)
  want = np.sum(ref.softmax(z_a) * (ref.log_softmax(z_a) - ref.log_softmax(z)), -1)
  np.testing.assert_allclose(np.asarray(other.anchor_kl), want, rtol=1e-4, atol=1e-6)
  assert np.all(want > 0)


@pytest.mark.parametrize("eps", [0.05, 0.3])
def test_psft_gradient_is_that_of_the_clipped_surrogate(eps):
  """The weight sg(r 1[r <= 1 + eps]) on -log p has the gradient of -min(r, clip(r, 1 - eps, 1 + eps)) (float64);
  the drift makes ratios on both sides of the clip."""
  h, w, h_a, w_a, targets, mask = _problem(seed=4, drift=0.6)
  config = loss_config(name="psft", psft_epsilon=eps)
  old = losses.head_log_prob(h_a @ w_a, targets, mask, config)
  z = h @ w
  grad = jax.grad(lambda x: losses.weighted_loss(x, targets, mask, config, inputs={"anchor_log_prob": old})[0])(z)
  want = _psft_surrogate_grad(*_f64(z, old), np.asarray(targets), np.asarray(mask), eps)
  lp = np.take_along_axis(ref.log_softmax(np.asarray(z, np.float64)), np.asarray(targets)[..., None], -1)[..., 0]
  r = np.exp(lp - np.asarray(old, np.float64))[np.asarray(mask) > 0]
  assert (r > 1 + eps).any() and (r <= 1 + eps).any(), "the problem must clip some tokens and not others"
  np.testing.assert_allclose(np.asarray(grad), want, atol=2e-7, rtol=1e-4)


def test_psft_with_the_current_policy_as_old_is_its_unclipped_form_which_is_sft():
  """r = 1 everywhere: weights 1, the loss and gradient of SFT, which is the gradient of -r at r = 1."""
  h, w, _, _, targets, mask = _problem(seed=5)
  z = h @ w
  config = loss_config(name="psft", token_chunk=4)
  current = losses.head_log_prob(z, targets, mask, config)
  inputs = {"anchor_log_prob": current}
  ours = jax.value_and_grad(lambda x: losses.weighted_loss(x, targets, mask, config, inputs=inputs)[0])(z)
  sft = jax.value_and_grad(lambda x: losses.weighted_loss(x, targets, mask, loss_config(name="sft"))[0])(z)
  np.testing.assert_allclose(float(ours[0]), float(sft[0]), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(ours[1]), np.asarray(sft[1]), atol=1e-8, rtol=1e-5)
  # the unclipped surrogate -r: its gradient at r = 1 is -(onehot - softmax) per token / N
  m = np.asarray(mask)
  unclipped = _psft_surrogate_grad(*_f64(z, current), np.asarray(targets), m, eps=1e9)
  np.testing.assert_allclose(np.asarray(ours[1]), unclipped, atol=1e-7, rtol=1e-4)
  weights = losses.token_weights(z, targets, mask, config, inputs=inputs)
  np.testing.assert_allclose(np.asarray(weights)[m > 0], 1.0, rtol=1e-6)


def test_data_parallel_over_8_devices_equals_one_device():
  """shard_map over 8 fake devices, the fused head with the anchor's (hidden, kernel) rows split like the model's:
  the global loss on every device and the gradients (the replicated kernel's summed over devices) equal the
  single-device ones."""
  n_dev = jax.device_count()
  k = jax.random.split(jax.random.PRNGKey(6), 6)
  b = n_dev
  h = jax.random.normal(k[0], (b, T, D))
  w = 0.7 * jax.random.normal(k[1], (D, V))
  h_a, w_a = h + 0.3 * jax.random.normal(k[2], h.shape), w + 0.3 * jax.random.normal(k[3], w.shape)
  targets = jax.random.randint(k[4], (b, T), 0, V)
  mask = (jax.random.uniform(k[5], (b, T)) > 0.3).astype(jnp.float32).at[2].set(0.0).at[0, 0].set(1.0)
  mesh = Mesh(np.asarray(jax.devices()), ("data",))
  for name in ("asft", "psft"):
    config = loss_config(name=name, token_chunk=4)
    old = losses.head_log_prob(h_a @ w_a, targets, mask, config)

    def loss_fn(h, w, targets, mask, h_a, w_a, old, axis_name=None, config=config):
      if config.name == "asft":
        return losses.linear_weighted_loss(h, w, targets, mask, config, axis_name=axis_name, anchor=(h_a, w_a))[0]
      return losses.linear_weighted_loss(h, w, targets, mask, config, axis_name=axis_name,
                                         inputs={"anchor_log_prob": old})[0]

    single = jax.value_and_grad(loss_fn, (0, 1))(h, w, targets, mask, h_a, w_a, old)

    def local(h, w, targets, mask, h_a, w_a, old):
      loss, (dh, dw) = jax.value_and_grad(lambda a, c: loss_fn(a, c, targets, mask, h_a, w_a, old, "data"),
                                          (0, 1))(h, w)
      return jax.lax.pmean(loss, "data"), dh, dw  # dw: the replicated kernel's cotangent, psum-ed by JAX itself

    rows = P("data")
    loss, dh, dw = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(rows, P(), rows, rows, rows, P(), rows),
                                         out_specs=(P(), rows, P())))(h, w, targets, mask, h_a, w_a, old)
    np.testing.assert_allclose(float(loss), float(single[0]), rtol=1e-6, err_msg=name)
    np.testing.assert_allclose(np.asarray(dh), np.asarray(single[1][0]), atol=1e-7, rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(np.asarray(dw), np.asarray(single[1][1]), atol=1e-7, rtol=1e-5, err_msg=name)


@pytest.mark.parametrize("field,value,message", [
    ("asft_beta", -0.1, r"asft_beta=-0.1 must lie in \[0, 1e4\]"),
    ("psft_epsilon", 0.0, r"psft_epsilon=0.0 must lie in \(0, 10\]"),
    ("psft_refresh_steps", 0, r"psft_refresh_steps=0 must be an integer >= 1"),
])
def test_bad_fields_are_named(field, value, message):
  with pytest.raises(ConfigError, match=message):
    losses.validate_config(loss_config(**{field: value}))


def test_a_missing_or_unexpected_anchor_is_named():
  h, w, h_a, w_a, targets, mask = _problem()
  with pytest.raises(ValueError, match=r"scheme 'asft' adds the KL to an anchor model and needs"):
    losses.weighted_loss(h @ w, targets, mask, loss_config(name="asft"))
  with pytest.raises(ValueError, match=r"scheme 'dft' reads no anchor model"):
    losses.linear_weighted_loss(h, w, targets, mask, loss_config(name="dft"), anchor=(h_a, w_a))
  with pytest.raises(ValueError, match=r"scheme 'psft' takes the per-token inputs \['anchor_log_prob'\]"):
    losses.weighted_loss(h @ w, targets, mask, loss_config(name="psft"))
  with pytest.raises(ValueError, match=r"anchor's hidden \(2, 9, 8\) and kernel \(8, 36\)"):
    losses.linear_weighted_loss(h, w, targets, mask, loss_config(name="asft"), anchor=(h_a, w_a[:, :-1]))


def test_one_model_is_its_own_anchor_when_inspected():
  """`self_anchored`: the evaluation helpers weigh a single model with asft's and psft's configs (KL 0: DFT's
  weights; r = 1: SFT's)."""
  h, w, _, _, targets, mask = _problem(seed=7)
  z = h @ w
  for name, twin in (("asft", "dft"), ("psft", "sft")):
    config = loss_config(name=name)
    ours = losses.token_weights(z, targets, mask, config, **losses.self_anchored(z, targets, mask, config))
    np.testing.assert_allclose(np.asarray(ours), np.asarray(losses.token_weights(z, targets, mask,
                                                                                  loss_config(name=twin))),
                               rtol=1e-6, err_msg=name)
  assert losses.self_anchored(z, targets, mask, loss_config(name="ranktuner")) == {}
