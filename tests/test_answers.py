"""The one answer extractor (rankjax.data.answers): the cases where the three extractors it replaced disagreed,
and the gold answers of the real data it cuts."""

from __future__ import annotations

import json

import pytest

from rankjax import eval as rankjax_eval
from rankjax.data import answers, tfds_builders
from rankjax.eval import answers as eval_answers

# (id, text, the one answer now, what the old extractors gave: the TFDS gold (last_boxed for NuminaMath and
# Minerva, "everything after ####" with every comma removed for GSM8K), eval (grading) and the synthetic corpus).
DISAGREEMENTS = [
    ("nested-braces", r"so $\boxed{\frac{1}{\sqrt{2}}}$.", r"\frac{1}{\sqrt{2}}",
     r"gold \frac{1}{\sqrt{2}}, eval the same, synthetic None"),
    ("fbox", r"\fbox{7}", "7", 'gold "", eval 7, synthetic None'),
    ("fbox-after-boxed", r"\boxed{1}, then \fbox{2}", "2", "gold 1, eval 2, synthetic None"),
    ("last-box-wins", r"First \boxed{3}. Correcting: \boxed{4}", "4", "gold 4, eval 4, synthetic None"),
    ("truncated-last-box", r"\boxed{3} and a truncated \boxed{4", "3", "gold 3, eval 3, synthetic None"),
    ("other-command", r"\boxedfoo{3}", None, 'gold "", eval None, synthetic None'),
    ("empty-box", r"\boxed{}", "", 'gold "", eval "", synthetic None'),
    ("box-beats-hashes", "\\boxed{5}\n#### 6", "5", "gold 6 (GSM8K rule), eval 5, synthetic 6"),
    ("hashes-then-more-lines", "#### 5\nThat is all.", "5", 'gold "5\\nThat is all.", eval 5, synthetic 5'),
    ("hashes-then-phrase", "#### 6\nThe answer is 7.", "6", 'gold "6\\nThe answer is 7.", eval 6, synthetic 7'),
    ("hashes-last-wins", "#### 12\n#### 34", "34", "gold 34, eval 34, synthetic 34"),
    ("hashes-empty-line", "#### \nThe answer is 5.", "5", 'gold "The answer is 5.", eval "", synthetic 5'),
    ("hashes-bare", "\x00\ufffd####\n5", None, 'gold "5", eval "", synthetic None'),
    ("hashes-no-space", "####-3", "-3", "gold -3, eval -3, synthetic -3"),
    ("hashes-trailing-period", "#### 72.", "72", 'gold "72.", eval 72, synthetic 72'),
    ("box-token-trailing-period", r"so \boxed 12.", "12", 'gold "12.", eval 12, synthetic None'),
    ("box-token-dollar", r"The answer is \boxed 42$.", "42", "gold 42, eval 42, synthetic None"),
    ("hashes-word-after-number", "#### 12abc", "12abc", "gold 12abc, eval 12abc, synthetic None"),
    ("comma-thousands-hashes", "#### 1,234", "1234", "gold 1234, eval 1,234, synthetic None"),
    ("comma-thousands-box", r"\boxed{1,234}", "1234", "gold 1,234, eval 1,234, synthetic None"),
    ("comma-thousands-phrase", "The answer is 1,000.", "1000", 'gold "", eval 1,000, synthetic None'),
    ("comma-thousands-negative-decimal", r"\boxed{-12,345.5}", "-12345.5", "gold and eval -12,345.5"),
    ("comma-list-kept", r"\boxed{1,2}", "1,2", "gold 1,2, eval 1,2, synthetic None"),
    ("comma-two-digit-group-kept", "#### 69,84", "69,84", "gold 6984, eval 69,84, synthetic None"),
    ("comma-tuple-kept", r"\boxed{(1,234)}", "(1,234)", "gold (1,234), eval (1,234), synthetic None"),
    ("phrase-decimal", "The answer is 3.5", "3.5", 'gold "", eval 3.5, synthetic None'),
    ("phrase-only", "so the answer is 7.", "7", 'gold "" (no box), eval 7, synthetic 7'),
    ("phrase-last-wins", "The answer is 3. Wait, the answer is 4.", "4", 'gold "", eval 4, synthetic 4'),
    ("phrase-not-a-number", "The answer is x.", "x", 'gold "", eval x, synthetic None'),
    ("no-marker", "no answer here 42", None, 'gold "", eval None, synthetic None'),
]


@pytest.mark.parametrize("text, want", [pytest.param(t, w, id=i) for i, t, w, _ in DISAGREEMENTS])
def test_one_answer_for_every_case_the_old_extractors_disagreed_on(text, want):
  assert answers.extract_answer(text) == want
  assert tfds_builders.gold_answer(text) == (want or "")  # a gold answer is cut exactly like a model's


def test_eval_keeps_exporting_the_one_extractor():
  assert eval_answers.extract_answer is rankjax_eval.extract_answer is answers.extract_answer


def test_gsm8k_gold_answers_are_the_number_after_the_hashes(shared_data):
  """Every GSM8K gold answer is what the old "after ####, commas removed" rule gave (no record changed)."""
  for split in ("train", "test"):
    with open(shared_data / "gsm8k" / f"{split}.jsonl", encoding="utf-8") as f:
      texts = [json.loads(line)["answer"] for line in f]
    got = [tfds_builders.gold_answer(t) for t in texts]
    assert got == [t.rsplit("####", 1)[1].strip().replace(",", "") for t in texts], split
    assert all(g.lstrip("-").replace(".", "", 1).isdigit() for g in got), split


def test_minerva_gold_answers_are_the_last_box(shared_data):
  with open(shared_data / "math_eval" / "minerva_math" / "test.jsonl", encoding="utf-8") as f:
    solutions = [json.loads(line)["solution"] for line in f]
  got = [tfds_builders.gold_answer(s) for s in solutions]
  assert len(got) == 272 and all(got)
  assert got[1] == "4.5e33"
