"""The fused LM-head loss equals the dense loss: values, aux, and gradients w.r.t. hidden and kernel."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

from rankjax import losses
from tests.helpers import loss_config

CONFIGS = {
    "sft": {"name": "sft"}, "dft": {"name": "dft"}, "talr": {"name": "talr"}, "eaft": {"name": "eaft"},
    "prob_power": {"name": "prob_power", "prob_power_k": 3.0},
    "ranktuner": {"name": "ranktuner"}, "ranktuner_bound_uniform": {"name": "ranktuner", "form": "bound", "base": "uniform"},
}


def _inputs(b=3, t=37, d=16, v=101, dtype=jnp.float32, seed=0):
  k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(seed), 4)
  h = jax.random.normal(k1, (b, t, d)).astype(dtype)
  w = (0.5 * jax.random.normal(k2, (d, v))).astype(dtype)
  targets = jax.random.randint(k3, (b, t), 0, v)
  mask = (jax.random.uniform(k4, (b, t)) > 0.3).astype(jnp.float32)
  return h, w, targets, mask


def _dense_and_fused_fn(config):
  """jit((h, w, targets, mask) -> (dense, fused)), each ((loss, aux), (d hidden, d kernel)); targets and mask are
  traced arguments, so inputs of one shape share a compilation."""
  def both(h, w, targets, mask):
    dense = jax.value_and_grad(lambda h, w: losses.weighted_loss(jnp.dot(h, w, preferred_element_type=jnp.float32),
                                                                 targets, mask, config), argnums=(0, 1), has_aux=True)
    fused = jax.value_and_grad(lambda h, w: losses.linear_weighted_loss(h, w, targets, mask, config),
                               argnums=(0, 1), has_aux=True)
    return dense(h, w), fused(h, w)
  return jax.jit(both)


def _dense_and_fused(config, h, w, targets, mask):
  return _dense_and_fused_fn(config)(h, w, targets, mask)


# Every scheme with a token chunk that does not divide the 111 tokens (a padded last chunk), exact E[R]: the fused
# path computes each scheme's weights from its own statistics. The other chunkings and the histogram E[R] run the
# same scheme-independent chunk loop, so one or two schemes each suffice: RankTuner (its weights use E[R], the only
# statistic the method changes) and TALR (the whole-batch median). The histogram E[R] in the fused path is also
# checked against the dense path by the compaction and vocabulary-chunk tests below.
EQUALS_DENSE_CASES = ([(7, "sort", name) for name in sorted(CONFIGS)] + [(16, "histogram", "ranktuner")]
                      + [(1000, "sort", name) for name in ("ranktuner", "talr")])  # one chunk holds every token


@pytest.mark.parametrize("chunk,method,name", EQUALS_DENSE_CASES,
                         ids=[f"{chunk}-{method}-{name}" for chunk, method, name in EQUALS_DENSE_CASES])
def test_fused_equals_dense(name, chunk, method):
  config = loss_config(token_chunk=chunk, expected_rank=method, **CONFIGS[name])
  h, w, targets, mask = _inputs()
  ((l1, a1), (gh1, gw1)), ((l2, a2), (gh2, gw2)) = _dense_and_fused(config, h, w, targets, mask)
  np.testing.assert_allclose(l2, l1, rtol=1e-5)
  for k in a1:
    np.testing.assert_allclose(a2[k], a1[k], rtol=1e-5, atol=1e-6, err_msg=k)
  scale_h, scale_w = float(jnp.max(jnp.abs(gh1))), float(jnp.max(jnp.abs(gw1)))
  np.testing.assert_allclose(gh2, gh1, rtol=1e-5, atol=1e-5 * scale_h)
  np.testing.assert_allclose(gw2, gw1, rtol=1e-5, atol=1e-5 * scale_w)


def test_fused_bfloat16_inputs():
  config = loss_config(name="ranktuner", token_chunk=16)
  h, w, targets, mask = _inputs(dtype=jnp.bfloat16)
  ((l1, _), (gh1, gw1)), ((l2, _), (gh2, gw2)) = _dense_and_fused(config, h, w, targets, mask)
  assert gh2.dtype == jnp.bfloat16 and gw2.dtype == jnp.bfloat16
  np.testing.assert_allclose(l2, l1, rtol=1e-5)
  # bf16 gradients: both paths round the float32 result to bf16 (2^-8 relative), at different points.
  np.testing.assert_allclose(np.float32(gh2), np.float32(gh1), rtol=2e-2, atol=2e-2 * float(jnp.max(jnp.abs(gh1))))
  np.testing.assert_allclose(np.float32(gw2), np.float32(gw1), rtol=2e-2, atol=2e-2 * float(jnp.max(jnp.abs(gw1))))


def test_fused_empty_mask_is_zero_not_nan():
  config = loss_config(name="talr", token_chunk=8)
  h, w, targets, _ = _inputs()
  (loss, _), (gh, gw) = jax.jit(jax.value_and_grad(
      lambda h, w: losses.linear_weighted_loss(h, w, targets, jnp.zeros(targets.shape), config), argnums=(0, 1),
      has_aux=True))(h, w)
  assert float(loss) == 0.0 and not np.any(gh) and not np.any(gw)


# RankTuner (per-token statistics, global token count) and TALR (the global median). RankTuner with the exact E[R]
# adds nothing here: E[R] is per token, computed on each device alone, and the fused kernel gradient under shard_map
# with exact E[R] is checked in test_losses_gradient_rule.py.
@pytest.mark.parametrize("name,method", [("ranktuner", "histogram"), ("talr", "sort")])
def test_fused_under_shard_map_equals_single_device(name, method):
  """Tokens split over 8 devices (kernel replicated): global loss on every device, per-device
  hidden gradients are slices of the single-device one, and the kernel gradient (psum-ed by
  JAX, the transpose of replicating the kernel) equals the single-device gradient."""
  config = loss_config(name=name, token_chunk=8, expected_rank=method)
  h, w, targets, mask = _inputs(b=8, t=12)
  (l1, _), (gh1, gw1) = jax.jit(jax.value_and_grad(
      lambda h, w: losses.linear_weighted_loss(h, w, targets, mask, config), argnums=(0, 1), has_aux=True))(h, w)
  mesh = Mesh(np.asarray(jax.devices()), ("data",))

  def per_device(h, w, t, m):
    (loss, _), (gh, gw) = jax.value_and_grad(
        lambda h, w: losses.linear_weighted_loss(h, w, t, m, config, axis_name="data"), argnums=(0, 1), has_aux=True)(h, w)
    return loss[None], gh, gw

  fn = jax.shard_map(per_device, mesh=mesh, in_specs=(P("data"), P(), P("data"), P("data")),
                     out_specs=(P("data"), P("data"), P()))
  losses_per_device, gh2, gw2 = jax.jit(fn)(h, w, targets, mask)
  np.testing.assert_allclose(losses_per_device, np.full(8, l1), rtol=1e-5)
  np.testing.assert_allclose(gh2, gh1, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(gw2, gw1, rtol=1e-5, atol=1e-7)


def test_fused_shape_errors():
  h, w, targets, mask = _inputs()
  with pytest.raises(ValueError, match="kernel"):
    losses.linear_weighted_loss(h, w.T, targets, mask, losses.default_config())


@pytest.mark.parametrize("compact", [True, False])
def test_compaction_of_unsupervised_tokens_keeps_results(compact):
  """Supervised tokens are moved to the front and chunks without any are skipped: results
  still equal the dense path (whole chunks skipped when the prompt half is masked). The masks are
  arguments of one compiled function (as in the train step); without compaction one pattern suffices."""
  config = loss_config(name="ranktuner", token_chunk=8, expected_rank="histogram", compact_tokens=compact)
  h, w, targets, _ = _inputs(b=2, t=40)
  masks = {"prompt_then_response": jnp.zeros((2, 40)).at[:, 25:].set(1.0), "all": jnp.ones((2, 40)),
           "one_token": jnp.zeros((2, 40)).at[1, 3].set(1.0)}
  run = _dense_and_fused_fn(config)
  for pattern, mask in masks.items() if compact else [("prompt_then_response", masks["prompt_then_response"])]:
    ((l1, a1), (gh1, gw1)), ((l2, a2), (gh2, gw2)) = run(h, w, targets, mask)
    np.testing.assert_allclose(l2, l1, rtol=1e-5, err_msg=pattern)
    np.testing.assert_allclose(a2["mean_expected_rank"], a1["mean_expected_rank"], rtol=1e-5, err_msg=pattern)
    np.testing.assert_allclose(gh2, gh1, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(gh1))), err_msg=pattern)
    np.testing.assert_allclose(gw2, gw1, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(gw1))), err_msg=pattern)
    assert not np.any(np.asarray(gh2)[np.asarray(mask) == 0]), pattern


# 32: several vocabulary chunks (48, two chunks, runs the same loop); 0: the whole vocabulary at once.
@pytest.mark.parametrize("vocab_chunk", [32, 0])
def test_vocab_chunked_backward(vocab_chunk):
  config = loss_config(name="ranktuner", token_chunk=16, vocab_chunk=vocab_chunk, expected_rank="histogram")
  h, w, targets, mask = _inputs(v=96)
  ((l1, _), (gh1, gw1)), ((l2, _), (gh2, gw2)) = _dense_and_fused(config, h, w, targets, mask)
  np.testing.assert_allclose(l2, l1, rtol=1e-5)
  np.testing.assert_allclose(gh2, gh1, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(gh1))))
  np.testing.assert_allclose(gw2, gw1, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(gw1))))


def test_vocab_chunk_size_divides():
  from rankjax.losses.fused import vocab_chunk_size
  assert vocab_chunk_size(151936, 16384) == 9496  # 151936 = 16 * 9496
  assert vocab_chunk_size(101, 16) == 101  # a prime vocabulary is not cut into slivers
  assert vocab_chunk_size(512, 0) == 512 and vocab_chunk_size(96, 32) == 32
