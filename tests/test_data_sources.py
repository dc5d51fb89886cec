"""The one data path: the synthetic corpus is a record source like the files, through the same formatter and
Grain pipeline; the data config is nested by source and refuses fields the chosen source does not read."""

import numpy as np
import pytest

from rankjax.data import bpe, sources, stream, synthetic
from rankjax.train import config as run_config
from tests.helpers import tiny_run_config


def test_synthetic_records_are_canonical_records():
  config = tiny_run_config()
  records = sources.load_records(config.data)
  assert len(records) == config.data.synthetic.num_finetune
  examples = synthetic.make_splits(0, 300, 200, 20, "finetune")["finetune"]
  assert records[5]["prompt"] == examples[5].prompt and records[5]["response"] == examples[5].response
  assert records[5]["answer"] == examples[5].answer and records[5]["error"] == ""
  assert records[5]["source_file"] == "synthetic/finetune" and records[5]["source_index"] == 5


def test_synthetic_batches_supervise_exactly_response_and_eos(tmp_path):
  config = run_config.with_overrides(tiny_run_config(), {"data.prefetch": 0})
  tokenizer, pipe = stream.make_pipeline(config, str(tmp_path), config.model.vocab_size)
  try:
    batch = pipe.next_batch(1)
  finally:
    pipe.close()
  assert batch["inputs"].shape == (1, config.data.batch_size, config.data.seq_len)
  assert batch["segment_ids"].max() == 1  # packing is off by default for the synthetic corpus
  responses = {r["response"] for r in sources.load_records(config.data)}
  for row in range(config.data.batch_size):
    inputs, targets = batch["inputs"][0, row], batch["targets"][0, row]
    mask, seg = batch["loss_mask"][0, row], batch["segment_ids"][0, row]
    assert inputs[0] == bpe.BOS_ID
    supervised = targets[mask > 0]
    assert supervised[-1] == bpe.EOS_ID and (mask > 0).sum() == len(supervised)
    assert tokenizer.decode(supervised[:-1]) in responses  # the mask covers the response tokens and EOS only
    used = int(seg.sum())
    assert mask[used:].sum() == 0 and np.all(np.flatnonzero(mask) == np.arange(used - len(supervised), used))
    np.testing.assert_array_equal(batch["positions"][0, row, :used], np.arange(used))


def test_synthetic_loss_on_all_supervises_every_target_after_bos(tmp_path):
  config = run_config.with_overrides(tiny_run_config(), {"data.loss_on": "all", "data.split": "pretrain",
                                                          "data.prefetch": 0})
  _, pipe = stream.make_pipeline(config, str(tmp_path), config.model.vocab_size)
  try:
    batch = pipe.next_batch(1)
  finally:
    pipe.close()
  np.testing.assert_array_equal(batch["loss_mask"] > 0, batch["segment_ids"] > 0)


def test_packing_can_be_switched_on_for_the_synthetic_corpus(tmp_path):
  config = run_config.with_overrides(tiny_run_config(), {"data.packing": True, "data.prefetch": 0, "data.seq_len": 256})
  _, pipe = stream.make_pipeline(config, str(tmp_path), config.model.vocab_size)
  try:
    assert pipe.next_batch(1)["segment_ids"].max() > 1
  finally:
    pipe.close()


@pytest.mark.parametrize("override, source, field", [
    ({"data.files.manual_dir": "/data/gsm8k"}, "synthetic", "data.files.manual_dir"),
    ({"data.jsonl.prompt_field": "question"}, "synthetic", "data.jsonl.prompt_field"),
    ({"data.synthetic.num_pretrain": 5}, "gsm8k", "data.synthetic.num_pretrain"),
    ({"data.jsonl.messages_field": "conv"}, "gsm8k", "data.jsonl.messages_field"),
])
def test_a_field_the_source_does_not_read_is_an_error(override, source, field):
  overrides = {"data.source": source, **override}
  if source != "synthetic":
    overrides.setdefault("data.files.manual_dir", "/data/x")
    overrides["data.split"] = "train"
  config = run_config.with_overrides(run_config.base_config(), overrides)
  with pytest.raises(ValueError, match=field.replace(".", r"\.")):
    run_config.validate(config)


def test_file_source_without_manual_dir_and_bad_synthetic_split_are_named():
  config = run_config.with_overrides(run_config.base_config(), {"data.source": "jsonl", "data.split": "train"})
  with pytest.raises(ValueError, match=r"data\.files\.manual_dir"):
    run_config.validate(config)
  with pytest.raises(ValueError, match=r"data\.split='train'"):
    run_config.validate(run_config.with_overrides(run_config.base_config(), {"data.split": "train"}))


def test_unset_fields_take_the_source_default():
  synthetic_data = run_config.base_config().data
  assert sources.resolved(synthetic_data, "packing") is False
  assert sources.resolved(synthetic_data, "plain_template") == "{prompt}"
  files = run_config.with_overrides(run_config.base_config(), {"data.source": "gsm8k"}).data
  assert sources.resolved(files, "packing") is True
  assert sources.resolved(run_config.with_overrides(run_config.base_config(), {"data.packing": True}).data,
                          "packing") is True
