"""Noisy training data (data.response_noise), the competent-base corpus (pretrain_mix), and method names."""

import pytest

from rankjax.data import response_noise, sources, synthetic
from rankjax.train.methods import METHODS, method_overrides, parse_methods


def _records(n=50):
  return synthetic.as_records(synthetic.make_examples(synthetic.FINETUNE_FAMILIES, n, seed=1), "finetune")


def test_noise_inserts_pool_words_at_the_rate_and_only_into_responses():
  records = _records(400)
  noisy = response_noise.NoisyRecords(records, rate=0.1, seed=3)
  pool = set(noisy.pool)
  clean_words = inserted = 0
  for i in range(len(records)):
    a, b = records[i], noisy[i]
    assert a["prompt"] == b["prompt"] and a["answer"] == b["answer"]
    wa, wb = a["response"].split(), b["response"].split()
    clean_words += len(wa)
    # The clean words survive in order; every extra word comes from the pool.
    it = iter(wb)
    assert all(any(w == x for x in it) for w in wa)
    inserted += len(wb) - len(wa)
    assert set(wb) - set(wa) <= pool
  assert 0.08 < inserted / clean_words < 0.12
  assert noisy[7] == response_noise.NoisyRecords(records, rate=0.1, seed=3)[7]  # per-record, seeded
  assert noisy[7] != response_noise.NoisyRecords(records, rate=0.1, seed=4)[7]


def test_noise_rate_is_checked():
  with pytest.raises(ValueError, match="rate"):
    response_noise.NoisyRecords(_records(), rate=0.0)
  config = sources.default_config()
  config.response_noise.rate = 0.7
  with pytest.raises(ValueError, match="response_noise.rate"):
    sources.validate_config(config)


def test_pretrain_mix_adds_finetune_formats_but_never_eval_questions():
  plain = synthetic.make_splits(0, 400, 100, 50, "finetune", 0.0)
  mixed = synthetic.make_splits(0, 400, 100, 50, "finetune", 0.1)
  assert plain["eval"] == mixed["eval"] and plain["finetune"] == mixed["finetune"]
  assert not any(e.family in synthetic.FINETUNE_FAMILIES for e in plain["pretrain"])
  share = [e for e in mixed["pretrain"] if e.family in synthetic.FINETUNE_FAMILIES]
  assert len(share) == 40
  eval_questions = {synthetic.question_of(e) for e in mixed["eval"]}
  assert not any(synthetic.question_of(e) in eval_questions for e in share)
  with pytest.raises(ValueError, match="pretrain_mix"):
    synthetic.make_splits(0, 10, 10, 10, "finetune", 1.0)


def test_method_names():
  assert method_overrides("ranktuner_bound_uniform") == {"loss.name": "ranktuner", "loss.form": "bound",
                                                         "loss.base": "uniform"}
  assert method_overrides("dft") == {"loss.name": "dft"}
  assert parse_methods("sft, ranktuner_uniform") == ["sft", "ranktuner_uniform"]
  assert len(METHODS) == 11 and {"prob_power", "asft", "psft"} <= set(METHODS)
  with pytest.raises(ValueError, match="unknown method 'focal'"):
    parse_methods("sft,focal")
