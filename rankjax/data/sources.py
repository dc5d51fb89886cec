"""Where training examples and the tokenizer come from, as named by `config.data`."""

from __future__ import annotations

import os

import ml_collections

from rankjax.data import synthetic
from rankjax.data.tokenizer import load_tokenizer, train_bpe

SOURCES = ("synthetic",)
SPLITS = ("pretrain", "finetune", "eval")


def default_config() -> ml_collections.ConfigDict:
  """Returns the data config: the synthetic arithmetic corpus, fine-tuning split, 128-token rows."""
  c = ml_collections.ConfigDict()
  c.source = "synthetic"
  c.split = "finetune"  # which split this run trains on
  c.seed = 0  # corpus generation
  c.num_pretrain = 20000
  c.num_finetune = 4000
  c.num_eval = 200
  # Template of the pretraining split: "finetune" (the default) lets the base model learn the
  # answer format, as real base math models know it; "pretrain" makes the format new at SFT.
  c.pretrain_template = "finetune"
  c.seq_len = 128  # tokens per row fed to the model
  c.batch_size = 32  # sequences per optimizer step (global batch)
  c.loss_on = "response"  # "response" (SFT) or "all" (pretraining)
  c.truncation = "drop"
  c.strict = False
  c.tokenizer_path = ""  # "": WORKDIR/tokenizer.json, trained on the corpus if absent
  c.shuffle_seed = 0
  return c


def load_splits(config) -> dict:
  """Returns {"pretrain", "finetune", "eval"} lists of examples with .prompt/.response/.answer."""
  if config.source not in SOURCES:
    raise ValueError(f"data config: source={config.source!r} is not one of {SOURCES}")
  return synthetic.make_splits(config.seed, config.num_pretrain, config.num_finetune, config.num_eval,
                               config.pretrain_template)


def corpus_texts(splits: dict):
  """Texts a tokenizer is trained on: every training example (never the eval split)."""
  for name in ("pretrain", "finetune"):
    for ex in splits[name]:
      yield ex.prompt + ex.response


def get_tokenizer(config, workdir: str, splits: dict, vocab_size: int):
  """Loads `config.tokenizer_path`, else WORKDIR/tokenizer.json, training it on the corpus if absent."""
  if config.tokenizer_path:
    return load_tokenizer(config.tokenizer_path)
  path = os.path.join(workdir, "tokenizer.json")
  if os.path.exists(path):
    return load_tokenizer(path)
  return train_bpe(corpus_texts(splits), vocab_size, path)
