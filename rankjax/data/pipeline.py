"""The Grain SFT pipeline: shuffle, tokenize, mask, truncate, pack, shard per host, batch, prefetch.

    records (random access) -> this host's slice -> shuffle per epoch -> tokenize -> count and
    drop bad records -> first-fit packing into seq_len rows -> batch -> prefetch

Every element is a dict of int32/float32 numpy arrays [rows, seq_len]:
  inputs, targets   the token at t and the token it must predict (shifted *within* each
                    example, so no target ever crosses into the next packed example),
  loss_mask         1.0 on targets that are response tokens (or the end-of-turn after them),
  segment_ids       1, 2, ... per packed example, 0 on padding (attention never crosses them),
  positions         0.. per example (RoPE restarts in each).
The iterator is a `grain.DatasetIterator`: its state (JSON) is saved with the train state and
restoring it resumes with exactly the batches an uninterrupted run would see.
"""

from __future__ import annotations

import collections
import dataclasses

import grain
import numpy as np

from rankjax.data.formatting import Formatter, SkipExample, record_location
from rankjax.models.errors import DataError

TRUNCATION = ("drop", "truncate")
LOSS_ON = ("response", "all")
BATCH_KEYS = ("inputs", "targets", "loss_mask", "segment_ids", "positions")


@dataclasses.dataclass(frozen=True)
class PipelineOptions:
  seq_len: int  # tokens per row fed to the model
  rows_per_host: int  # rows per batch on this host
  shuffle_seed: int = 0
  truncation: str = "drop"  # over-long examples: "drop" or "truncate" (cut the response)
  loss_on: str = "response"  # "response" (SFT) or "all" (every target after the first token)
  strict: bool = False  # raise on the first bad record instead of counting it
  packing: bool = True  # several examples per row; False: one example per row, padded
  packing_bins: int = 8  # first-fit bins kept open (more: less padding, more reordering)
  prefetch: int = 2  # batches prepared ahead in a background thread; 0: none
  num_epochs: int = 0  # 0: repeat forever
  shuffle: bool = True  # False: records in source order (evaluation)
  drop_remainder: bool = True  # False: a last, smaller batch when the data end (num_epochs > 0)
  process_index: int = 0
  process_count: int = 1

  def __post_init__(self):
    if self.truncation not in TRUNCATION:
      raise DataError(f"data config: truncation={self.truncation!r} is not one of {TRUNCATION}")
    if self.loss_on not in LOSS_ON:
      raise DataError(f"data config: loss_on={self.loss_on!r} is not one of {LOSS_ON}")
    if self.seq_len <= 1 or self.rows_per_host <= 0:
      raise DataError(f"data config: seq_len={self.seq_len} and rows per host={self.rows_per_host} must be positive")
    if not 0 <= self.process_index < self.process_count:
      raise ValueError(f"data: process_index={self.process_index} is outside [0, {self.process_count})")


class TokenizeRecord(grain.transforms.Map):
  """record -> {"inputs", "targets", "loss_mask"} (1-D, length n - 1 for an n-token example), or
  {"skip": reason, "where": "file:index", "location": "file line n"} for a record that cannot be used.

  A record of more than `char_limit` characters (twice what seq_len + 1 tokens of the tokenizer's longest entry
  can cover) is never tokenized whole: it is too long ("drop"), or its response is cut to that many characters
  before tokenizing ("truncate"), so a huge record (megabytes) costs no more than a long one.
  """

  def __init__(self, formatter: Formatter, options: PipelineOptions):
    self.formatter, self.options = formatter, options
    tokenizer = getattr(formatter, "tokenizer", None)  # None: a plain callable record -> (prompt ids, response ids)
    self.char_limit = 2 * (options.seq_len + 1) * tokenizer.max_token_chars if tokenizer is not None else None

  def map(self, record: dict) -> dict:
    where = f"{record.get('source_file', '?')}:{record.get('source_index', '?')}"
    try:
      if self.char_limit is None:
        prompt, response = self.formatter(record)
      else:
        prompt, response = self.formatter(record, char_limit=self.char_limit,
                                          cut=self.options.truncation == "truncate")
    except SkipExample as e:
      return {"skip": e.reason, "where": where, "location": record_location(record)}
    ids = prompt + response
    supervised = [self.options.loss_on == "all"] * len(prompt) + [True] * len(response)
    width = self.options.seq_len + 1  # n tokens give n - 1 (input, target) pairs
    truncated = False
    if len(ids) > width:
      if self.options.truncation == "drop" or len(prompt) >= width:
        return {"skip": "too_long", "where": where, "location": record_location(record)}
      ids, supervised, truncated = ids[:width], supervised[:width], True
    out = {"inputs": np.asarray(ids[:-1], np.int32), "targets": np.asarray(ids[1:], np.int32),
           "loss_mask": np.asarray(supervised[1:], np.float32)}
    if not out["loss_mask"].any():
      return {"skip": "no_supervised_token", "where": where, "location": record_location(record)}
    if truncated:
      out["truncated"] = True
    return out


class _CountingIterator(grain.DatasetIterator):
  """Drops skipped records, counting them per reason. The stream holds the records epoch after epoch, so each
  record is counted once, during the first epoch (`records_per_epoch` elements), and later epochs only add to
  `records_read`; both are part of the iterator state."""

  def __init__(self, parent, strict: bool, records_per_epoch: int):
    super().__init__(parent)
    self._strict = strict
    self._per_epoch = records_per_epoch
    self.counts = collections.Counter()
    self.records_read = 0

  def __next__(self):
    while True:
      element = next(self._parent)
      first_epoch = self.records_read < self._per_epoch
      self.records_read += 1
      if "skip" in element:
        if self._strict:
          raise DataError(f"data: record {element['where']} cannot be used: {element['skip']} "
                          f"({element['location']}; data.strict=True; set it False to count and skip such records)")
        if first_epoch:
          self.counts[element["skip"]] += 1
        continue
      truncated = element.pop("truncated", False)
      if first_epoch:
        self.counts["used"] += 1
        if truncated:
          self.counts["truncated"] += 1
      return element

  def get_state(self):
    return {"parent": self._parent.get_state(), "record_counts": dict(self.counts),
            "records_read": self.records_read}

  def set_state(self, state):
    self._parent.set_state(state["parent"])
    self.counts = collections.Counter(state["record_counts"])
    # A state saved before records_read existed counted every read: its counts are the reads.
    self.records_read = int(state.get("records_read", sum(n for k, n in self.counts.items() if k != "truncated")))


class CountAndDropSkipped(grain.IterDataset):
  def __init__(self, parent: grain.IterDataset, strict: bool, records_per_epoch: int):
    super().__init__(parent)
    self._strict = strict
    self._per_epoch = records_per_epoch

  def __iter__(self):
    self.last_iterator = _CountingIterator(self._parent.__iter__(), self._strict, self._per_epoch)
    return self.last_iterator


def _rename(element: dict) -> dict:
  return {"inputs": element["inputs"], "targets": element["targets"], "loss_mask": element["loss_mask"],
          "segment_ids": element["inputs_segment_ids"].astype(np.int32),
          "positions": element["inputs_positions"].astype(np.int32)}


def build_dataset(records, formatter: Formatter, options: PipelineOptions) -> grain.IterDataset:
  """The pipeline over `records` (a random-access sequence of canonical record dicts) as a grain IterDataset."""
  ds = grain.MapDataset.source(records)
  if options.process_count > 1:
    ds = ds[options.process_index::options.process_count]
  records_per_epoch = len(ds)
  if options.shuffle:
    ds = ds.shuffle(seed=options.shuffle_seed)
  ds = ds.repeat(options.num_epochs or None)
  ds = ds.map(TokenizeRecord(formatter, options)).to_iter_dataset()
  ds = CountAndDropSkipped(ds, options.strict, records_per_epoch)
  t = options.seq_len
  ds = grain.experimental.FirstFitPackIterDataset(
      ds, length_struct={"inputs": t, "targets": t, "loss_mask": t}, num_packing_bins=options.packing_bins,
      shuffle_bins=False, max_sequences_per_bin=None if options.packing else 1)
  ds = ds.map(_rename).batch(options.rows_per_host, drop_remainder=options.drop_remainder)
  if options.prefetch:
    ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=options.prefetch)
  return ds


def _find_counting_state(state) -> dict | None:
  if isinstance(state, dict):
    if "record_counts" in state:
      return state
    for value in state.values():
      found = _find_counting_state(value)
      if found is not None:
        return found
  return None


def _find_counting_dataset(ds) -> CountAndDropSkipped:
  while not isinstance(ds, CountAndDropSkipped):
    ds = ds.parents[0]
  return ds


class SFTPipeline:
  """Iterates host-local batches; `get_state`/`set_state` (JSON) make it resumable.

  `next_batch(accum_steps)` returns numpy arrays [accum_steps, rows_per_host // accum_steps,
  seq_len]. `record_counts()` gives this host's records per reason (used, skipped by reason, truncated), each record
  counted once however many epochs are read, and `epochs_read()` how many passes over them were read, both as of
  the batches returned, give or take the examples waiting in the packing bins (not counting prefetched batches).
  """

  def __init__(self, records, formatter: Formatter, options: PipelineOptions):
    self.options = options
    self.records_per_epoch = len(range(len(records))[options.process_index::options.process_count])
    self.dataset = build_dataset(records, formatter, options)
    self.iterator = iter(self.dataset)

  def next_batch(self, accum_steps: int = 1) -> dict:
    rows = self.options.rows_per_host
    if rows % accum_steps:
      raise ValueError(f"data: {rows} rows per host are not divisible by grad_accum_steps={accum_steps}")
    try:
      batch = next(self.iterator)
    except StopIteration:
      raise StopIteration(f"data: the dataset ran out after {self.options.num_epochs} epoch(s)") from None
    if batch["inputs"].shape[0] % accum_steps:
      raise ValueError(f"data: a last batch of {batch['inputs'].shape[0]} rows cannot be split into "
                       f"{accum_steps} micro-steps")
    return {k: batch[k].reshape(accum_steps, -1, batch[k].shape[-1]) for k in BATCH_KEYS}

  def record_counts(self, read_ahead: bool = False) -> dict:
    """Records by reason, each once; with `read_ahead`, also those read into open packing bins and prefetched
    batches (what a preview has read; the default is what a resumed run would not read again)."""
    return dict(self._counting(read_ahead).get("record_counts", {}))

  def epochs_read(self, read_ahead: bool = False) -> float:
    """Passes over this host's records read (fractional), as of the batches returned or with `read_ahead`."""
    return self._counting(read_ahead).get("records_read", 0) / max(self.records_per_epoch, 1)

  def _counting(self, read_ahead: bool) -> dict:
    if read_ahead:
      live = _find_counting_dataset(self.dataset).last_iterator
      return {"record_counts": dict(live.counts), "records_read": live.records_read}
    return _find_counting_state(self.iterator.get_state()) or {}

  def get_state(self):
    return self.iterator.get_state()

  def set_state(self, state) -> None:
    self.iterator.set_state(state)

  def close(self) -> None:
    close = getattr(self.iterator, "close", None)
    if close is not None:
      close()


def check_supervised(records, formatter: Formatter, options: PipelineOptions, limit: int | None = None) -> dict:
  """Scans records (all, or the first `limit`) until one yields a supervised token; raises
  ValueError with the per-reason counts and the first record of each reason if none does (or if there are no
  records). Returns the counts seen."""
  if len(records) == 0:
    raise DataError(f"data: the dataset has no records ({records!r} is empty)" if hasattr(records, "prepared_dir")
                     else "data: the dataset has no records")
  tokenize = TokenizeRecord(formatter, dataclasses.replace(options, strict=False))
  counts, first = collections.Counter(), {}
  n = len(records) if limit is None else min(limit, len(records))
  for i in range(n):
    element = tokenize.map(records[i])
    if "skip" not in element:
      counts["used"] += 1
      return dict(counts)
    counts[element["skip"]] += 1
    first.setdefault(element["skip"], element["location"])
  firsts = "; ".join(f"{reason} first at {location}" for reason, location in first.items())
  raise DataError(f"data: no record yields a supervised token ({n} scanned; by reason: {dict(counts)}; {firsts}). "
                   "Check the field mapping (data.jsonl.*), loss_on, seq_len and truncation.")


def example_batch(records, formatter: Formatter, seq_len: int, strict: bool = True) -> dict:
  """Returns every record, in order, as one unpacked batch of arrays [n, seq_len] (the pipeline's keys), through
  the same tokenisation and masking as training (truncating over-long ones; evaluation and token tables)."""
  options = PipelineOptions(seq_len=seq_len, rows_per_host=max(len(records), 1), truncation="truncate",
                            strict=strict, packing=False, prefetch=0, num_epochs=1, shuffle=False,
                            drop_remainder=False)
  pipe = SFTPipeline(records, formatter, options)
  try:
    return {k: v[0] for k, v in pipe.next_batch(1).items()}
  finally:
    pipe.close()
