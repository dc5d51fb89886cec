"""Seeded generator of arithmetic word problems with step-by-step solutions.

Each family function takes a `numpy.random.Generator` and returns
`(question, steps, answer)`: the question text, a list of steps, each one sentence
holding one explicit equation such as "3 + 5 = 8.", and the integer answer (the
result of the last step). Operands stay in 1..20 (money bills of 10 or 20) and
results below 400, so a tiny transformer can learn some of it.

Families are split into pretraining formats and held-out fine-tuning formats;
`make_splits` builds the three data sets used by the experiments. A response ends with "#### n" or
"The answer is n.", which `rankjax.data.answers.extract_answer` (the extractor of every source and of
grading) reads back as `answer`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence

import numpy as np

Problem = tuple[str, list[str], int]

NAMES = (
  "Ava", "Ben", "Chloe", "Dan", "Ella", "Finn", "Grace", "Hugo", "Ivy", "Jack", "Kira", "Leo",
  "Mia", "Noah", "Olga", "Omar", "Priya", "Quinn", "Rosa", "Sam", "Tara", "Umar", "Vera", "Wei",
)
OBJECTS = (
  "apples", "marbles", "stickers", "pencils", "cookies", "books", "cards", "shells", "stamps",
  "balloons", "oranges", "toy cars", "crayons", "buttons", "eggs", "flowers", "coins", "beads",
  "candies", "rocks",
)
ITEMS = (  # (singular, plural) of things bought in the money family
  ("pen", "pens"), ("notebook", "notebooks"), ("sandwich", "sandwiches"), ("ticket", "tickets"),
  ("toy car", "toy cars"), ("book", "books"), ("juice box", "juice boxes"), ("muffin", "muffins"),
)
PLACES = ("garden", "field", "yard", "room", "pool", "park", "playground", "table top")


def _int(rng: np.random.Generator, low: int, high: int) -> int:
  """Returns a uniform integer in [low, high] (both inclusive)."""
  return int(rng.integers(low, high + 1))


def _pick(rng: np.random.Generator, options: Sequence):
  """Returns one uniformly chosen element of `options`."""
  return options[int(rng.integers(len(options)))]


def _two_names(rng: np.random.Generator) -> tuple[str, str]:
  """Returns two distinct names."""
  first, second = rng.choice(len(NAMES), size=2, replace=False)
  return NAMES[int(first)], NAMES[int(second)]


def _eq(a: int, op: str, b: int, result: int) -> str:
  """Returns the step "a op b = result."."""
  return f"{a} {op} {b} = {result}."


def add_problem(rng: np.random.Generator) -> Problem:
  """Someone has a items and gets b more: a + b."""
  name, other = _two_names(rng)
  obj = _pick(rng, OBJECTS)
  a, b = _int(rng, 1, 20), _int(rng, 1, 20)
  question = _pick(rng, (
    f"{name} has {a} {obj}. {name} gets {b} more {obj}. How many {obj} does {name} have now?",
    f"{name} had {a} {obj} and found {b} more. How many {obj} does {name} have in total?",
    f"There are {a} {obj} in a box. {name} puts in {b} more. How many {obj} are in the box now?",
    f"{name} has {a} {obj} and {other} gives {name} {b} more. How many {obj} does {name} have?",
  ))
  return question, [_eq(a, "+", b, a + b)], a + b


def subtract_problem(rng: np.random.Generator) -> Problem:
  """Someone has a items and gives away / loses b < a of them: a - b."""
  name, other = _two_names(rng)
  obj = _pick(rng, OBJECTS)
  a = _int(rng, 2, 20)
  b = _int(rng, 1, a - 1)
  question = _pick(rng, (
    f"{name} has {a} {obj}. {name} gives {b} of them to {other}. How many {obj} does {name} have left?",
    f"{name} had {a} {obj} and lost {b}. How many {obj} are left?",
    f"There were {a} {obj} on the table. {name} took {b}. How many {obj} are still on the table?",
    f"{name} collected {a} {obj} and used {b} of them. How many {obj} does {name} still have?",
  ))
  return question, [_eq(a, "-", b, a - b)], a - b


def multiply_problem(rng: np.random.Generator) -> Problem:
  """a packs / boxes / bags of b items each: a * b."""
  name = _pick(rng, NAMES)
  obj = _pick(rng, OBJECTS)
  a, b = _int(rng, 2, 12), _int(rng, 2, 20)
  question = _pick(rng, (
    f"{name} buys {a} packs of {obj}. Each pack has {b} {obj}. How many {obj} does {name} buy?",
    f"There are {a} boxes with {b} {obj} in each box. How many {obj} are there in all?",
    f"{name} fills {a} bags with {b} {obj} in each bag. How many {obj} does {name} use?",
  ))
  return question, [_eq(a, "*", b, a * b)], a * b


def divide_problem(rng: np.random.Generator) -> Problem:
  """Share `total` items equally into k groups (exact division): total / k."""
  name = _pick(rng, NAMES)
  obj = _pick(rng, OBJECTS)
  k, quotient = _int(rng, 2, 10), _int(rng, 1, 20)
  total = k * quotient
  question = _pick(rng, (
    f"{name} shares {total} {obj} equally among {k} friends. How many {obj} does each friend get?",
    f"{total} {obj} are packed into bags of {k}. How many bags are filled?",
    f"{name} has {total} {obj} and puts them into {k} equal groups. How many {obj} are in each group?",
  ))
  return question, [_eq(total, "/", k, quotient)], quotient


def age_problem(rng: np.random.Generator) -> Problem:
  """Age in n years (a + n), n years ago (a - n), or an older sibling (a + n)."""
  name, other = _two_names(rng)
  a = _int(rng, 2, 20)
  kind = _int(rng, 0, 2)
  if kind == 0:
    n = _int(rng, 1, 20)
    return f"{name} is {a} years old. How old will {name} be in {n} years?", [_eq(a, "+", n, a + n)], a + n
  if kind == 1:
    n = _int(rng, 1, a - 1)
    return f"{name} is {a} years old. How old was {name} {n} years ago?", [_eq(a, "-", n, a - n)], a - n
  n = _int(rng, 1, 20)
  question = f"{name} is {a} years old. {other} is {n} years older than {name}. How old is {other}?"
  return question, [_eq(a, "+", n, a + n)], a + n


def money_problem(rng: np.random.Generator) -> Problem:
  """Buy q items at p dollars each, pay with a 10 or 20 dollar bill: bill - q * p."""
  name = _pick(rng, NAMES)
  singular, plural = _pick(rng, ITEMS)
  bill = _pick(rng, (10, 20))
  quantity = _int(rng, 1, 4)
  price = _int(rng, 1, bill // quantity)
  total = quantity * price
  change = bill - total
  if quantity == 1:
    question = (
      f"{name} buys a {singular} for {price} dollars and pays with a {bill} dollar bill. "
      f"How much change does {name} get?"
    )
    return question, [_eq(bill, "-", price, change)], change
  question = (
    f"{name} buys {quantity} {plural} for {price} dollars each and pays with a {bill} dollar bill. "
    f"How much change does {name} get?"
  )
  return question, [_eq(quantity, "*", price, total), _eq(bill, "-", total, change)], change


def two_step_problem(rng: np.random.Generator) -> Problem:
  """Buy then give away ((a + b) - c), or give away then buy ((a - c) + b)."""
  name, other = _two_names(rng)
  obj = _pick(rng, OBJECTS)
  a, b = _int(rng, 1, 20), _int(rng, 1, 20)
  if _int(rng, 0, 1) == 0:
    c = _int(rng, 1, min(20, a + b))
    mid, result = a + b, a + b - c
    question = _pick(rng, (
      f"{name} has {a} {obj}. {name} buys {b} more and then gives {c} to {other}. "
      f"How many {obj} does {name} have now?",
      f"{name} starts with {a} {obj}, gets {b} more from {other}, then loses {c}. How many {obj} are left?",
    ))
    return question, [_eq(a, "+", b, mid), _eq(mid, "-", c, result)], result
  c = _int(rng, 1, a)
  mid, result = a - c, a - c + b
  question = (
    f"{name} has {a} {obj}, gives {c} to {other}, and then buys {b} more. "
    f"How many {obj} does {name} have now?"
  )
  return question, [_eq(a, "-", c, mid), _eq(mid, "+", b, result)], result


def compare_problem(rng: np.random.Generator) -> Problem:
  """How many more (fewer) does one person have than another: a - b with a > b."""
  name, other = _two_names(rng)
  obj = _pick(rng, OBJECTS)
  a = _int(rng, 2, 20)
  b = _int(rng, 1, a - 1)
  question = _pick(rng, (
    f"{name} has {a} {obj}. {other} has {b} {obj}. How many more {obj} does {name} have than {other}?",
    f"{name} has {a} {obj} and {other} has {b}. How many fewer {obj} does {other} have than {name}?",
    f"{name} read {a} pages and {other} read {b} pages. How many more pages did {name} read than {other}?",
  ))
  return question, [_eq(a, "-", b, a - b)], a - b


def perimeter_problem(rng: np.random.Generator) -> Problem:
  """Perimeter of a rectangle (2 * (l + w)) or of a square (4 * s)."""
  name = _pick(rng, NAMES)
  place = _pick(rng, PLACES)
  if _int(rng, 0, 3) == 0:
    side = _int(rng, 1, 20)
    question = f"A square {place} has sides of {side} meters. What is its perimeter in meters?"
    return question, [_eq(4, "*", side, 4 * side)], 4 * side
  length, width = _int(rng, 1, 20), _int(rng, 1, 20)
  half = length + width
  question = _pick(rng, (
    f"A rectangular {place} is {length} meters long and {width} meters wide. What is its perimeter in meters?",
    f"A rectangle has length {length} and width {width}. What is its perimeter?",
    f"{name} puts a fence around a rectangular {place} that is {length} meters by {width} meters. "
    f"How many meters of fence are needed?",
  ))
  return question, [_eq(length, "+", width, half), _eq(2, "*", half, 2 * half)], 2 * half


FAMILIES: dict[str, Callable[[np.random.Generator], Problem]] = {
  "add": add_problem,
  "subtract": subtract_problem,
  "multiply": multiply_problem,
  "divide": divide_problem,
  "age": age_problem,
  "money": money_problem,
  "two_step": two_step_problem,
  "compare": compare_problem,
  "perimeter": perimeter_problem,
}
PRETRAIN_FAMILIES = ("add", "subtract", "multiply", "divide", "age", "money")
FINETUNE_FAMILIES = ("two_step", "compare", "perimeter")  # held-out problem formats
TEMPLATES = ("pretrain", "finetune")


@dataclasses.dataclass(frozen=True)
class Example:
  """One problem rendered in a template: the model sees `prompt`, is trained on `response`."""

  prompt: str
  response: str
  answer: str
  family: str


def render(question: str, steps: Sequence[str], answer: int, family: str, template: str) -> Example:
  """Returns the Example of one problem in the "pretrain" or "finetune" template."""
  solution = " ".join(steps)
  if template == "pretrain":
    return Example(f"Question: {question}\n", f"Answer: {solution}\n#### {answer}", str(answer), family)
  if template == "finetune":
    return Example(f"Problem: {question}\nSolution:", f" {solution}\nThe answer is {answer}.", str(answer), family)
  raise ValueError(f"unknown template {template!r}; expected one of {TEMPLATES}")


def _check_families(families: Sequence[str]) -> None:
  if not families:
    raise ValueError("need at least one family")
  unknown = [f for f in families if f not in FAMILIES]
  if unknown:
    raise ValueError(f"unknown families {unknown}; known: {sorted(FAMILIES)}")


def _stream(families: Sequence[str], rng: np.random.Generator, template: str) -> Iterator[Example]:
  """Yields examples forever, cycling round-robin over `families`."""
  _check_families(families)
  i = 0
  while True:
    family = families[i % len(families)]
    question, steps, answer = FAMILIES[family](rng)
    yield render(question, steps, answer, family, template)
    i += 1


def make_examples(families: Sequence[str], n: int, seed: int, template: str = "finetune") -> list[Example]:
  """Returns `n` examples cycling round-robin over `families`; the same seed gives the same list."""
  if template not in TEMPLATES:
    raise ValueError(f"unknown template {template!r}; expected one of {TEMPLATES}")
  stream = _stream(tuple(families), np.random.default_rng(seed), template)
  return [next(stream) for _ in range(n)]


def question_of(example: Example) -> str:
  """Returns the question text of an example in either template."""
  for head, tail in (("Question: ", "\n"), ("Problem: ", "\nSolution:")):
    if example.prompt.startswith(head) and example.prompt.endswith(tail):
      return example.prompt[len(head):len(example.prompt) - len(tail)]
  raise ValueError(f"prompt in no known template: {example.prompt!r}")


def _take_unique(stream: Iterator[Example], n: int, exclude: set[str], what: str) -> list[Example]:
  """Returns the next `n` examples of `stream` whose question is neither in `exclude` nor repeated."""
  seen, out = set(exclude), []
  for _ in range(50 * n + 1000):
    if len(out) == n:
      break
    example = next(stream)
    question = question_of(example)
    if question not in seen:
      seen.add(question)
      out.append(example)
  if len(out) < n:
    raise ValueError(f"could only draw {len(out)} distinct {what} questions of {n}")
  return out


def make_splits(seed: int, n_pretrain: int, n_finetune: int, n_eval: int,
                pretrain_template: str = "pretrain", pretrain_mix: float = 0.0) -> dict[str, list[Example]]:
  """Returns {"pretrain", "finetune", "eval"} example lists.

  "pretrain": PRETRAIN_FAMILIES in `pretrain_template`, except that a share `pretrain_mix` of its examples
  (evenly spaced) are FINETUNE_FAMILIES problems in the finetune template, so that the base model already
  solves some of the fine-tuning task (as a strong base model does); none of them is an eval question.
  "finetune" and "eval": the held-out FINETUNE_FAMILIES in the finetune template; eval questions are
  distinct, and no eval question appears in finetune (finetune may repeat itself). pretrain_mix = 0 gives the
  lists of earlier versions exactly.
  """
  if min(n_pretrain, n_finetune, n_eval) < 0:
    raise ValueError("split sizes must be >= 0")
  if not 0.0 <= pretrain_mix < 1.0:
    raise ValueError(f"data.synthetic.pretrain_mix={pretrain_mix} must lie in [0, 1)")
  root = np.random.SeedSequence(seed)
  # Children 0-2 are those of earlier versions (spawn(4) extends spawn(3)); child 3 draws the mixed-in problems.
  pretrain_rng, finetune_rng, eval_rng, mix_rng = (np.random.default_rng(s) for s in root.spawn(4))
  pretrain = _stream(PRETRAIN_FAMILIES, pretrain_rng, pretrain_template)
  eval_set = _take_unique(_stream(FINETUNE_FAMILIES, eval_rng, "finetune"), n_eval, set(), "eval")
  eval_questions = {question_of(e) for e in eval_set}
  finetune, stream = [], _stream(FINETUNE_FAMILIES, finetune_rng, "finetune")
  for _ in range(50 * n_finetune + 1000):
    if len(finetune) == n_finetune:
      break
    example = next(stream)
    if question_of(example) not in eval_questions:
      finetune.append(example)
  if len(finetune) < n_finetune:
    raise ValueError(f"could only draw {len(finetune)} finetune examples outside eval of {n_finetune}")
  mixed = _stream(FINETUNE_FAMILIES, mix_rng, "finetune")
  pretrain_examples = []
  for i in range(n_pretrain):
    if pretrain_mix > 0 and int((i + 1) * pretrain_mix) > int(i * pretrain_mix):
      example = next(mixed)
      while question_of(example) in eval_questions:
        example = next(mixed)
      pretrain_examples.append(example)
    else:
      pretrain_examples.append(next(pretrain))
  return {"pretrain": pretrain_examples, "finetune": finetune, "eval": eval_set}


def as_records(examples: Sequence[Example], split: str) -> list[dict]:
  """Returns `examples` as canonical SFT records (the dicts every source yields; see rankjax.data.formatting)."""
  return [{"prompt": ex.prompt, "response": ex.response, "messages": "", "answer": ex.answer,
           "source_file": f"synthetic/{split}", "source_index": i, "error": ""} for i, ex in enumerate(examples)]

