"""The noise diagnostic (rankjax.diagnostics): injection bookkeeping, the detection metrics on a hand-built case,
each family's score against the library's dense weights, and the whole diagnostic on a tiny trained run."""

import json
import os

import jax
import ml_collections
import numpy as np
import pytest

from rankjax import losses, models
from rankjax.diagnostics import families, noise_injection, noise_metrics, token_scores
from rankjax.diagnostics.noise import default_config, run_noise_diagnostic
from rankjax.diagnostics.noise_injection import NoisyExample, end_of_turn_length, inject_noise
from tests.helpers import tiny_run_config
from tests.shared_runs import tiny_trained_run

SPECIAL = {0, 1, 2}  # <pad>, <bos>, <eos>
EOS = 2


def _examples(n=400, seed=0, vocab=60):
  """(prompt, response + [EOS]) pairs of random ordinary ids."""
  rng = np.random.default_rng(seed)
  return [(list(rng.integers(3, vocab, rng.integers(2, 8))), list(rng.integers(3, vocab, rng.integers(4, 50))) + [EOS])
          for _ in range(n)]


def _check_bookkeeping(clean, noisy, mode, vocab):
  for (prompt, response), e in zip(clean, noisy):
    assert e.prompt == prompt and e.clean == response and e.tail == 1
    assert e.noisy[-1] == EOS  # the end-of-response token is untouched
    assert list(e.positions) == sorted(set(e.positions))
    assert all(p < len(e.noisy) - e.tail for p in e.positions)
    assert all(3 <= e.noisy[p] < vocab for p in e.positions)  # ordinary ids only
    if mode == "replace":
      assert len(e.noisy) == len(response)
      assert np.flatnonzero(np.asarray(e.noisy) != np.asarray(response)).tolist() == list(e.positions)
    else:
      assert len(e.noisy) == len(response) + len(e.positions)
      kept = [t for i, t in enumerate(e.noisy) if i not in set(e.positions)]
      assert kept == response  # removing exactly the recorded positions gives the clean response back


@pytest.mark.parametrize("mode", ["insert", "replace"])
@pytest.mark.parametrize("pool", ["vocabulary", "corpus"])
def test_injection_records_every_position_and_only_those(mode, pool):
  clean = _examples()
  noisy = inject_noise(clean, 0.05, mode, pool, seed=3, special_ids=SPECIAL, vocab_size=100)
  _check_bookkeeping(clean, noisy, mode, 100)
  assert sum(len(e.positions) for e in noisy) > 100
  if pool == "corpus":  # drawn from the responses' own (non-EOS) tokens
    corpus = {t for _, r in clean for t in r[:-1]}
    assert all(e.noisy[p] in corpus for e in noisy for p in e.positions)
  again = inject_noise(clean, 0.05, mode, pool, seed=3, special_ids=SPECIAL, vocab_size=100)
  other = inject_noise(clean, 0.05, mode, pool, seed=4, special_ids=SPECIAL, vocab_size=100)
  assert again == noisy and other != noisy


@pytest.mark.parametrize("mode", ["insert", "replace"])
def test_noise_share_of_a_large_pool_is_the_rate(mode):
  clean = _examples(n=3000, seed=1)
  noisy = inject_noise(clean, 0.008, mode, "vocabulary", seed=0, special_ids=SPECIAL, vocab_size=100)
  pool = sum(len(e.noisy) for e in noisy)
  count = sum(len(e.positions) for e in noisy)
  assert abs(count / pool - 0.008) <= 1.0 / pool
  # Spread over the corpus, not clumped: about as many noisy sequences as independent draws would give.
  lengths = np.asarray([len(r) - 1 for _, r in clean])
  expected = np.sum(1 - (1 - count / lengths.sum()) ** lengths)
  assert abs(sum(bool(e.positions) for e in noisy) - expected) < 0.1 * expected


def test_end_of_turn_tail_and_bad_noise_settings():
  assert end_of_turn_length([5, 6, EOS], SPECIAL) == 1
  assert end_of_turn_length([5, 6, 7, 1, 9], SPECIAL) == 2  # e.g. "<|im_end|>" "\n"
  assert end_of_turn_length([5, 6, 7, 8, 9, 10], SPECIAL) == 0
  good = ml_collections.ConfigDict({"rate": 0.008, "mode": "insert", "pool": "vocabulary", "seed": 0})
  noise_injection.validate_noise_config(good)
  for field, value in [("rate", 0.0), ("rate", 0.6), ("mode", "delete"), ("pool", "random")]:
    bad = ml_collections.ConfigDict(good.to_dict())
    bad[field] = value
    with pytest.raises(ValueError, match=f"config.noise.{field}"):
      noise_injection.validate_noise_config(bad)
  with pytest.raises(ValueError, match="no noise token"):
    inject_noise(_examples(n=2), 0.001, "insert", "vocabulary", 0, SPECIAL, 100)


def test_metrics_on_a_hand_built_pool():
  example = np.repeat(np.arange(4), 5)  # 4 sequences of 5 tokens
  is_noise = np.zeros(20, bool)
  is_noise[[3, 12]] = True  # one noise token in sequences 0 and 2
  scores = np.linspace(0.0, 0.5, 20)
  scores[3], scores[7], scores[12] = 10.0, 9.0, -1.0  # top 10% = tokens 3 (noise) and 7 (clean)
  keys = noise_metrics.tie_keys(20, 0)
  m = noise_metrics.detection_metrics(scores, is_noise, example, 0.1, keys)
  assert m["top_count"] == 2 and m["precision"] == 0.5 and m["recall"] == 0.5 and m["hit_rate"] == 0.5
  assert m["mean_noise"] == pytest.approx(4.5) and m["noisy_sequences"] == 2
  assert noise_metrics.top_count(25, 0.1) == 3  # 2.5 rounds half up
  # A tie at the boundary: token 3 always, then 7 or 12 by the seeded keys; both happen over seeds.
  tied = np.zeros(20)
  tied[3], tied[7], tied[12] = 10.0, 5.0, 5.0
  precisions = {noise_metrics.detection_metrics(tied, is_noise, example, 0.1, noise_metrics.tie_keys(20, s))[
      "precision"] for s in range(20)}
  assert precisions == {0.5, 1.0}
  # A constant score: a uniformly random top set, deterministic per seed; mean precision = the base rate 10%.
  flat = np.ones(20)
  a = noise_metrics.top_set(flat, 0.1, noise_metrics.tie_keys(20, 1))
  assert a.sum() == 2 and np.array_equal(a, noise_metrics.top_set(flat, 0.1, noise_metrics.tie_keys(20, 1)))
  mean = np.mean([noise_metrics.detection_metrics(flat, is_noise, example, 0.1, noise_metrics.tie_keys(20, s))[
      "precision"] for s in range(2000)])
  assert mean == pytest.approx(0.1, abs=0.015)


def test_family_scores_equal_the_library_weights_on_dense_logits():
  config = tiny_run_config().model
  model = models.build_model(config)
  params = jax.jit(lambda key: models.init_params(model, key))(jax.random.PRNGKey(1))
  rng = np.random.default_rng(0)
  examples = [NoisyExample([1, *rng.integers(3, 400, 5).tolist()], [], r, (1,), 1)
              for r in (rng.integers(3, 400, n).tolist() + [EOS] for n in (9, 20, 14))]
  loss = losses.default_config()  # expected_rank="histogram", the diagnostic's default
  tokens = token_scores.score_examples(model, params, examples, loss, batch_size=4)
  scores, _ = families.family_scores(tokens, loss, config.vocab_size)
  assert set(scores) == set(families.FAMILIES) and tokens["is_noise"].sum() == 3
  # Dense reference: the same rows through token_stats and token_weights (TALR's global batch = these rows).
  ids = [e.prompt + e.noisy for e in examples]
  width = max(map(len, ids))
  inputs = np.zeros((3, width - 1), np.int32)
  targets, mask = np.zeros_like(inputs), np.zeros(inputs.shape, np.float32)
  for r, (e, row) in enumerate(zip(examples, ids)):
    inputs[r, :len(row) - 1], targets[r, :len(row) - 1] = row[:-1], row[1:]
    mask[r, len(e.prompt) - 1:len(row) - 1] = 1.0
  segments = (np.arange(width - 1)[None] < np.asarray([len(i) - 1 for i in ids])[:, None]).astype(np.int32)

  @jax.jit
  def dense(params):
    logits = model.apply({"params": params}, inputs, segment_ids=segments)
    weights = {family: losses.token_weights(logits, targets, mask, families.scheme_config(loss, name, form, base))
               for family, name, form, base in families.SCHEMES}
    return losses.token_stats(logits, targets, expected_rank="histogram"), weights

  stats, weights = dense(params)
  on = mask > 0
  np.testing.assert_allclose(scores["entropy"], np.asarray(stats.entropy_bits)[on], rtol=1e-5)
  np.testing.assert_allclose(scores["probability"], -np.asarray(stats.log_prob)[on], rtol=1e-5)
  np.testing.assert_array_equal(tokens["rank"], np.asarray(stats.rank)[on])
  np.testing.assert_allclose(tokens["expected_rank"], np.asarray(stats.expected_rank)[on], rtol=1e-5)
  for family in weights:
    np.testing.assert_allclose(scores[family], np.asarray(weights[family])[on], rtol=1e-5, err_msg=family)
  np.testing.assert_allclose(scores["ranktuner_scale_exact"], scores["ranktuner_exact_uniform"], rtol=1e-6)
  np.testing.assert_allclose(scores["ranktuner_scale_bound"], scores["ranktuner_bound_uniform"], rtol=1e-6)


@pytest.fixture(scope="module")
def tiny_workdir(tmp_path_factory):
  return tiny_trained_run(tmp_path_factory)  # shared with the notebooks' and the eval harness's tests


def _config(checkpoint, **overrides):
  c = default_config()
  c.checkpoint, c.num_examples, c.batch_size, c.progress = checkpoint, 100, 16, False
  c.noise.rate = 0.02
  for k, v in overrides.items():
    node, *path = k.split(".")
    (c[node] if path else c)[path[0] if path else node] = v
  return c


def test_diagnostic_end_to_end_on_a_tiny_run(tiny_workdir, tmp_path):
  out = str(tmp_path / "noise")
  # 8 fake devices: rows split over the mesh. E[R] by sort: at V = 400 it is much cheaper than the ~2,800-bin
  # histogram at the tests' XLA optimisation level 0 (the histogram is checked in the family test above).
  results = run_noise_diagnostic(_config(tiny_workdir, **{"loss.expected_rank": "sort"}), out)
  for name in ("results.json", "results.md", "weights.png", "tokens.npz"):
    assert os.path.getsize(os.path.join(out, name)) > 0
  with open(os.path.join(out, "results.json"), encoding="utf-8") as f:
    assert json.load(f)["pool"] == results["pool"]
  pool, tokens = results["pool"], np.load(os.path.join(out, "tokens.npz"))
  assert results["data"]["split"] == "finetune" and results["devices"] == 8 and pool["examples"] == 100
  positions = results["noise"]["positions"]
  assert pool["noise_tokens"] == sum(map(len, positions.values())) == int(tokens["is_noise"].sum()) > 0
  assert pool["noisy_sequences"] == len(positions) and pool["tokens"] == tokens["example"].size
  noisy = tokens["is_noise"]
  noise_at = {(int(e), int(p)) for e, p in zip(tokens["example"][noisy], tokens["position"][noisy])}
  assert noise_at == {(int(e), p) for e, ps in positions.items() for p in ps}
  assert list(results["families"]) == list(families.FAMILIES)
  with open(os.path.join(out, "results.md"), encoding="utf-8") as fh:
    table = fh.read()
  for name, f in results["families"].items():
    assert 0 <= f["precision"] <= 1 and 0 <= f["recall"] <= 1 and 0 <= f["hit_rate"] <= 1
    assert f["ranked"] and int(tokens[f"top_{name}"].sum()) == pool["top_count"]
    assert f["noise_in_top"] == int((tokens[f"top_{name}"] & tokens["is_noise"]).sum())
    assert f"| {name} | {f['ranked']} | {100 * f['precision']:.2f} |" in table
  assert results["families"]["sft"]["mean_noise"] == 1.0


def test_bad_input_names_the_field(tiny_workdir, tmp_path):
  with pytest.raises(ValueError, match="config.checkpoint"):
    run_noise_diagnostic(_config(""), str(tmp_path))
  with pytest.raises(FileNotFoundError, match="config.checkpoint"):
    run_noise_diagnostic(_config(str(tmp_path / "missing")), str(tmp_path))
  with pytest.raises(ValueError, match="config.noise.rate"):
    run_noise_diagnostic(_config(tiny_workdir, **{"noise.rate": 0.7}), str(tmp_path))
  with pytest.raises(ValueError, match="config.top_fraction"):
    run_noise_diagnostic(_config(tiny_workdir, top_fraction=1.5), str(tmp_path))
  with pytest.raises(ValueError, match="config.data: no usable example"):  # every example is longer than this
    run_noise_diagnostic(_config(tiny_workdir, **{"data.seq_len": 4}), str(tmp_path))


def test_importing_the_command_defines_no_flags():
  import rankjax.preview  # noqa: F401, PLC0415 (a command: defines its flags only when run, rankjax.cli.run)
  import rankjax.diagnostics.noise  # noqa: F401, PLC0415
