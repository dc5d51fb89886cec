"""Where training records come from, as named by `config.data`: one random-access sequence of canonical
record dicts (see `rankjax.data.formatting`) per source and split, whatever the source.

- "synthetic": the generated arithmetic corpus (`rankjax.data.synthetic`), held in memory; configured by
  `data.synthetic.*`.
- "gsm8k", "numina_math_cot", "jsonl": TFDS builders over local files (`data.files.*`); "jsonl" maps its
  fields with `data.jsonl.*`.

Every source goes through the same formatting and Grain pipeline. A field of a group that does not apply to
the chosen source is an error (`validate_config`), so no setting is silently ignored.
"""

from __future__ import annotations

import functools
import os

import ml_collections
from ml_collections import config_dict

from rankjax.data import synthetic
from rankjax.models.errors import ConfigError

FILE_SOURCES = {"gsm8k": "gsm8k_local", "numina_math_cot": "numina_math_cot", "jsonl": "sft_jsonl"}
SOURCES = ("synthetic",) + tuple(FILE_SOURCES)
SYNTHETIC_SPLITS = ("pretrain", "finetune", "eval")
# Per-source defaults of the fields left unset (None) in the config.
SYNTHETIC_DEFAULTS = {"packing": False,  # one example per row: the demo's numbers stay comparable across versions
                      "plain_template": "{prompt}"}  # the synthetic prompts carry their own template
FILE_DEFAULTS = {"packing": True, "plain_template": "Question: {prompt}\nAnswer: "}


def default_config() -> ml_collections.ConfigDict:
  """Returns the data config: the synthetic arithmetic corpus, fine-tuning split, 128-token rows."""
  c = ml_collections.ConfigDict()
  c.source = "synthetic"  # one of SOURCES
  c.split = "finetune"  # which split this run trains on (synthetic: pretrain / finetune / eval; files: TFDS syntax)
  c.seq_len = 128  # tokens per row fed to the model
  c.batch_size = 32  # sequences per optimizer step (global batch)
  c.loss_on = "response"  # "response" (SFT) or "all" (pretraining: every target after the first token)
  c.truncation = "drop"  # over-long examples: "drop" or "truncate" (cut the response)
  c.strict = False  # raise on the first bad record instead of counting and skipping it
  # "": the HF checkpoint's tokenizer when init_from is one, else WORKDIR/tokenizer.json (a BPE of
  # model.vocab_size trained on the training records if absent); or a tokenizer directory / tokenizer.json.
  c.tokenizer_path = ""
  c.shuffle_seed = -1  # order of the training examples; -1: the run's `seed` (so a new seed is a new order)
  c.prompt_format = "plain"  # "plain": BOS + plain_template + response + EOS; "chat": the tokenizer's chat template
  c.plain_template = config_dict.placeholder(str)  # None: "{prompt}" (synthetic), "Question: {prompt}\nAnswer: " (files)
  c.system_prompt = ""  # "chat": system turn added to records without one
  c.packing = config_dict.placeholder(bool)  # several examples per row; None: off for synthetic, on for files
  c.packing_bins = 8
  c.prefetch = 2  # batches prepared ahead in a background thread
  c.num_epochs = 0  # 0: repeat the data forever
  c.synthetic = ml_collections.ConfigDict({  # source="synthetic": the generator
      "seed": 0, "num_pretrain": 20000, "num_finetune": 4000, "num_eval": 200,
      # Template of the pretraining split: "finetune" (the default) lets the base model learn the
      # answer format, as real base math models know it; "pretrain" makes the format new at SFT.
      "pretrain_template": "finetune",
      # Share of the pretraining split drawn from the fine-tuning families (never eval questions): > 0 makes
      # a base model that already solves part of the fine-tuning task, the regime of the paper's strong bases.
      "pretrain_mix": 0.0})
  c.files = ml_collections.ConfigDict({  # file sources (TFDS builders prepared from local files)
      "manual_dir": "",  # directory holding the source files, e.g. ../shared/data/gsm8k
      "tfds_data_dir": ""})  # where prepared datasets live; "": TFDS's default (~/tensorflow_datasets)
  # Training data with noise: after each response word, with probability `rate`, a random word of the corpus's
  # responses is inserted (rankjax.data.response_noise); 0 = clean. Evaluation records are never changed.
  c.response_noise = ml_collections.ConfigDict({"rate": 0.0, "seed": 0})
  c.jsonl = ml_collections.ConfigDict({  # source="jsonl": field names of the prompt / response ...
      "prompt_field": "prompt", "response_field": "response",
      "messages_field": ""})  # ... or of a chat `messages` list (then prompt/response fields are unused)
  return c


def _groups_for(source: str) -> set[str]:
  return {"synthetic"} if source == "synthetic" else ({"files", "jsonl"} if source == "jsonl" else {"files"})


def validate_config(config) -> None:
  """Raises ConfigError naming the field: an unknown source or split, or a set field of a group
  (data.synthetic / data.files / data.jsonl) that the chosen source does not read."""
  if config.source not in SOURCES:
    raise ConfigError(f"config.data.source={config.source!r} is not one of {SOURCES}")
  if config.source == "synthetic" and config.split not in SYNTHETIC_SPLITS:
    raise ConfigError(f"config.data.split={config.split!r} is not a split of the synthetic corpus {SYNTHETIC_SPLITS}")
  if config.source != "synthetic" and not config.files.manual_dir:
    raise ConfigError(f"config.data.source={config.source!r} needs config.data.files.manual_dir (the directory of "
                      "its files)")
  for field, allowed in (("truncation", ("drop", "truncate")), ("loss_on", ("response", "all")),
                         ("prompt_format", ("plain", "chat"))):
    if config[field] not in allowed:
      raise ConfigError(f"config.data.{field}={config[field]!r} is not one of {allowed}")
  for field, least in (("seq_len", 2), ("batch_size", 1), ("packing_bins", 1), ("prefetch", 0), ("num_epochs", 0)):
    if int(config[field]) < least:
      raise ConfigError(f"config.data.{field}={config[field]} must be >= {least}")
  if not 0.0 <= float(config.response_noise.rate) <= 0.5:
    raise ConfigError(f"config.data.response_noise.rate={config.response_noise.rate} must lie in [0, 0.5]")
  defaults, used = default_config(), _groups_for(config.source)
  stray = [(f"config.data.{group}.{field}", value, defaults[group][field])
           for group in ("synthetic", "files", "jsonl") if group not in used
           for field, value in config[group].items() if value != defaults[group][field]]
  if stray:
    fields = ", ".join(f"{name}={value!r}" for name, value, _ in stray)
    resets = " ".join(f"--{name}={default}" for name, _, default in stray)
    start = ("configs/synthetic_sft.py" if config.source == "synthetic" else
             "a config written for file sources, e.g. configs/gsm8k_tiny.py (it sets data.files.manual_dir)")
    raise ConfigError(f"{fields} {'does' if len(stray) == 1 else 'do'} not apply to config.data.source="
                      f"{config.source!r}, which reads only {', '.join(sorted('data.' + g for g in used))}: the config "
                      f"file sets {'it' if len(stray) == 1 else 'them'} for another source. Start from {start}, "
                      f"or reset {'it' if len(stray) == 1 else 'them'} with {resets}")


def resolved(config, field: str):
  """Returns data field `field` (packing, plain_template), or the source's default when it is unset."""
  value = config[field]
  if value is not None:
    return value
  return (SYNTHETIC_DEFAULTS if config.source == "synthetic" else FILE_DEFAULTS)[field]


@functools.lru_cache(maxsize=4)
def _synthetic_splits(seed: int, n_pretrain: int, n_finetune: int, n_eval: int, template: str, mix: float) -> dict:
  return synthetic.make_splits(seed, n_pretrain, n_finetune, n_eval, template, mix)


def synthetic_splits(config) -> dict:
  """{"pretrain", "finetune", "eval"}: lists of synthetic.Example of the config's generator."""
  s = config.synthetic
  return _synthetic_splits(s.seed, s.num_pretrain, s.num_finetune, s.num_eval, s.pretrain_template,
                           float(s.pretrain_mix))


def load_records(config, split: str | None = None):
  """Returns the canonical records (a random-access sequence of dicts) of `split` (default: data.split)."""
  validate_config(config)
  split = split or config.split
  if config.source == "synthetic":
    splits = synthetic_splits(config)
    if split not in splits:
      raise ConfigError(f"config.data.split={split!r} is not a split of the synthetic corpus {SYNTHETIC_SPLITS}")
    return synthetic.as_records(splits[split], split)
  from rankjax.data import tfds_builders  # noqa: PLC0415 (TFDS is imported only for file sources)
  kwargs = dict(config.jsonl) if config.source == "jsonl" else {}
  return tfds_builders.load_source(FILE_SOURCES[config.source], split,
                                   os.path.abspath(os.path.expanduser(config.files.manual_dir)),
                                   os.path.expanduser(config.files.tfds_data_dir) or None, **kwargs)


# A new BPE learns from at most this many characters of each example: the trainer's time grows with the square of
# a whitespace-free run's length (a 10 MB record would take hours), and merges are learnt well from the start.
MAX_TOKENIZER_TEXT_CHARS = 16384


def tokenizer_texts(config, records=None):
  """Yields the texts a new BPE is trained on: every training example, never an evaluation one (synthetic:
  the pretraining and fine-tuning splits, so that both stages of the demo share one tokenizer; files: the
  run's records), each cut to its first MAX_TOKENIZER_TEXT_CHARS characters."""
  if config.source == "synthetic":
    splits = synthetic_splits(config)
    for name in ("pretrain", "finetune"):
      for ex in splits[name]:
        yield (ex.prompt + ex.response)[:MAX_TOKENIZER_TEXT_CHARS]
    return
  records = load_records(config) if records is None else records
  for i in range(len(records)):
    prompt = str(records[i]["prompt"])[:MAX_TOKENIZER_TEXT_CHARS]
    yield prompt + str(records[i]["response"])[:MAX_TOKENIZER_TEXT_CHARS - len(prompt)]
