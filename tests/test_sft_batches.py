"""The SFT data path: loss mask from prompt/response boundaries, skipping bad examples, resumable batches."""

import dataclasses

import numpy as np
import pytest

from rankjax.data import synthetic
from rankjax.data.sft_batches import BatchSchedule, tokenize_examples
from rankjax.data.tokenizer import EOS_ID, PAD_ID, train_bpe


@dataclasses.dataclass
class Ex:
  prompt: object
  response: object


@pytest.fixture(scope="module")
def corpus():
  examples = synthetic.make_examples(synthetic.FINETUNE_FAMILIES, 64, seed=0)
  tok = train_bpe([e.prompt + e.response for e in examples], 400)
  return examples, tok


def test_supervised_tokens_decode_to_response_plus_eos(corpus):
  examples, tok = corpus
  data = tokenize_examples(examples, tok, seq_len=96)
  batch = BatchSchedule(data, batch_size=len(data)).batch(0)
  targets, mask = batch["targets"][0], batch["loss_mask"][0]
  order = BatchSchedule(data, batch_size=len(data)).indices(0)
  for row, i in enumerate(order):
    supervised = targets[row][mask[row] > 0].tolist()
    assert supervised[-1] == EOS_ID
    assert tok.decode(supervised[:-1]) == examples[i].response
    # padding is never supervised, and segment ids mark exactly the real input tokens
    real = batch["segment_ids"][0][row] > 0
    assert not np.any(mask[row][~real])
    assert np.all(batch["targets"][0][row][~real] == PAD_ID)


def test_pretraining_mask_covers_every_token_after_bos(corpus):
  examples, tok = corpus
  data = tokenize_examples(examples[:4], tok, seq_len=96, loss_on="all")
  for r in range(4):
    n = data.lengths[r]
    assert data.supervised[r, 1:n].all() and not data.supervised[r, 0] and not data.supervised[r, n:].any()


def test_bad_examples_are_counted_or_raise(corpus):
  _, tok = corpus
  bad = [Ex("q", ""), Ex("q", None), Ex("x " * 200, "y"), Ex("q", "a fine answer")]
  data = tokenize_examples(bad, tok, seq_len=32)
  assert data.skipped == {"empty_response": 1, "non_string": 1, "too_long": 1}
  assert len(data) == 1
  with pytest.raises(ValueError, match="example 0: empty_response"):
    tokenize_examples(bad, tok, seq_len=32, strict=True)
  with pytest.raises(ValueError, match="no usable example"):
    tokenize_examples(bad[:3], tok, seq_len=32)


def test_truncate_keeps_prefix_of_long_response(corpus):
  _, tok = corpus
  data = tokenize_examples([Ex("q", "1 2 3 4 5 6 7 8 9 " * 10)], tok, seq_len=16, truncation="truncate")
  assert data.skipped == {"truncated": 1} and data.lengths[0] == 17


def test_batches_are_a_pure_function_of_the_step(corpus):
  examples, tok = corpus
  data = tokenize_examples(examples, tok, seq_len=96)
  a, b = BatchSchedule(data, 12, accum_steps=3, seed=1), BatchSchedule(data, 12, accum_steps=3, seed=1)
  for step in (0, 5, 17, 5):
    for k, v in a.batch(step).items():
      np.testing.assert_array_equal(v, b.batch(step)[k])
  assert a.batch(0)["inputs"].shape == (3, 4, 96)
  seen = np.concatenate([a.indices(s) for s in range(len(data) // 4)])  # one epoch in batches of 12 (64 % 12)
  assert len(set(seen[:60].tolist())) == 60


def test_no_supervised_token_is_an_error(corpus):
  examples, tok = corpus
  data = tokenize_examples(examples[:4], tok, seq_len=96)
  data.supervised[:] = False
  with pytest.raises(ValueError, match="no supervised token"):
    BatchSchedule(data, 2)


def test_invalid_options(corpus):
  examples, tok = corpus
  with pytest.raises(ValueError, match="loss_on"):
    tokenize_examples(examples, tok, 96, loss_on="prompt")
  with pytest.raises(ValueError, match="truncation"):
    tokenize_examples(examples, tok, 96, truncation="wrap")
