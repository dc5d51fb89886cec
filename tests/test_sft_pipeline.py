"""The Grain SFT pipeline: masks, packing isolation, per-host sharding, resume, bad data, chat formatting."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rankjax import models
from rankjax.data import formatting, pipeline
from rankjax.data.bpe import train_bpe
from rankjax.data.hf_tokenizer import load_hf_tokenizer
from tests.test_hf_tokenizer import qwen_dir  # noqa: F401 (fixture)


def _record(prompt, response, i=0, **extra):
  return {"prompt": prompt, "response": response, "messages": "", "answer": "", "source_file": "mem.jsonl",
          "source_index": i, "error": "", **extra}


@pytest.fixture(scope="module")
def gsm8k(shared_data):
  rows = [json.loads(line) for line in open(shared_data / "gsm8k" / "train.jsonl")][:600]
  records = [_record(r["question"], r["answer"], i) for i, r in enumerate(rows)]
  tok = train_bpe((r["prompt"] + r["response"] for r in records), 1024)
  return records, tok


def _pipe(records, tok, **options):
  fmt = formatting.Formatter(tok, "plain", "Question: {prompt}\nAnswer: ")
  opts = dict(seq_len=256, rows_per_host=4, prefetch=0)
  opts.update(options)
  return pipeline.SFTPipeline(records, fmt, pipeline.PipelineOptions(**opts))


def _segments(batch):
  """Yields (inputs, targets, loss_mask, positions) of every packed example in a [A, b, T] batch."""
  for a in range(batch["inputs"].shape[0]):
    for r in range(batch["inputs"].shape[1]):
      seg = batch["segment_ids"][a, r]
      for s in np.unique(seg[seg > 0]):
        sel = seg == s
        yield tuple(batch[k][a, r][sel] for k in ("inputs", "targets", "loss_mask", "positions"))


def test_supervised_tokens_are_exactly_the_answer_and_eos(gsm8k):
  records, tok = gsm8k
  answers = {r["response"] for r in records}
  pipe = _pipe(records, tok)
  seen = 0
  for _ in range(3):
    for inputs, targets, mask, positions in _segments(pipe.next_batch()):
      text = tok.decode(targets[mask > 0].tolist())
      assert text.endswith("<eos>") and text[: -len("<eos>")] in answers
      first = int(np.argmax(mask > 0))
      assert tok.decode(inputs[: first + 1].tolist()).startswith("<bos>Question: ")
      assert tok.decode(inputs[: first + 1].tolist()).endswith("\nAnswer: ")  # the prompt is unsupervised
      np.testing.assert_array_equal(positions, np.arange(len(positions)))
      seen += 1
  pipe.close()
  assert seen > 12  # several examples per row: packing happened


def test_packed_examples_do_not_attend_to_each_other(gsm8k):
  records, tok = gsm8k
  c = models.default_config()
  c.vocab_size, c.hidden_size, c.num_layers, c.mlp_dim, c.init_std = 1024, 32, 2, 64, 0.2
  model = models.build_model(c)
  params = models.init_params(model, jax.random.PRNGKey(0))
  batch = _pipe(records, tok, rows_per_host=4, seq_len=512).next_batch()
  best = int(np.argmax([len(np.unique(s)) for s in batch["segment_ids"][0]]))
  row = {k: v[:, best] for k, v in batch.items()}
  apply = jax.jit(model.apply)  # two compilations (packed, alone) instead of every op once per segment length
  packed = apply({"params": params}, jnp.asarray(row["inputs"]), positions=jnp.asarray(row["positions"]),
                 segment_ids=jnp.asarray(row["segment_ids"]))
  seg = row["segment_ids"][0]
  assert len(np.unique(seg[seg > 0])) >= 2
  for s in np.unique(seg[seg > 0]):
    sel = seg == s
    # The example alone at the start of a row of the same length: attention is causal, so the padding after it
    # cannot change its outputs, and every example shares one compiled shape.
    alone = np.zeros_like(row["inputs"])
    alone[0, :sel.sum()] = row["inputs"][0][sel]
    out = apply({"params": params}, jnp.asarray(alone))
    np.testing.assert_allclose(np.asarray(packed[0][sel]), np.asarray(out[0, :sel.sum()]), rtol=1e-4, atol=1e-4)


def test_two_hosts_read_disjoint_halves(gsm8k):
  records, tok = gsm8k
  records = records[:40]
  seen = []
  for host in (0, 1):
    pipe = _pipe([dict(r, response=f"#{r['source_index']}#") for r in records], tok, process_index=host,
                 process_count=2, rows_per_host=2, packing=False, num_epochs=1)
    ids = []
    try:
      while True:
        batch = pipe.next_batch()
        for _, targets, mask, _ in _segments(batch):
          ids.append(int(tok.decode(targets[mask > 0].tolist()).split("#")[1]))
    except StopIteration:
      pass
    assert batch["inputs"].shape == (1, 2, 256)
    seen.append(ids)
  assert set(seen[0]).isdisjoint(seen[1])
  assert sorted(seen[0] + seen[1]) == list(range(40))
  assert seen[0] == sorted(seen[0], key=seen[0].index) and seen[0] != sorted(seen[0])  # shuffled


def test_resumed_iterator_yields_the_uninterrupted_batches(gsm8k):
  records, tok = gsm8k
  full = _pipe(records, tok, prefetch=2)
  expected = [full.next_batch(2) for _ in range(6)]
  first = _pipe(records, tok, prefetch=2)
  for _ in range(3):
    first.next_batch(2)
  state = json.loads(json.dumps(first.get_state()))  # what the checkpoint stores
  counts = first.record_counts()
  resumed = _pipe(records, tok, prefetch=2)
  resumed.set_state(state)
  assert resumed.record_counts() == counts
  for want in expected[3:]:
    got = resumed.next_batch(2)
    for k in pipeline.BATCH_KEYS:
      np.testing.assert_array_equal(got[k], want[k])
  for p in (full, first, resumed):
    p.close()


def test_every_bad_record_is_counted_by_reason(gsm8k):
  _, tok = gsm8k
  good = [_record("What is 2+2?", "4", i) for i in range(6)]
  bad = [_record("", "", 6, error="missing_field:question"), _record("q", "   ", 7), _record("q", 5, 8),
         _record("q", "x", 9, messages="not json"), _record("q", "x", 10, messages=json.dumps([{"role": "user", "content": "q"}])),
         _record("q " * 400, "long", 11), _record("q", "long " * 400, 12), _record(None, "x", 13)]
  pipe = _pipe(good + bad, tok, rows_per_host=1, packing=False)
  for _ in range(30):  # 5 epochs of the 6 good records
    pipe.next_batch()
  # Each record counted once, however many epochs were read; the epochs separately (as of the batches returned:
  # the records of still-open packing bins are not in yet).
  assert pipe.record_counts() == {"used": 6, "missing_field:question": 1, "empty_response": 1,
                                  "non_string:response": 1, "invalid_json": 1, "no_assistant_turn": 1, "too_long": 2,
                                  "non_string:prompt": 1}
  assert 3.5 <= pipe.epochs_read() <= 5.1, pipe.epochs_read()
  pipe.close()


def test_truncate_keeps_the_prompt_and_cuts_the_response(gsm8k):
  _, tok = gsm8k
  pipe = _pipe([_record("q", "long " * 400, 0), _record("q " * 400, "x", 1)], tok, truncation="truncate",
               num_epochs=1, rows_per_host=1, packing=False)
  batch = pipe.next_batch()
  assert (batch["segment_ids"] > 0).all() and batch["loss_mask"][0, 0, -1] == 1
  with pytest.raises(StopIteration):
    pipe.next_batch()  # the other record's prompt alone does not fit: dropped even when truncating


def test_strict_names_the_file_and_record(gsm8k):
  _, tok = gsm8k
  pipe = _pipe([_record("q", "a", 0), _record("q", "", 1)], tok, strict=True, packing=False, rows_per_host=2)
  with pytest.raises(ValueError, match="mem.jsonl:1 cannot be used: empty_response"):
    pipe.next_batch()


def test_no_supervised_token_is_an_error_before_training(gsm8k):
  _, tok = gsm8k
  fmt = formatting.Formatter(tok, "plain")
  with pytest.raises(ValueError, match="no record yields a supervised token.*empty_response"):
    pipeline.check_supervised([_record("q", " ", i) for i in range(5)], fmt, pipeline.PipelineOptions(64, 2))


def test_chat_format_supervises_the_assistant_turn_and_end_of_turn(qwen_dir):  # noqa: F811
  tok = load_hf_tokenizer(qwen_dir)
  fmt = formatting.Formatter(tok, "chat", system_prompt="Please reason step by step.")
  prompt, response = fmt(_record("What is two plus two?", "It is four."))
  assert tok.decode(prompt).startswith("<|im_start|>system\nPlease reason step by step.<|im_end|>")
  assert tok.decode(prompt).endswith("<|im_start|>assistant\n")
  assert tok.decode(response) == "It is four.<|im_end|>\n"
  messages = json.dumps([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}])
  _, response = fmt(_record("", "", messages=messages))
  assert tok.decode(response) == "Hello!<|im_end|>\n"
