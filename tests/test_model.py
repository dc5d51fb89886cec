"""The Llama-style decoder: shapes, masking of packed/padded sequences, KV-cache decoding, dtypes, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rankjax import models


def _build(**kw):
  c = models.default_config()
  c.vocab_size, c.hidden_size, c.num_layers, c.num_heads, c.num_kv_heads, c.mlp_dim = 97, 32, 2, 4, 2, 64
  for k, v in kw.items():
    c[k] = v
  return models.build_model(c)


def _model(**kw):
  m = _build(**kw)
  return m, models.init_params(m, jax.random.PRNGKey(0))


@pytest.fixture(scope="module")
def default_model():
  """(model, params) of the default tiny config, initialised once for the tests that only read them."""
  return _model()


@pytest.fixture(scope="module")
def plain_gradient(default_model):
  """d(sum of logits)/d(params) on 8 ids without remat: the reference of every remat policy."""
  m, p = default_model
  return jax.grad(lambda p: m.apply({"params": p}, jnp.arange(8, dtype=jnp.int32)[None]).sum())(p)


def test_logits_shape_and_param_axes(default_model):
  m, p = default_model
  ids = jnp.arange(12, dtype=jnp.int32).reshape(2, 6)
  assert m.apply({"params": p}, ids).shape == (2, 6, 97)
  axes = models.logical_axes(m)
  assert tuple(axes["embed"]["embedding"]) == ("vocab", "embed")
  assert tuple(axes["layer_0"]["attn"]["q"]) == ("embed", "heads", "kv")
  assert tuple(axes["layer_0"]["mlp"]["gate"]) == ("embed", "mlp")
  assert tuple(axes["final_norm"]["scale"]) == ("norm",)


def test_untied_head_and_qkv_bias():
  m, p = _model(tie_embeddings=False, qkv_bias=True)
  assert p["lm_head"].shape == (32, 97) and "q_bias" in p["layer_0"]["attn"]
  hidden, kernel = m.apply({"params": p}, jnp.ones((1, 4), jnp.int32), return_hidden=True)
  logits = m.apply({"params": p}, jnp.ones((1, 4), jnp.int32))
  np.testing.assert_allclose(hidden @ kernel, logits, rtol=1e-5, atol=1e-5)


def test_causal(default_model):
  m, p = default_model
  ids = jax.random.randint(jax.random.PRNGKey(1), (1, 10), 3, 97)
  full = m.apply({"params": p}, ids)
  changed = m.apply({"params": p}, ids.at[0, 7].set(5))
  np.testing.assert_allclose(full[0, :7], changed[0, :7], rtol=1e-5, atol=1e-6)
  assert not np.allclose(full[0, 7:], changed[0, 7:])


def test_packed_segments_do_not_attend_across(default_model):
  """Two sequences packed into one row (per-segment positions) give the logits of each alone."""
  m, p = default_model
  a = jax.random.randint(jax.random.PRNGKey(2), (5,), 3, 97)
  b = jax.random.randint(jax.random.PRNGKey(3), (4,), 3, 97)
  packed = jnp.concatenate([a, b, jnp.zeros((3,), jnp.int32)])[None]
  seg = jnp.asarray([[1] * 5 + [2] * 4 + [0] * 3])
  pos = jnp.asarray([list(range(5)) + list(range(4)) + [0] * 3])
  out = m.apply({"params": p}, packed, positions=pos, segment_ids=seg)
  np.testing.assert_allclose(out[0, :5], m.apply({"params": p}, a[None])[0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out[0, 5:9], m.apply({"params": p}, b[None])[0], rtol=1e-5, atol=1e-5)
  assert np.all(np.isfinite(out))  # padding rows are fully masked yet finite


def test_kv_cache_decoding_matches_full_forward(default_model):
  m, p = default_model
  ids = jax.random.randint(jax.random.PRNGKey(4), (2, 9), 3, 97)
  full = m.apply({"params": p}, ids)
  # Jitted: two programs (prefill, one-token step) compile faster than the decode loop runs op by op.
  apply = jax.jit(lambda ids, positions, cache: m.apply({"params": p}, ids, positions=positions, cache=cache))
  cache = models.init_cache(m.config, 2, 12)
  logits, cache = apply(ids[:, :5], jnp.broadcast_to(jnp.arange(5, dtype=jnp.int32), (2, 5)), cache)
  steps = [logits]
  for t in range(5, 9):
    lt, cache = apply(ids[:, t:t + 1], jnp.full((2, 1), t, jnp.int32), cache)
    steps.append(lt)
  np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, rtol=1e-4, atol=1e-5)
  assert int(cache["index"]) == 9


def test_bfloat16_compute():
  m, p = _model(dtype="bfloat16", param_dtype="bfloat16")
  assert jax.tree.leaves(p)[0].dtype == jnp.bfloat16
  out = m.apply({"params": p}, jnp.ones((1, 4), jnp.int32))
  assert out.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(out.astype(jnp.float32))))


@pytest.mark.parametrize("policy", ["layer", "dots_saveable"])
def test_remat_same_gradient(policy, default_model, plain_gradient):
  _, p = default_model
  m2 = _build(remat=policy)
  ids = jnp.arange(8, dtype=jnp.int32)[None]
  g1 = plain_gradient
  g2 = jax.grad(lambda p: m2.apply({"params": p}, ids).sum())(p)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_library_attention_matches_xla_with_padding_and_packing(default_model):
  m1, p = default_model
  m2 = _build(attention_impl="dot_product_attention")
  ids = jnp.arange(1, 11, dtype=jnp.int32)[None]
  segments = jnp.asarray([[1, 1, 1, 2, 2, 2, 2, 0, 0, 0]], jnp.int32)
  positions = jnp.asarray([[0, 1, 2, 0, 1, 2, 3, 0, 0, 0]], jnp.int32)
  a = m1.apply({"params": p}, ids, positions=positions, segment_ids=segments)
  b = m2.apply({"params": p}, ids, positions=positions, segment_ids=segments)
  np.testing.assert_allclose(a[:, :7], b[:, :7], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("field,value,match", [
    ("num_kv_heads", 3, "num_kv_heads"), ("hidden_size", 30, "hidden_size"), ("dtype", "float8", "dtype"),
    ("vocab_size", 0, "vocab_size"), ("remat", "full", "remat"), ("attention_impl", "flash", "attention_impl"),
    ("rope_scaling", "yarn", "rope_scaling"), ("architecture", "gpt2", "architecture")])
def test_invalid_model_config(field, value, match):
  c = models.default_config()
  c[field] = value
  with pytest.raises(ValueError, match=match):
    models.build_model(c)


def test_input_rank_error(default_model):
  m, p = default_model
  with pytest.raises(ValueError, match="input_ids"):
    m.apply({"params": p}, jnp.ones((4,), jnp.int32))
