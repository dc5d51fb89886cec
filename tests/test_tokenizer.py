"""Tests of the byte-level BPE tokenizer."""

import random

import pytest

from rankjax.data import synthetic, tokenizer

VOCAB_SIZE = 512


@pytest.fixture(scope="module")
def corpus():
  splits = synthetic.make_splits(0, 1200, 600, 200)
  return [e.prompt + e.response for examples in splits.values() for e in examples]


@pytest.fixture(scope="module")
def tok(corpus):
  return tokenizer.train_bpe(corpus, VOCAB_SIZE)


def random_unicode(rng: random.Random, length: int) -> str:
  """Returns a string of random code points (no surrogates), incl. whitespace, emoji and CJK."""
  pools = [(0x20, 0x7E), (0x00, 0x1F), (0xA0, 0x24F), (0x4E00, 0x9FFF), (0x1F300, 0x1FAFF), (0xE000, 0xF8FF)]
  chars = []
  for _ in range(length):
    low, high = rng.choice(pools)
    chars.append(chr(rng.randint(low, high)))
  return "".join(chars)


def test_vocab_size_and_special_ids(tok):
  assert tok.get_vocab_size() == VOCAB_SIZE
  assert (tokenizer.PAD_ID, tokenizer.BOS_ID, tokenizer.EOS_ID) == (0, 1, 2)
  assert tok.token_to_id("<pad>") == tokenizer.PAD_ID
  assert tok.token_to_id("<bos>") == tokenizer.BOS_ID
  assert tok.token_to_id("<eos>") == tokenizer.EOS_ID
  assert tok.id_to_token(2) == "<eos>"


def test_encode_adds_no_special_tokens(tok):
  ids = tok.encode("Question: 1 + 2?").ids
  assert not {tokenizer.PAD_ID, tokenizer.BOS_ID, tokenizer.EOS_ID} & set(ids)


def test_round_trip_corpus(tok, corpus):
  for text in corpus[:500]:
    assert tok.decode(tok.encode(text).ids) == text


def test_round_trip_random_unicode(tok):
  rng = random.Random(0)
  for length in [0, 1, 2, 5, 17, 64, 200] * 20:
    text = random_unicode(rng, length)
    assert tok.decode(tok.encode(text).ids) == text


def test_round_trip_edge_whitespace(tok):
  for text in ["", " ", "  leading", "trailing  ", "\n\n#### 12\n", "\t tab", "a\r\nb", "éè ü 中文 😀"]:
    assert tok.decode(tok.encode(text).ids) == text


def test_digits_are_single_tokens(tok):
  text = "Answer: 123 + 4567 = 4690.\n#### 4690 and x99y"
  for token in tok.encode(text).tokens:
    if any(ch.isdigit() for ch in token):
      assert len(token) == 1, token
  assert [t for t in tok.encode("2025").tokens] == ["2", "0", "2", "5"]


def test_bpe_learns_merges(tok):
  # Frequent corpus words compress well below one token per character.
  text = "Problem: How many apples does Ava have now?"
  assert len(tok.encode(text).ids) < len(text) // 2


def test_deterministic(corpus, tok):
  assert tokenizer.train_bpe(corpus, VOCAB_SIZE).to_str() == tok.to_str()
  assert tokenizer.train_bpe(iter(corpus), VOCAB_SIZE).to_str() == tok.to_str()


def test_save_load_round_trip(corpus, tmp_path):
  path = tmp_path / "sub" / "tokenizer.json"
  trained = tokenizer.train_bpe(corpus, VOCAB_SIZE, path=str(path))
  assert path.is_file()
  loaded = tokenizer.load_tokenizer(path)
  assert loaded.to_str() == trained.to_str()
  text = corpus[3] + " 😀 ünï"
  assert loaded.encode(text).ids == trained.encode(text).ids
  assert loaded.decode(loaded.encode(text).ids) == text
  assert loaded.token_to_id("<eos>") == tokenizer.EOS_ID


def test_load_missing_file(tmp_path):
  missing = tmp_path / "nope" / "tokenizer.json"
  with pytest.raises(FileNotFoundError, match="nope"):
    tokenizer.load_tokenizer(missing)


def test_vocab_too_small(corpus):
  with pytest.raises(ValueError, match="vocab_size"):
    tokenizer.train_bpe(corpus, 100)
