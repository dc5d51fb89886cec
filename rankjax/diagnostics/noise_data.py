"""The noise diagnostic's data: which corpus and prompt format (the checkpoint's or the config's), and its
records as (prompt ids, response ids) pairs.

Data config rule: for a rankjax workdir (with `config.data_from_checkpoint`) the corpus and format fields
(source, synthetic.*, files.*, jsonl.*, prompt_format, plain_template, system_prompt) are the checkpoint's,
except those that `config.data` sets to a value other than `sources.default_config()`'s (a different
`source` brings the config's own synthetic / files / jsonl groups). Otherwise `config.data` is used as is.
Always the config's: `split` (None: "finetune" for the synthetic corpus, "train" for file sources) and
`seq_len` (clean examples longer than seq_len + 1 tokens are left out). The tokenizer is always the
checkpoint's; the pipeline fields (batch_size, packing, loss_on, ...) are not used.
"""

from __future__ import annotations

import collections

import ml_collections

from rankjax.data import sources, stream
from rankjax.data.formatting import SkipExample

CORPUS_GROUPS = ("synthetic", "files", "jsonl")
FORMAT_FIELDS = ("prompt_format", "plain_template", "system_prompt")


def resolve_data_config(data, checkpoint_data, from_checkpoint: bool) -> ml_collections.ConfigDict:
  """Returns the data config the diagnostic reads (see the module docstring), split resolved."""
  out = ml_collections.ConfigDict(data.to_dict())
  defaults = sources.default_config()
  if from_checkpoint and checkpoint_data is not None:
    base = ml_collections.ConfigDict(checkpoint_data.to_dict())
    if data.source == defaults.source:  # the checkpoint's corpus, with the fields the config changed
      out.source = base.source
      for group in CORPUS_GROUPS:
        for field, value in data[group].items():
          out[group][field] = value if value != defaults[group][field] else base[group][field]
    for field in FORMAT_FIELDS:
      out[field] = data[field] if data[field] != defaults[field] else base[field]
  if out.split is None:
    out.split = "finetune" if out.source == "synthetic" else "train"
  sources.validate_config(out)
  return out


def load_examples(data_config, tokenizer, num_examples: int) -> tuple[list[tuple[list[int], list[int]]], dict]:
  """Returns ((prompt ids, response ids) of the first `num_examples` usable records of the split, in source
  order; counts). A record is usable when the formatter accepts it, its prompt is not empty and the whole
  example fits in data.seq_len + 1 tokens; counts: records read, used, and skipped per reason."""
  records = sources.load_records(data_config)
  formatter = stream.make_formatter(data_config, tokenizer)
  width = int(data_config.seq_len) + 1
  examples, counts = [], collections.Counter()
  for i in range(len(records)):
    if len(examples) >= num_examples:
      break
    counts["read"] += 1
    try:
      prompt, response = formatter(records[i])
    except SkipExample as e:
      counts[f"skipped:{e.reason}"] += 1
      continue
    if not prompt or not response:
      counts["skipped:empty_prompt_or_response"] += 1
    elif len(prompt) + len(response) > width:
      counts["skipped:too_long"] += 1
    else:
      examples.append((prompt, response))
  counts["used"] = len(examples)
  if not examples:
    raise ValueError(f"config.data: no usable example in source={data_config.source!r} split={data_config.split!r} "
                     f"({dict(counts)}; config.num_examples={num_examples}, config.data.seq_len={data_config.seq_len})")
  return examples, dict(counts)
