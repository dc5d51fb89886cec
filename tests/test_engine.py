"""The continuous-batching sampling engine (rankjax.sampling.engine): greedy equals static batching on every family,
samples equal `generate_tokens` with the same per-sample keys whatever the slot count, a prompt's neighbours change
its logits only by float rounding, per-request settings, no recompiles after warm-up, sharded equals single device,
bad requests."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from rankjax import models
from rankjax.sampling.config import SamplingConfig
from rankjax.sampling.engine import Engine, Request, engine_for
from rankjax.sampling.finish import FINISH_LENGTH, FINISH_STOP
from rankjax.sampling.keys import sample_keys
from rankjax.sampling.static_sampler import Sampler


def generate(model, params, prompts, sampling):
  """Greedy continuations by today's static batching (`generate_tokens` on one left-padded batch)."""
  zeros = np.zeros((len(prompts), 2), np.uint32)
  return [c.tokens for c in Sampler(model, params, sampling, len(prompts)).generate(prompts, zeros)]

VOCAB = 61
PROMPTS = [[3, 14, 15, 9, 26, 5, 35, 8, 9, 7, 9, 3, 2, 38, 4, 6, 26, 43, 3, 8], [27, 18, 28], [16],
           [33, 8, 32, 7, 9, 50, 2, 8, 8, 41, 9, 7]]
# The architecture switches of the supported checkpoint families (rankjax.models.hf_config).
FAMILIES = {
    "llama3": {"rope_scaling": "llama3", "rope_original_max_positions": 16, "tie_embeddings": False},
    "qwen2": {"qkv_bias": True, "tie_embeddings": True},
    "qwen3": {"qk_norm": True, "head_dim": 16, "tie_embeddings": False},
}


def _model(**fields):
  c = models.default_config()
  c.vocab_size, c.hidden_size, c.num_layers, c.num_heads, c.num_kv_heads, c.mlp_dim = VOCAB, 32, 2, 4, 2, 64
  c.init_std = 0.5  # large enough that greedy continuations are not one repeated token
  c.update(fields)
  m = models.build_model(c)
  return m, models.init_params(m, jax.random.PRNGKey(0))


@pytest.fixture(scope="module")
def llama():
  return _model()


def _tokens(results):
  return [[s.tokens for s in r] for r in results]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_greedy_equals_generate_on_every_family(family):
  m, p = _model(**FAMILIES[family])
  sampling = SamplingConfig(max_new_tokens=12)
  want = generate(m, p, PROMPTS, sampling)
  requests = [Request(pr, sampling, num_samples=2) for pr in PROMPTS]
  engine = engine_for(m, p, requests, slots=3, steps_per_sync=4)
  got = _tokens(engine.run(requests))
  assert got == [[w, w] for w in want]
  assert engine.stats.prefills == len(PROMPTS)  # one prefill per prompt, copied into both samples' slots
  assert any(len(set(w)) > 2 for w in want)  # not all one repeated token


def _keys(n, seed=3):
  return np.asarray(jax.random.split(jax.random.PRNGKey(seed), n)).astype(np.uint32).reshape(n, 2)


def test_samples_equal_generate_tokens_with_the_same_keys_whatever_the_slots(llama):
  m, p = llama
  sampling = SamplingConfig(max_new_tokens=10, temperature=1.0, top_p=0.9, top_k=20, stop_ids=(5,))
  keys = _keys(8)
  requests = [Request(PROMPTS[0], sampling, keys=keys[:4]), Request(PROMPTS[3], sampling, keys=keys[4:])]
  runs = {}
  for slots, sync in ((1, 1), (5, 4)):
    runs[slots] = _tokens(engine_for(m, p, requests, slots, steps_per_sync=sync).run(requests))
  assert all(r == runs[1] for r in runs.values())
  want = Sampler(m, p, sampling, 8).generate([PROMPTS[0]] * 4 + [PROMPTS[3]] * 4, keys)
  assert [c.tokens for c in want] == runs[1][0] + runs[1][1]
  assert len({tuple(t) for t in runs[1][0]}) > 1  # the samples of one prompt differ


# The float32 rounding bound stated in rankjax.sampling ("Reproducibility"): a prompt's first-token logits with and
# without neighbours differ by at most this fraction of the largest |logit| (measured on CPU: 2.2e-6).
LOGIT_ROUNDING = 1e-5


def _prefill_logits(engine, prompts, rows, width):
  """Float32 first-token logits [len(prompts), V] of `prompts` prefilled together, right-padded to [rows, width]."""
  ids, lengths = np.zeros((rows, width), np.int32), np.ones((rows,), np.int32)
  for r, pr in enumerate(prompts):
    ids[r, :len(pr)], lengths[r] = pr, len(pr)
  return np.asarray(engine._prefill(engine.params, jnp.asarray(ids), jnp.asarray(lengths))[1])[:len(prompts)]


def test_neighbours_change_keys_not_at_all_and_logits_only_by_rounding(llama):
  m, p = llama
  items = [("b", i, j) for i in range(len(PROMPTS)) for j in range(2)]
  keys = sample_keys(0, items)
  for k, item in enumerate(items):  # a sample's key is the same alone, among others, in any order
    np.testing.assert_array_equal(sample_keys(0, [("other", 9, 9), item])[1], keys[k])
  engine = Engine(m, p, slots=8, max_len=64)
  alone = np.concatenate([_prefill_logits(engine, [pr], 1, 16 if len(pr) <= 16 else 32) for pr in PROMPTS])
  for rows, width in ((4, 32), (8, 48)):  # the widths and row counts the engine uses when prompts enter together
    together = _prefill_logits(engine, PROMPTS, rows, width)
    np.testing.assert_allclose(together, alone, rtol=0, atol=LOGIT_ROUNDING * np.abs(alone).max())
  # On this tiny model no rounding flips a token: greedy and sampled samples are equal alone and together.
  for sampling in (SamplingConfig(max_new_tokens=10), SamplingConfig(max_new_tokens=10, temperature=1.0, top_p=0.9)):
    requests = [Request(pr, sampling, keys=keys[2 * i:2 * i + 2]) for i, pr in enumerate(PROMPTS)]
    solo = [_tokens(engine_for(m, p, [r], slots=1).run([r]))[0] for r in requests]
    for slots in (3, 8):
      assert _tokens(engine_for(m, p, requests, slots=slots).run(requests)) == solo


def test_per_request_settings_and_finish_reasons(llama):
  m, p = llama
  greedy = generate(m, p, [PROMPTS[1]], SamplingConfig(max_new_tokens=12))[0]
  stop = greedy[4]
  requests = [
      Request(PROMPTS[1], SamplingConfig(max_new_tokens=12, stop_ids=(stop,))),
      Request(PROMPTS[1], SamplingConfig(max_new_tokens=3)),
      Request(PROMPTS[1], SamplingConfig(max_new_tokens=1)),
      Request(PROMPTS[2], SamplingConfig(max_new_tokens=6, temperature=0.7, top_k=1), keys=_keys(2)),  # top_k=1: greedy
      Request(PROMPTS[0], SamplingConfig(max_new_tokens=8, temperature=2.0, top_p=0.5), keys=_keys(3, seed=7)),
  ]
  out = engine_for(m, p, requests, slots=4, steps_per_sync=2).run(requests)
  assert out[0][0].tokens == greedy[:greedy.index(stop)] and out[0][0].finish == FINISH_STOP
  assert out[1][0].tokens == greedy[:3] and out[1][0].finish == FINISH_LENGTH
  assert out[2][0].tokens == greedy[:1] and out[2][0].finish == FINISH_LENGTH
  top1 = generate(m, p, [PROMPTS[2]], SamplingConfig(max_new_tokens=6))[0]
  assert [s.tokens for s in out[3]] == [top1, top1]
  want = Sampler(m, p, requests[4].sampling, 4).generate([PROMPTS[0]] * 3, requests[4].keys)
  assert [s.tokens for s in out[4]] == [c.tokens for c in want]


def test_no_recompile_after_warm_up_and_slot_use(llama):
  m, p = llama
  sampling = SamplingConfig(max_new_tokens=16, temperature=1.0, stop_ids=(5, 7))
  engine = Engine(m, p, slots=4, max_len=48, steps_per_sync=2)
  engine.run([Request(PROMPTS[1], sampling, keys=_keys(5))])  # warm-up: prompt width 16
  sizes = [f._cache_size() for f in (Engine._prefill, Engine._insert, Engine._decode)]
  engine.run([Request(PROMPTS[2], sampling, keys=_keys(6, seed=1)), Request(PROMPTS[3], sampling, keys=_keys(3))])
  assert [f._cache_size() for f in (Engine._prefill, Engine._insert, Engine._decode)] == sizes
  s = engine.stats
  assert s.prefills == 2 and s.slot_steps == 4 * s.steps and 0 < s.useful_slot_steps <= s.slot_steps


def test_sharded_slots_equal_single_device(llama):
  m, p = llama
  mesh = Mesh(np.asarray(jax.devices()).reshape(-1, 1, 1), ("data", "fsdp", "tensor"))
  sampling = SamplingConfig(max_new_tokens=8, temperature=1.0, top_k=10)
  requests = [Request(pr, sampling, keys=_keys(3, seed=i)) for i, pr in enumerate(PROMPTS)]
  single = _tokens(engine_for(m, p, requests, slots=8, steps_per_sync=4).run(requests))
  engine = engine_for(m, p, requests, slots=8, steps_per_sync=4, mesh=mesh)
  assert _tokens(engine.run(requests)) == single
  assert len(engine._init_state(8, 1)["cache"]["k"].sharding.device_set) == jax.device_count()


def test_bad_requests(llama):
  m, p = llama
  greedy = SamplingConfig(max_new_tokens=4)
  with pytest.raises(ValueError, match="prompt is empty"):
    Request([], greedy)
  with pytest.raises(ValueError, match="keys"):
    Request([1, 2], SamplingConfig(max_new_tokens=4, temperature=1.0))
  engine = Engine(m, p, slots=2, max_len=20)
  with pytest.raises(ValueError, match=r"requests\[0\] has token ids outside"):
    engine.run([Request([1, VOCAB], greedy)])
  with pytest.raises(ValueError, match=r"requests\[1\] needs 36 cache slots"):
    engine.run([Request([1], greedy), Request([1] * 20, greedy)])
  with pytest.raises(ValueError, match="slots"):
    Engine(m, p, slots=0, max_len=20)
  assert engine.run([]) == []


def test_kv_cache_bytes_is_the_cache_the_engine_allocates(llama):
  from rankjax.sampling.engine import kv_cache_bytes
  m, p = llama
  engine = Engine(m, p, slots=3, max_len=40)
  cache = engine._init_state(8, 1)["cache"]
  assert kv_cache_bytes(m.config, 3, 40) == cache["k"].nbytes + cache["v"].nbytes + cache["segment_ids"].nbytes


def test_unfiltered_sampling_skips_the_sort_and_still_equals_generate_tokens(llama):
  from rankjax.sampling.engine import filtering_bound
  m, p = llama
  plain = SamplingConfig(max_new_tokens=6, temperature=1.0)
  requests = [Request(PROMPTS[3], plain, keys=_keys(3, seed=5))]
  assert filtering_bound(requests, VOCAB) == -1
  assert filtering_bound(requests + [Request(PROMPTS[1], SamplingConfig(4, temperature=1.0, top_k=7), keys=_keys(1))],
                VOCAB) == 7
  got = _tokens(engine_for(m, p, requests, slots=2).run(requests))[0]
  assert got == [c.tokens for c in Sampler(m, p, plain, 3).generate([PROMPTS[3]] * 3, requests[0].keys)]
