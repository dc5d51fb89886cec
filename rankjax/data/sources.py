"""Where training examples and the tokenizer come from, as named by `config.data`."""

from __future__ import annotations

import os

import ml_collections

from rankjax.data import synthetic
from rankjax.data.tokenizer import load_tokenizer, train_bpe

# "synthetic": the generated arithmetic corpus (in memory, batched by BatchSchedule). The others
# are TFDS builders over local files (config.data.manual_dir), fed through the Grain pipeline.
FILE_SOURCES = {"gsm8k": "gsm8k_local", "numina_math_cot": "numina_math_cot", "jsonl": "sft_jsonl"}
SOURCES = ("synthetic",) + tuple(FILE_SOURCES)
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
  # "": the HF checkpoint's tokenizer when init_from is one, else WORKDIR/tokenizer.json (a BPE
  # trained on the training split if absent); or a tokenizer.json / HF checkpoint directory.
  c.tokenizer_path = ""
  c.shuffle_seed = 0
  # File sources (TFDS builders prepared from local files, read by the Grain pipeline):
  c.manual_dir = ""  # directory holding the source files, e.g. ../shared/data/gsm8k
  c.tfds_data_dir = ""  # where prepared datasets live; "": TFDS's default (~/tensorflow_datasets)
  c.prompt_field = "prompt"  # source="jsonl": field names of the prompt / response ...
  c.response_field = "response"
  c.messages_field = ""  # ... or of a chat `messages` list (then prompt/response fields are unused)
  c.prompt_format = "plain"  # "plain": BOS + plain_template + response + EOS; "chat": the tokenizer's chat template
  c.plain_template = "Question: {prompt}\nAnswer: "
  c.system_prompt = ""  # "chat": system turn added to records without one
  c.packing = True  # pack several examples per row (segment_ids keep them apart)
  c.packing_bins = 8
  c.prefetch = 2  # batches prepared ahead in a background thread
  c.num_epochs = 0  # 0: repeat the data forever
  return c


def load_records(config, split: str | None = None):
  """The canonical records (random access; see rankjax.data.formatting) of a file source's split."""
  from rankjax.data import tfds_builders  # noqa: PLC0415 (TFDS is imported only for file sources)
  if config.source not in FILE_SOURCES:
    raise ValueError(f"data config: source={config.source!r} is not a file source {tuple(FILE_SOURCES)}")
  if not config.manual_dir:
    raise ValueError(f"data config: source={config.source!r} needs data.manual_dir (the directory of its files)")
  kwargs = {}
  if config.source == "jsonl":
    kwargs = dict(prompt_field=config.prompt_field, response_field=config.response_field,
                  messages_field=config.messages_field)
  return tfds_builders.load_source(FILE_SOURCES[config.source], split or config.split,
                                   os.path.abspath(os.path.expanduser(config.manual_dir)),
                                   os.path.expanduser(config.tfds_data_dir) or None, **kwargs)


def load_splits(config) -> dict:
  """Returns {"pretrain", "finetune", "eval"} lists of examples with .prompt/.response/.answer."""
  if config.source not in SOURCES:
    raise ValueError(f"data config: source={config.source!r} is not one of {SOURCES}")
  if config.source != "synthetic":
    raise ValueError(f"data config: source={config.source!r} is read by load_records, not load_splits")
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
