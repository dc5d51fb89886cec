"""Tests of the byte-level BPE tokenizer (rankjax.data.bpe) and the run tokenizer resolver (rankjax.data.tokenizer)."""

import random

import pytest

from rankjax.data import bpe, synthetic, tokenizer
from rankjax.data.hf_tokenizer import HFTokenizer, load_hf_tokenizer

VOCAB_SIZE = 512


@pytest.fixture(scope="module")
def corpus():
  splits = synthetic.make_splits(0, 1200, 600, 200)
  return [e.prompt + e.response for examples in splits.values() for e in examples]


@pytest.fixture(scope="module")
def tok(corpus):
  return bpe.train_bpe(corpus, VOCAB_SIZE).tokenizer


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
  assert (bpe.PAD_ID, bpe.BOS_ID, bpe.EOS_ID) == (0, 1, 2)
  assert tok.token_to_id("<pad>") == bpe.PAD_ID
  assert tok.token_to_id("<bos>") == bpe.BOS_ID
  assert tok.token_to_id("<eos>") == bpe.EOS_ID
  assert tok.id_to_token(2) == "<eos>"


def test_encode_adds_no_special_tokens(tok):
  ids = tok.encode("Question: 1 + 2?").ids
  assert not {bpe.PAD_ID, bpe.BOS_ID, bpe.EOS_ID} & set(ids)


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
  assert bpe.train_bpe(corpus, VOCAB_SIZE).tokenizer.to_str() == tok.to_str()
  assert bpe.train_bpe(iter(corpus), VOCAB_SIZE).tokenizer.to_str() == tok.to_str()


def test_save_load_round_trip_as_hf_tokenizer_directory(corpus, tmp_path):
  directory = tmp_path / "sub"
  trained = bpe.train_bpe(corpus, VOCAB_SIZE, directory)
  assert isinstance(trained, HFTokenizer)
  assert (directory / "tokenizer.json").is_file() and (directory / "tokenizer_config.json").is_file()
  for loaded in (load_hf_tokenizer(directory), tokenizer.load_tokenizer(str(directory)),
                 tokenizer.load_tokenizer(str(directory / "tokenizer.json"))):
    assert loaded.tokenizer.to_str() == trained.tokenizer.to_str()
    assert (loaded.bos_id, loaded.eos_id, loaded.pad_id) == (bpe.BOS_ID, bpe.EOS_ID, bpe.PAD_ID)
    text = corpus[3] + " 😀 ünï"
    assert loaded.encode(text) == trained.encode(text)
    assert loaded.decode(loaded.encode(text)) == text


def test_bare_tokenizer_json_is_read_as_rankjax_bpe(corpus, tmp_path):
  raw = bpe.train_bpe(corpus, VOCAB_SIZE).tokenizer
  raw.save(str(tmp_path / "tokenizer.json"))  # no tokenizer_config.json beside it
  loaded = tokenizer.load_tokenizer(str(tmp_path / "tokenizer.json"))
  assert (loaded.bos_id, loaded.eos_id, loaded.pad_id) == (bpe.BOS_ID, bpe.EOS_ID, bpe.PAD_ID)


def test_load_missing_file(tmp_path):
  missing = tmp_path / "nope" / "tokenizer.json"
  with pytest.raises(FileNotFoundError, match="nope"):
    tokenizer.load_tokenizer(str(missing))


def test_resolver_trains_once_then_reuses_the_workdir_tokenizer(corpus, tmp_path):
  first = tokenizer.resolve_tokenizer("", "", str(tmp_path), VOCAB_SIZE, iter(corpus))
  again = tokenizer.resolve_tokenizer("", "", str(tmp_path), VOCAB_SIZE, texts=None)  # no texts needed now
  assert again.tokenizer.to_str() == first.tokenizer.to_str()


def test_resolver_refuses_a_tokenizer_larger_than_the_model_vocabulary(corpus, tmp_path):
  bpe.train_bpe(corpus, VOCAB_SIZE, tmp_path)
  with pytest.raises(ValueError, match="vocab_size is 300"):
    tokenizer.resolve_tokenizer(str(tmp_path), "", str(tmp_path / "w"), 300)


def test_resolver_without_any_tokenizer_names_the_fields(tmp_path):
  with pytest.raises(ValueError, match="tokenizer_path"):
    tokenizer.resolve_tokenizer("", "", str(tmp_path), VOCAB_SIZE, texts=None)


def test_vocab_too_small(corpus):
  with pytest.raises(ValueError, match="vocab_size"):
    bpe.train_bpe(corpus, 100)
