"""KV-cache generation: greedy equals full recomputation, stop ids, sampling (determinism, top-p/top-k, the
sampler's distribution), input validation, and the greedy_generate wrapper."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rankjax import models
from rankjax.sampling.buckets import bucket_length
from rankjax.sampling.config import SamplingConfig
from rankjax.sampling.generation import generate
from rankjax.sampling.greedy import greedy_generate
from rankjax.sampling.static_batch import generate_tokens, sample_next

VOCAB = 61
PROMPTS = [[3, 14, 15, 9, 26, 5, 35, 8, 9, 7, 9, 3, 2, 38, 4, 6, 26, 43, 3, 8],
           [27, 18, 28],
           [16],
           [33, 8, 32, 7, 9, 50, 2, 8, 8, 41, 9, 7]]


@pytest.fixture(scope="module")
def model_params():
  c = models.default_config()
  c.vocab_size, c.hidden_size, c.num_layers, c.num_heads, c.num_kv_heads, c.mlp_dim = VOCAB, 32, 2, 4, 2, 64
  c.init_std = 0.5  # large enough that greedy continuations are not one repeated token
  m = models.build_model(c)
  return m, models.init_params(m, jax.random.PRNGKey(0))


def _greedy_by_recomputation(model, params, prompts, n):
  """Greedy continuations by re-running the model on each whole growing sequence every step (no cache)."""
  width = max(len(pr) for pr in prompts) + n
  forward = jax.jit(lambda ids: model.apply({"params": params}, ids))
  seqs = [list(pr) for pr in prompts]
  for _ in range(n):
    ids = np.zeros((len(seqs), width), np.int32)
    for r, seq in enumerate(seqs):
      ids[r, :len(seq)] = seq  # right padding cannot affect earlier positions (causal)
    logits = np.asarray(forward(jnp.asarray(ids)))
    for r, seq in enumerate(seqs):
      seq.append(int(np.argmax(logits[r, len(seq) - 1])))
  return [seq[len(pr):] for seq, pr in zip(seqs, prompts)]


@pytest.fixture(scope="module")
def reference(model_params):
  m, p = model_params
  return _greedy_by_recomputation(m, p, PROMPTS, 12)


def test_greedy_matches_full_recomputation(model_params, reference):
  m, p = model_params
  out = generate(m, p, PROMPTS, SamplingConfig(max_new_tokens=12))
  assert out == reference
  assert all(len(set(r)) > 2 for r in reference)  # non-trivial continuations
  assert greedy_generate(m, p, PROMPTS, 12, eos_id=VOCAB + 1, batch_size=2) == reference  # two chunks


def test_stop_id_ends_only_its_row(model_params, reference):
  m, p = model_params
  # A token that row 0 produces but some other row never does: row 0 stops, that row runs to the end.
  stop = next(t for t in reference[0] if any(t not in r for r in reference[1:]))
  expected = [r[:r.index(stop)] if stop in r else r for r in reference]
  assert len(expected[0]) < 12 and any(len(e) == 12 for e in expected)
  assert generate(m, p, PROMPTS, SamplingConfig(12, stop_ids=(stop,))) == expected
  assert greedy_generate(m, p, PROMPTS, 12, eos_id=stop) == expected


def test_generate_tokens_when_every_row_stops(model_params, reference):
  m, p = model_params
  stops = tuple({r[1] for r in reference})  # every row stops by its second token (the loop exits early)
  ids = np.zeros((5, 32), np.int32)
  mask = np.zeros((5, 32), np.int32)  # row 4 has no real token: inactive
  for r, pr in enumerate(PROMPTS):
    ids[r, 32 - len(pr):], mask[r, 32 - len(pr):] = pr, 1
  tokens, lengths = generate_tokens(m, p, jnp.asarray(ids), jnp.asarray(mask), SamplingConfig(12, stop_ids=stops))
  tokens, lengths = np.asarray(tokens), np.asarray(lengths)
  assert tokens.shape == (5, 12) and lengths[4] == 0
  assert [tokens[r, :lengths[r]].tolist() for r in range(4)] == [r[:min(r.index(s) for s in stops if s in r)]
                                                                 for r in reference]
  assert not np.any(tokens[:, 1:])  # zeros past each row's length


def test_sampling_deterministic_and_filters(model_params, reference):
  m, p = model_params
  hot = SamplingConfig(12, temperature=2.0)
  a = generate(m, p, PROMPTS, hot, rng=jax.random.PRNGKey(1))
  assert a == generate(m, p, PROMPTS, hot, rng=jax.random.PRNGKey(1))
  assert a != generate(m, p, PROMPTS, hot, rng=jax.random.PRNGKey(2))
  assert generate(m, p, PROMPTS, SamplingConfig(12, temperature=2.0, top_p=1e-6), rng=3) == reference
  assert generate(m, p, PROMPTS, SamplingConfig(12, temperature=2.0, top_k=1), rng=4) == reference


PROBS = np.array([0.1, 0.4, 0.05, 0.25, 0.2])  # not sorted, so index bookkeeping is exercised


def _renormalised(keep):
  q = np.where(keep, PROBS, 0.0)
  return q / q.sum()


@pytest.mark.parametrize("temperature,top_p,top_k,expected", [
    (1.0, 1.0, 0, PROBS),
    (2.0, 1.0, 0, np.sqrt(PROBS) / np.sqrt(PROBS).sum()),
    (1.0, 1.0, 3, _renormalised(PROBS >= 0.2)),
    (1.0, 0.6, 0, _renormalised(PROBS >= 0.25)),  # 0.4 + 0.25 >= 0.6: two tokens
    (1.0, 0.8, 4, _renormalised(PROBS >= 0.2)),  # top-4 mass .95; renormalised .42 + .26 < .8 <= + .21
    (1.0, 0.3, 0, _renormalised(PROBS >= 0.4)),  # the argmax alone
])
def test_sampler_distribution(temperature, top_p, top_k, expected):
  n = 20_000
  logits = jnp.broadcast_to(jnp.log(jnp.asarray(PROBS, jnp.float32)), (n, len(PROBS)))
  draws = np.asarray(jax.jit(sample_next, static_argnums=(2, 3, 4))(logits, jax.random.PRNGKey(0), temperature,
                                                                   top_p, top_k))
  freq = np.bincount(draws, minlength=len(PROBS)) / n
  np.testing.assert_allclose(freq, expected, atol=0.015)
  assert np.all(freq[expected == 0] == 0)


def test_sampler_greedy_and_bfloat16_logits():
  logits = jnp.asarray([[0.0, 3.0, 1.0], [2.0, -1.0, 0.5]], jnp.bfloat16)
  np.testing.assert_array_equal(sample_next(logits, None), [1, 0])
  assert sample_next(logits, jax.random.PRNGKey(0), 1.0, 0.9, 2).dtype == jnp.int32


@pytest.mark.parametrize("kwargs,match", [
    ({"max_new_tokens": 0}, "max_new_tokens"), ({"max_new_tokens": -3}, "max_new_tokens"),
    ({"max_new_tokens": 4, "top_p": 0.0}, "top_p"), ({"max_new_tokens": 4, "top_p": 1.5}, "top_p"),
    ({"max_new_tokens": 4, "top_p": -0.1}, "top_p"), ({"max_new_tokens": 4, "temperature": -1.0}, "temperature"),
    ({"max_new_tokens": 4, "top_k": -1}, "top_k"), ({"max_new_tokens": 4, "stop_ids": (-1,)}, "stop_ids")])
def test_bad_sampling_config(kwargs, match):
  with pytest.raises(ValueError, match=match):
    SamplingConfig(**kwargs)


def test_bad_prompts_and_rng(model_params):
  m, p = model_params
  with pytest.raises(ValueError, match="prompts"):
    generate(m, p, [[1, 2], []], SamplingConfig(4))
  with pytest.raises(ValueError, match="prompts"):
    generate(m, p, [[1, VOCAB]], SamplingConfig(4))
  with pytest.raises(ValueError, match="rng"):
    generate(m, p, [[1, 2]], SamplingConfig(4, temperature=1.0))
  with pytest.raises(ValueError, match="empty prompt"):
    greedy_generate(m, p, [[]], 4, eos_id=1)
  assert greedy_generate(m, p, [[1, 2]], 0, eos_id=1) == [[]]
  assert generate(m, p, [], SamplingConfig(4)) == []


def test_long_generation_has_no_length_limit(model_params):
  m, p = model_params
  out = generate(m, p, [[5, 6, 7]], SamplingConfig(300))
  assert len(out[0]) == 300


def test_bucket_length():
  assert [bucket_length(n) for n in (1, 16, 17, 128, 129, 300, 1000, 1025)] == [16, 16, 32, 128, 160, 320, 1024, 1280]


def test_bucket_padding_bound_of_the_docstring():
  """bucket_length's stated bound over every length 1..4096: below 8 * 16 = 128 fewer than 16 padding tokens,
  beyond it less than 1/5 of the padded length (the bound is tight: 2049 -> 2560), 4 widths per doubling."""
  lengths = range(1, 4097)
  padded = {n: bucket_length(n) for n in lengths}
  assert all(b >= n and b % 16 == 0 for n, b in padded.items())
  assert all(padded[n] - n < 16 for n in range(1, 129))
  assert all(5 * (padded[n] - n) < padded[n] for n in range(129, 4097))
  assert max((padded[n] - n) / padded[n] for n in range(129, 4097)) > 0.199  # 1/8 (the old claim) was false
  assert (padded[129], padded[2049]) == (160, 2560)
  for k in range(8, 12):  # (2^(k-1), 2^k]: 5/8, 6/8, 7/8, 8/8 of 2^k
    assert sorted({padded[n] for n in range(2 ** (k - 1) + 1, 2 ** k + 1)}) == [2 ** k * i // 8 for i in (5, 6, 7, 8)]
