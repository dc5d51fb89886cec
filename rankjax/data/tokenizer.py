"""The one place that decides a run's tokenizer (always an `HFTokenizer`)."""

from __future__ import annotations

import os
from collections.abc import Iterable

import tokenizers

from rankjax import models

from rankjax.data import bpe
from rankjax.data.gguf_tokenizer import load_gguf_tokenizer
from rankjax.data.hf_tokenizer import TOKENIZER_CONFIG_FILE, TOKENIZER_FILE, HFTokenizer, load_hf_tokenizer
from rankjax.models.errors import ConfigError, DataError, DataFileNotFoundError


def load_tokenizer(path: str) -> HFTokenizer:
  """Returns the tokenizer at `path`: an HF checkpoint / tokenizer directory, a tokenizer.json file, or a GGUF file
  (the tokenizer in its metadata).

  A tokenizer.json with no tokenizer_config.json beside it is taken to be a rankjax BPE (<bos>, <eos>, <pad>).
  FileNotFoundError naming the path when there is no tokenizer there.
  """
  path = os.path.expanduser(path)
  if models.is_gguf(path):
    return load_gguf_tokenizer(path)
  folder = path if os.path.isdir(path) else os.path.dirname(path)
  if os.path.isdir(path) or os.path.isfile(os.path.join(folder, TOKENIZER_CONFIG_FILE)):
    return load_hf_tokenizer(folder)
  if not os.path.isfile(path):
    raise DataFileNotFoundError(f"data.tokenizer_path: no tokenizer at {path} (expected a directory holding "
                            f"{TOKENIZER_FILE} or a {TOKENIZER_FILE} file)")
  return bpe.wrap(tokenizers.Tokenizer.from_file(path), folder)


def resolve_tokenizer(tokenizer_path: str, hf_dir: str, workdir: str, vocab_size: int,
                      texts: Iterable[str] | None = None) -> HFTokenizer:
  """Returns the run's tokenizer, checked to fit a model of `vocab_size` token ids:

  `tokenizer_path` (data.tokenizer_path) if set, else the HF checkpoint's (`hf_dir`, from init_from), else
  WORKDIR's own (tokenizer.json), else a BPE of `vocab_size` trained on `texts` and saved to WORKDIR.
  """
  if tokenizer_path or hf_dir:
    tokenizer = load_tokenizer(tokenizer_path or hf_dir)
  elif os.path.isfile(os.path.join(workdir, TOKENIZER_FILE)):
    tokenizer = load_tokenizer(os.path.join(workdir, TOKENIZER_FILE))
  elif texts is None:
    raise ConfigError("data: no tokenizer (set data.tokenizer_path, or init_from a Hugging Face checkpoint)")
  else:
    tokenizer = bpe.train_bpe(texts, vocab_size, workdir)
  if tokenizer.vocab_size > vocab_size:
    raise DataError(f"tokenizer {tokenizer.path or ''} has {tokenizer.vocab_size} tokens but the model's vocab_size "
                     f"is {vocab_size}: targets would fall outside the vocabulary")
  return tokenizer
