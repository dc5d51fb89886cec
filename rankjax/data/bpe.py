"""Small byte-level BPE tokenizer (HF `tokenizers`) for the synthetic arithmetic data and tiny models.

Byte-level pre-tokenization and decoding make `decode(encode(x)) == x` for any text
(without the literal special-token strings), and every digit is its own token, so
numbers are spelled digit by digit. No normalizer and no post-processor: `encode`
adds no special tokens; the formatter adds BOS / EOS.

A trained tokenizer is saved as a Hugging Face tokenizer directory (tokenizer.json plus a
tokenizer_config.json naming <bos>, <eos>, <pad>), so it loads, like any checkpoint's, as an
`HFTokenizer` through `rankjax.data.hf_tokenizer.load_hf_tokenizer`.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Iterable

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from rankjax.data.hf_tokenizer import TOKENIZER_CONFIG_FILE, TOKENIZER_FILE, HFTokenizer

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
MIN_VOCAB_SIZE = len(SPECIAL_TOKENS) + 256  # specials plus every byte
NAMED_SPECIALS = {"pad_token": "<pad>", "bos_token": "<bos>", "eos_token": "<eos>"}


def _empty_tokenizer() -> tokenizers.Tokenizer:
  """Returns an untrained BPE tokenizer with the digit-splitting byte-level pipeline."""
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.Sequence([
    pre_tokenizers.Digits(individual_digits=True),
    pre_tokenizers.ByteLevel(add_prefix_space=False),
  ])
  tok.decoder = decoders.ByteLevel()
  return tok


def wrap(tokenizer: tokenizers.Tokenizer, path: str | os.PathLike | None = None) -> HFTokenizer:
  """Returns the BPE `tokenizer` as an HFTokenizer with its <bos>, <eos>, <pad> named."""
  return HFTokenizer(tokenizer, special_tokens=NAMED_SPECIALS, path=path)


def train_bpe(texts: Iterable[str], vocab_size: int, directory: str | os.PathLike | None = None) -> HFTokenizer:
  """Trains and returns a byte-level BPE tokenizer on `texts`; with `directory`, saves it there as
  tokenizer.json + tokenizer_config.json (loadable by `load_hf_tokenizer(directory)`).

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
  if directory is not None:
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # Written under temporary names and renamed, tokenizer.json last (its presence means "trained"): a kill
    # never leaves half a tokenizer, and hosts that train the same tokenizer at once never read a partial file.
    suffix = f".tmp{os.getpid()}"
    with open(directory / (TOKENIZER_CONFIG_FILE + suffix), "w", encoding="utf-8") as f:
      json.dump({**NAMED_SPECIALS, "add_bos_token": False}, f, indent=2)
    os.replace(directory / (TOKENIZER_CONFIG_FILE + suffix), directory / TOKENIZER_CONFIG_FILE)
    tok.save(str(directory / (TOKENIZER_FILE + suffix)))
    os.replace(directory / (TOKENIZER_FILE + suffix), directory / TOKENIZER_FILE)
  return wrap(tok, directory)
