"""Tests of the synthetic arithmetic word-problem generator."""

import operator
import re

import numpy as np
import pytest

from rankjax.data import synthetic
from rankjax.data.answers import extract_answer

EQUATION = re.compile(r"(-?\d+) ([-+*/]) (-?\d+) = (-?\d+)")
OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}


def check_steps(steps, answer):
  """Asserts every step holds one true equation and the last result is the answer."""
  assert steps
  result = None
  for step in steps:
    equations = EQUATION.findall(step)
    assert len(equations) == 1, step
    a, op, b, c = equations[0]
    assert OPS[op](int(a), int(b)) == int(c), step
    result = int(c)
  assert result == answer


def test_families_registered_and_split():
  assert len(synthetic.FAMILIES) >= 8
  assert set(synthetic.PRETRAIN_FAMILIES) <= set(synthetic.FAMILIES)
  assert set(synthetic.FINETUNE_FAMILIES) <= set(synthetic.FAMILIES)
  assert not set(synthetic.PRETRAIN_FAMILIES) & set(synthetic.FINETUNE_FAMILIES)
  assert len(synthetic.PRETRAIN_FAMILIES) >= 5 and len(synthetic.FINETUNE_FAMILIES) >= 3


@pytest.mark.parametrize("family", sorted(synthetic.FAMILIES))
def test_family_answers_match_their_arithmetic(family):
  rng = np.random.default_rng(123)
  questions = set()
  for _ in range(300):
    question, steps, answer = synthetic.FAMILIES[family](rng)
    assert isinstance(question, str) and question.endswith("?")
    assert isinstance(answer, int) and 0 <= answer < 400
    check_steps(steps, answer)
    questions.add(question)
  assert len(questions) > 150, "phrasings/numbers should vary"


def test_operands_small():
  rng = np.random.default_rng(0)
  for family in synthetic.FAMILIES.values():
    for _ in range(200):
      _, steps, _ = family(rng)
      a, _, b, _ = EQUATION.findall(steps[0])[0]
      # First-step operands are question numbers: 1..20, or a dividend < 400.
      assert 1 <= int(b) <= 20 and 1 <= int(a) < 400


def test_make_examples_deterministic_by_seed():
  families = synthetic.PRETRAIN_FAMILIES
  first = synthetic.make_examples(families, 50, seed=7, template="pretrain")
  assert first == synthetic.make_examples(families, 50, seed=7, template="pretrain")
  assert first != synthetic.make_examples(families, 50, seed=8, template="pretrain")
  assert [e.family for e in first[: len(families)]] == list(families)


def test_splits_deterministic_by_seed():
  assert synthetic.make_splits(3, 40, 40, 20) == synthetic.make_splits(3, 40, 40, 20)
  assert synthetic.make_splits(3, 40, 40, 20) != synthetic.make_splits(4, 40, 40, 20)


@pytest.mark.parametrize("template", synthetic.TEMPLATES)
def test_templates_render_and_answer_extracts(template):
  for example in synthetic.make_examples(synthetic.FAMILIES, 90, seed=1, template=template):
    assert extract_answer(example.response) == example.answer  # the one extractor of every source and of grading
    assert extract_answer(example.prompt + example.response) == example.answer
    assert extract_answer(example.prompt) is None
    solution = example.response.split("\n")[0].removeprefix("Answer:")
    check_steps(re.findall(r"[^.]+\.", solution), int(example.answer))  # one sentence per step


def test_template_formats():
  q, steps, answer = "Ava has 3 apples. Ava gets 5 more apples. How many apples does Ava have now?", ["3 + 5 = 8."], 8
  pre = synthetic.render(q, steps, answer, "add", "pretrain")
  assert pre.prompt == f"Question: {q}\n"
  assert pre.response == "Answer: 3 + 5 = 8.\n#### 8"
  fine = synthetic.render(q, ["3 + 5 = 8.", "8 - 1 = 7."], 7, "add", "finetune")
  assert fine.prompt == f"Problem: {q}\nSolution:"
  assert fine.response == " 3 + 5 = 8. 8 - 1 = 7.\nThe answer is 7."
  assert synthetic.question_of(pre) == synthetic.question_of(fine) == q
  with pytest.raises(ValueError):
    synthetic.render(q, steps, answer, "add", "chat")


def test_no_eval_question_in_finetune():
  splits = synthetic.make_splits(0, 300, 1500, 300)
  assert {k: len(v) for k, v in splits.items()} == {"pretrain": 300, "finetune": 1500, "eval": 300}
  finetune_q = {synthetic.question_of(e) for e in splits["finetune"]}
  eval_q = [synthetic.question_of(e) for e in splits["eval"]]
  assert not finetune_q & set(eval_q)
  assert len(set(eval_q)) == len(eval_q)


def test_split_families_and_templates():
  splits = synthetic.make_splits(1, 60, 60, 30)
  assert {e.family for e in splits["pretrain"]} == set(synthetic.PRETRAIN_FAMILIES)
  assert all(e.prompt.startswith("Question: ") for e in splits["pretrain"])
  for name in ("finetune", "eval"):
    assert {e.family for e in splits[name]} == set(synthetic.FINETUNE_FAMILIES)
    assert all(e.prompt.startswith("Problem: ") and e.prompt.endswith("\nSolution:") for e in splits[name])


def test_bad_arguments():
  with pytest.raises(ValueError):
    synthetic.make_examples(["nope"], 3, seed=0)
  with pytest.raises(ValueError):
    synthetic.make_examples(["add"], 3, seed=0, template="chat")
  with pytest.raises(ValueError):
    synthetic.make_examples([], 3, seed=0)
