"""The one extractor of a final answer from math text: gold solutions and model completions alike.

`extract_answer` looks, in order of precedence, for the last `\\boxed{...}` / `\\fbox{...}`, then GSM8K's
`#### x`, then "the answer is x" / "the final answer is x". It scans with `str.find`/`str.rfind` and a
brace counter (one small regular expression, on the answer only), so it runs in linear time on any input
and never raises.

Its users: the gold answers of the file sources (rankjax.data.tfds_builders: GSM8K's "####" line, the last
box of a NuminaMath or Minerva solution), grading of sampled completions (rankjax.eval.grading, harness) and
the synthetic corpus's exact-match accuracy (rankjax.eval.answer_accuracy). One function, so a gold answer
and a model's answer written the same way are always cut the same way.
"""

from __future__ import annotations

import re

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_PHRASES = ("the final answer is", "the answer is")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_DELIMITERS = (("\\(", "\\)"), ("\\[", "\\]"), ("$$", "$$"), ("$", "$"), ("**", "**"))
_GROUPED_NUMBER = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")  # 1,234 or -12,345.5: commas group thousands


def _box_commands(text: str) -> list[tuple[int, int]]:
  """Returns (start, end) of every `\\boxed` / `\\fbox` command in `text`, sorted by start.

  A command directly followed by a letter (`\\boxedfoo`) is another command and is left out.
  """
  found = []
  for command in _BOX_COMMANDS:
    i = text.find(command)
    while i >= 0:
      end = i + len(command)
      if end >= len(text) or not text[end].isalpha():
        found.append((i, end))
      i = text.find(command, end)
  found.sort()
  return found


def _braces(text: str, start: int):
  """Yields (index, is_open) for every "{" and "}" in `text[start:]`, in order.

  Each `str.find` resumes where the previous one for that character stopped, so the scan is linear.
  """
  i_open, i_close = text.find("{", start), text.find("}", start)
  while i_open >= 0 or i_close >= 0:
    if i_close < 0 or 0 <= i_open < i_close:
      yield i_open, True
      i_open = text.find("{", i_open + 1)
    else:
      yield i_close, False
      i_close = text.find("}", i_close + 1)


def _matching_braces(text: str, start: int) -> dict[int, int]:
  """Returns {index of "{": index of its matching "}"} for the balanced braces in `text[start:]`.

  One pass with a stack; an opening brace that is never closed is absent from the result.
  """
  matches: dict[int, int] = {}
  stack: list[int] = []
  for i, is_open in _braces(text, start):
    if is_open:
      stack.append(i)
    elif stack:
      matches[stack.pop()] = i
  return matches


def _close_of(text: str, i_open: int) -> int:
  """Returns the index of the "}" matching `text[i_open] == "{"`, or -1 if it is never closed."""
  depth = 0
  for i, is_open in _braces(text, i_open):
    depth += 1 if is_open else -1
    if depth == 0:
      return i
  return -1


def _box_argument(text: str, end: int, close_of) -> str | None:
  """Returns the argument of the box command ending at `end`, or None if it has none that can be read.

  `{...}` gives the content up to the matching brace (stripped; "" for an empty box); otherwise the next
  whitespace-delimited token with trailing `$`/`.` removed (`\\boxed 12.` gives "12").
  """
  j = end
  while j < len(text) and text[j] in " \t":
    j += 1
  if j < len(text) and text[j] == "{":
    k = close_of(j)
    return None if k < 0 else text[j + 1:k].strip()
  k = j
  while k < len(text) and not text[k].isspace():
    k += 1
  token = text[j:k].rstrip("$.")
  return token or None


def _last_box(text: str) -> str | None:
  """Returns the argument of the last box command whose argument can be read, or None.

  Usually the last box is balanced and only its own braces are counted. If it is not (a truncated
  completion), one pass over the braces finds the earlier boxes' arguments, so the whole is linear time.
  """
  boxes = _box_commands(text)
  if not boxes:
    return None
  answer = _box_argument(text, boxes[-1][1], lambda j: _close_of(text, j))
  if answer is not None:
    return answer
  matches = _matching_braces(text, boxes[0][1])
  for _, end in reversed(boxes[:-1]):
    answer = _box_argument(text, end, lambda j: matches.get(j, -1))
    if answer is not None:
      return answer
  return None


def _gsm8k(text: str) -> str | None:
  """Returns the text after the last `####` up to the end of its line, stripped of whitespace and a trailing
  period; None without `####` or when nothing follows it on its line (a bare marker states no answer).

  The lines after it are left out: GSM8K puts the marker on the last line, and what a model writes after its
  answer line is not the answer."""
  i = text.rfind("####")
  if i < 0:
    return None
  line = text[i + 4:].split("\n", 1)[0]
  return line.strip().rstrip(".").strip() or None


def _strip_delimiters(answer: str) -> str:
  """Returns `answer` without one pair of surrounding math/markdown delimiters (`$`, `\\(`, `**`...)."""
  for left, right in _DELIMITERS:
    if len(answer) >= len(left) + len(right) and answer.startswith(left) and answer.endswith(right):
      return answer[len(left):len(answer) - len(right)].strip()
  return answer


def _answer_phrase(text: str) -> str | None:
  """Returns x of the last "the answer is x" / "the final answer is x" (case-insensitive), or None.

  x runs to the end of the line or sentence (a "." followed by whitespace), with a leading ":", surrounding
  `$`/`\\(...\\)`/`**` and a trailing period removed.
  """
  lower = text.translate(_ASCII_LOWER)  # ASCII only: keeps indices aligned with `text`
  best = -1
  for phrase in _PHRASES:
    i = lower.rfind(phrase)
    if i >= 0:
      best = max(best, i + len(phrase))
  if best < 0:
    return None
  rest = text[best:].split("\n", 1)[0]
  for k in range(len(rest) - 1):
    if rest[k] == "." and rest[k + 1].isspace():
      rest = rest[:k]
      break
  answer = rest.strip().lstrip(":").strip().rstrip(".").strip()
  answer = _strip_delimiters(answer).rstrip(".").strip()
  return answer.strip("$").strip()


def _ungroup_thousands(answer: str) -> str:
  """Returns `answer` without its commas when it is one number with commas grouping thousands ("1,234" ->
  "1234"); anything else ("1,2", "(1,234)", "69,84") is left as it is, since there a comma separates values."""
  return answer.replace(",", "") if _GROUPED_NUMBER.fullmatch(answer) else answer


def extract_answer(completion: str) -> str | None:
  """Returns the final answer stated in `completion`, or None if it states none.

  Precedence: the last `\\boxed{...}`/`\\fbox{...}` (nested braces counted; `\\boxed 5` takes the next
  token without a trailing `$` or period); else the text after the last `####` up to the end of its line,
  without a trailing period (GSM8K's marker; a markdown heading `#### Step 2` matches it too and then grades
  wrong; a `####` with nothing after it on its line is skipped); else x of the last "the answer is x" /
  "the final answer is x". The text inside a box is kept as written (stripped). A single number whose commas
  group thousands loses them ("1,234" -> "1234"), whichever rule found it. An empty box `\\boxed{}` gives ""
  rather than falling through to the other rules: the writer did mark its final answer, and an empty answer
  is graded wrong. A box whose brace is never closed (a truncated completion) is skipped in favour of an
  earlier one. Never raises; a non-str `completion` gives None. Linear time in len(completion).
  """
  if not isinstance(completion, str):
    return None
  try:
    for rule in (_last_box, _gsm8k, _answer_phrase):
      answer = rule(completion)
      if answer is not None:
        return _ungroup_thousands(answer)
  except Exception:  # noqa: BLE001 -- contract: never raise on model output
    return None
  return None
