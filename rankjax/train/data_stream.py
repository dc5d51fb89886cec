"""The training loop's view of the data: host-local batches [A, b / processes, T] per step, a
checkpointable iterator (file sources) and per-reason record counts."""

from __future__ import annotations

import os

import jax

from rankjax.data import formatting, pipeline, sources
from rankjax.data.sft_batches import BatchSchedule, tokenize_examples
from rankjax.data.tokenizer import load_tokenizer, train_bpe
from rankjax.models.tokenizer import HFTokenizer, load_hf_tokenizer

BPE_SPECIALS = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"}


def _check_vocab(tokenizer: HFTokenizer, vocab_size: int) -> None:
  if tokenizer.vocab_size > vocab_size:
    raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is {vocab_size}: "
                     "targets would fall outside the vocabulary")


def resolve_tokenizer(data_config, workdir: str, hf_checkpoint: str, vocab_size: int, texts=None) -> HFTokenizer:
  """The run's tokenizer: data.tokenizer_path (an HF checkpoint directory or a tokenizer.json), else the
  HF checkpoint's (`hf_checkpoint`), else WORKDIR/tokenizer.json, trained on `texts` if absent."""
  path = data_config.tokenizer_path or hf_checkpoint
  if path:
    if os.path.isdir(path):
      return load_hf_tokenizer(path)
    folder = os.path.dirname(path)
    if os.path.isfile(os.path.join(folder, "tokenizer_config.json")):
      return load_hf_tokenizer(folder)
    return HFTokenizer(load_tokenizer(path), special_tokens=BPE_SPECIALS, path=folder)
  own = os.path.join(workdir, "tokenizer.json")
  if os.path.exists(own):
    return HFTokenizer(load_tokenizer(own), special_tokens=BPE_SPECIALS, path=workdir)
  if texts is None:
    raise ValueError("data: no tokenizer (set data.tokenizer_path or init_from an HF checkpoint)")
  return HFTokenizer(train_bpe(texts, vocab_size, own), special_tokens=BPE_SPECIALS, path=workdir)


class ScheduleStream:
  """The synthetic corpus: batches are a pure function of the step (no iterator state)."""

  iterator = None

  def __init__(self, schedule: BatchSchedule, skipped: dict):
    self.schedule, self.skipped = schedule, skipped

  def next_batch(self, step: int) -> dict:
    batch = self.schedule.batch(step)
    n, i = jax.process_count(), jax.process_index()
    rows = batch["inputs"].shape[1]
    if n > 1 and rows % n == 0:  # each host feeds its slice of the global batch
      batch = {k: v[:, i * rows // n:(i + 1) * rows // n] for k, v in batch.items()}
    return batch

  def record_counts(self) -> dict:
    return dict(self.skipped)

  def close(self) -> None:
    pass


class PipelineStream:
  """A file source through the Grain pipeline; `iterator` is what checkpoints save."""

  def __init__(self, pipe: pipeline.SFTPipeline, accum_steps: int):
    self.pipe, self.accum_steps = pipe, accum_steps

  @property
  def iterator(self):
    return self.pipe.iterator

  def next_batch(self, step: int) -> dict:
    del step  # sequential; the iterator state says where we are
    return self.pipe.next_batch(self.accum_steps)

  def record_counts(self) -> dict:
    return self.pipe.record_counts()

  def close(self) -> None:
    self.pipe.close()


def pipeline_options(config) -> pipeline.PipelineOptions:
  d = config.data
  n = jax.process_count()
  if d.batch_size % n:
    raise ValueError(f"config.data.batch_size={d.batch_size} is not divisible by the {n} processes")
  return pipeline.PipelineOptions(
      seq_len=d.seq_len, rows_per_host=d.batch_size // n, shuffle_seed=d.shuffle_seed, truncation=d.truncation,
      loss_on=d.loss_on, strict=d.strict, packing=d.packing, packing_bins=d.packing_bins, prefetch=d.prefetch,
      num_epochs=d.num_epochs, process_index=jax.process_index(), process_count=n)


def make_file_pipeline(config, workdir: str, vocab_size: int, hf_checkpoint: str = ""):
  """(tokenizer, SFTPipeline) of a file source; raises before training if no record is usable."""
  records = sources.load_records(config.data)
  texts = (records[i]["prompt"] + records[i]["response"] for i in range(len(records)))
  tokenizer = resolve_tokenizer(config.data, workdir, hf_checkpoint, vocab_size, texts)
  _check_vocab(tokenizer, vocab_size)
  formatter = formatting.Formatter(tokenizer, config.data.prompt_format, config.data.plain_template,
                                   config.data.system_prompt)
  options = pipeline_options(config)
  pipeline.check_supervised(records, formatter, options)
  return tokenizer, pipeline.SFTPipeline(records, formatter, options)


def make_stream(config, workdir: str, vocab_size: int, hf_checkpoint: str = ""):
  """The run's data stream (ScheduleStream for the synthetic corpus, else PipelineStream)."""
  if config.data.source == "synthetic":
    splits = sources.load_splits(config.data)
    if config.data.split not in splits:
      raise ValueError(f"config.data.split={config.data.split!r} is not one of {sorted(splits)}")
    tokenizer = sources.get_tokenizer(config.data, workdir, splits, vocab_size)
    if tokenizer.get_vocab_size() > vocab_size:
      raise ValueError(f"tokenizer has {tokenizer.get_vocab_size()} tokens but the model's vocab_size is "
                       f"{vocab_size}: targets would fall outside the vocabulary")
    data = tokenize_examples(splits[config.data.split], tokenizer, config.data.seq_len, config.data.loss_on,
                             config.data.truncation, config.data.strict)
    schedule = BatchSchedule(data, config.data.batch_size, config.grad_accum_steps, config.data.shuffle_seed)
    return ScheduleStream(schedule, data.skipped)
  _, pipe = make_file_pipeline(config, workdir, vocab_size, hf_checkpoint)
  return PipelineStream(pipe, config.grad_accum_steps)
