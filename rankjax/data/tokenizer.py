"""Small byte-level BPE tokenizer (HF `tokenizers`) for the synthetic arithmetic data.

Byte-level pre-tokenization and decoding make `decode(encode(x)) == x` for any text
(without the literal special-token strings), and every digit is its own token, so
numbers are spelled digit by digit. No normalizer and no post-processor: `encode`
adds no special tokens; callers add BOS_ID / EOS_ID / PAD_ID themselves.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterable

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
MIN_VOCAB_SIZE = len(SPECIAL_TOKENS) + 256  # specials plus every byte


def _empty_tokenizer() -> tokenizers.Tokenizer:
  """Returns an untrained BPE tokenizer with the digit-splitting byte-level pipeline."""
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.Sequence([
    pre_tokenizers.Digits(individual_digits=True),
    pre_tokenizers.ByteLevel(add_prefix_space=False),
  ])
  tok.decoder = decoders.ByteLevel()
  return tok


def train_bpe(texts: Iterable[str], vocab_size: int, path: str | os.PathLike | None = None) -> tokenizers.Tokenizer:
  """Trains and returns a byte-level BPE tokenizer on `texts`; saves tokenizer.json to `path` if given.

  Ids 0, 1, 2 are <pad>, <bos>, <eos>; all 256 bytes are in the vocabulary, so
  nothing is ever unknown. The same texts give the same tokenizer.
  """
  if vocab_size < MIN_VOCAB_SIZE:
    raise ValueError(f"vocab_size must be >= {MIN_VOCAB_SIZE} (3 specials + 256 bytes), got {vocab_size}")
  tok = _empty_tokenizer()
  trainer = trainers.BpeTrainer(
    vocab_size=vocab_size,
    min_frequency=2,
    special_tokens=list(SPECIAL_TOKENS),
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    show_progress=False,
  )
  tok.train_from_iterator(texts, trainer=trainer)
  for token, expected in zip(SPECIAL_TOKENS, (PAD_ID, BOS_ID, EOS_ID)):
    assert tok.token_to_id(token) == expected, (token, tok.token_to_id(token))
  if path is not None:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
  return tok


def load_tokenizer(path: str | os.PathLike) -> tokenizers.Tokenizer:
  """Returns the tokenizer saved at `path` (a tokenizer.json); FileNotFoundError if there is none."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"no tokenizer file at {path}; train one with train_bpe(texts, vocab_size, path)")
  return tokenizers.Tokenizer.from_file(str(path))
