"""A run's data from its config: the tokenizer, the formatter and the Grain pipeline of host-local batches.

Every source (the synthetic corpus and the file sources alike) takes this one path:
records (`sources.load_records`) -> `formatting.Formatter` -> `pipeline.SFTPipeline`.
"""

from __future__ import annotations

import contextlib
import os

import jax

from rankjax.data import formatting, pipeline, response_noise, sources
from rankjax.data.hf_tokenizer import HFTokenizer
from rankjax.data.bpe import TOKENIZER_CONFIG_FILE, TOKENIZER_FILE
from rankjax.data.tokenizer import resolve_tokenizer
from rankjax.models.errors import ConfigError


def run_tokenizer(config, workdir: str, vocab_size: int, pretrained: str = "", records=None) -> HFTokenizer:
  """Returns the run's tokenizer (see `resolve_tokenizer`); a new BPE is trained on the source's training
  texts (`sources.tokenizer_texts`) only when there is none yet."""
  texts = sources.tokenizer_texts(config.data, records)  # a generator: read only if a BPE is trained
  return resolve_tokenizer(config.data.tokenizer_path, pretrained, workdir, vocab_size, texts)


def make_formatter(data_config, tokenizer: HFTokenizer) -> formatting.Formatter:
  """Returns the formatter of `data_config` (prompt format, template, system prompt) over `tokenizer`."""
  return formatting.Formatter(tokenizer, data_config.prompt_format, sources.resolved(data_config, "plain_template"),
                              data_config.system_prompt)


def pipeline_options(config) -> pipeline.PipelineOptions:
  """The pipeline options of a run config: this host's share of data.batch_size, seq_len, packing, ..."""
  d = config.data
  n = jax.process_count()
  shuffle_seed = int(d.shuffle_seed) if int(d.shuffle_seed) >= 0 else int(config.seed)
  if d.batch_size % n:
    raise ConfigError(f"config.data.batch_size={d.batch_size} is not divisible by the {n} processes")
  return pipeline.PipelineOptions(
      seq_len=d.seq_len, rows_per_host=d.batch_size // n, shuffle_seed=shuffle_seed, truncation=d.truncation,
      loss_on=d.loss_on, strict=d.strict, packing=sources.resolved(d, "packing"), packing_bins=d.packing_bins,
      prefetch=d.prefetch, num_epochs=d.num_epochs, process_index=jax.process_index(), process_count=n)


def make_pipeline(config, workdir: str, vocab_size: int, pretrained: str = ""):
  """Returns (tokenizer, SFTPipeline) of a run config; raises before training if no record is usable."""
  records = sources.load_records(config.data)
  trained_here = not (config.data.tokenizer_path or pretrained or os.path.isfile(os.path.join(workdir, TOKENIZER_FILE)))
  tokenizer = run_tokenizer(config, workdir, vocab_size, pretrained, records)  # trained on the clean texts
  if float(config.data.response_noise.rate) > 0:
    records = response_noise.NoisyRecords(records, float(config.data.response_noise.rate),
                                          int(config.data.response_noise.seed))
  formatter = make_formatter(config.data, tokenizer)
  options = pipeline_options(config)
  try:
    pipeline.check_supervised(records, formatter, options)
  except ValueError:
    if trained_here:  # a tokenizer learnt from unusable records must not be reused by the fixed relaunch
      for name in (TOKENIZER_FILE, TOKENIZER_CONFIG_FILE):
        with contextlib.suppress(FileNotFoundError):
          os.remove(os.path.join(workdir, name))
    raise
  return tokenizer, pipeline.SFTPipeline(records, formatter, options)
