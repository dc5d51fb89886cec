"""Grading of math completions against a gold answer by mathematical equivalence (math-verify).

`grade` grades one completion in this process; `GradingPool` / `grade_many` grade many in worker processes
that are killed when a grading hangs or crashes (math-verify's own signal-based timeout cannot interrupt
C-level work such as big-integer arithmetic), so one pathological answer costs one False, never the run.

The workers are started with "spawn" (never "fork": the parent is usually a multi-threaded JAX process) and
import only this module, rankjax.data.answers and math_verify. This module imports neither jax nor sympy at
import time: math_verify is imported on the first grading, pebble when a pool starts.
"""

from __future__ import annotations

import decimal
import math
import multiprocessing
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import Self

from rankjax.data.answers import extract_answer

GradeFn = Callable[[str, str, float], bool]

_HARD_TIMEOUT_MARGIN_S = 2.0  # a worker is killed this long after timeout_s
_CHUNK_SIZE = 8  # gradings per pool task; a chunk that fails is retried one grading per task
_MAX_ANSWER_CHARS = 2000  # a longer "final answer" is graded wrong without parsing it

_THIN_SPACE_THOUSANDS = re.compile(r"(?<=\d)\\[,;! ](?=\d{3}(?!\d))")  # 1\,000 -> 1000
_SPACE_THOUSANDS = re.compile(r"-?\d{1,3}(?: \d{3})+(?:\.\d+)?")  # 1 000 000
_NUMBER = re.compile(r"(?:-|\\\$|\$)*\d[\d,]*(?:\.\d+)?")  # a leading number: -12, \$1,234.50
_TEXT = re.compile(r"\\(?:text|textbf|mathrm)\{([^{}]*)\}")
_LEADING_NUMBER = re.compile(r"((?:-|\\\$|\$)*)(\d[\d,]*(?:\.\d+)?)(.*)", re.DOTALL)  # sign/currency, digits, tail
_WORD_GROUP = re.compile(r"\\(?:text|textrm|textnormal|textit|mbox|mathrm|operatorname)\s*\{([^{}]*)\}")
_LATEX_SPACE = re.compile(r"\\(?:[,;:! ]|quad|qquad)|~")
# Words that scale the number before them: "5 million" is 5000000, never 5 (math-verify alone drops a word or a
# `\text{ million}` after a number as if it were a unit). Plurals are accepted ("5 thousands").
MULTIPLIERS = {"hundred": 10 ** 2, "thousand": 10 ** 3, "lakh": 10 ** 5, "million": 10 ** 6, "crore": 10 ** 7,
               "billion": 10 ** 9, "trillion": 10 ** 12, "quadrillion": 10 ** 15, "dozen": 12}
# Words that divide the number before them ("5 thirds", "3 hundredths"): never dropped as units either.
FRACTION_WORDS = {"half", "halve", "third", "quarter", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth",
                  "tenth", "hundredth", "thousandth", "millionth", "billionth"}


def _is_unit_word(word: str) -> bool:
  """Returns whether `word` may be dropped after a number as a unit ("apples", "dollars"): three or more letters,
  and neither a multiplier nor a fraction word."""
  base = word.lower().removesuffix("s")
  return word.isalpha() and len(word) >= 3 and base not in MULTIPLIERS and base not in FRACTION_WORDS


def _tail_words(tail: str) -> list[str] | None:
  """Returns the words of the text after a number, `\\text{...}` / `\\mbox{...}` groups unwrapped and LaTeX
  spaces (`\\,`, `~`, `\\quad`) read as spaces; None when anything but plain words is left."""
  words = _LATEX_SPACE.sub(" ", _WORD_GROUP.sub(lambda m: f" {m.group(1)} ", tail)).split()
  return None if any("\\" in w or "{" in w or "}" in w for w in words) else words


def _scaled_number(answer: str) -> str | None:
  """Returns a number followed by multiplier words as the plain number they make, with any unit words after them
  dropped: "5 million" -> "5000000", "\\$2.5\\text{ thousand dollars}" -> "\\$2500", "3 dozen eggs" -> "36".
  A number followed by a fraction word keeps its words as plain text ("5\\text{ thirds}" -> "5 thirds"), which
  math-verify cannot drop as a unit. None when `answer` is neither (it is then left to `_normalise`'s other rules).
  Exact (decimal arithmetic)."""
  match = _LEADING_NUMBER.fullmatch(answer)
  words = _tail_words(match.group(3)) if match else None
  if not words:
    return None
  bases = [w.lower().removesuffix("s") for w in words]
  if bases[0] not in MULTIPLIERS:
    return " ".join([match.group(1) + match.group(2), *words]) if FRACTION_WORDS & set(bases) else None
  value = decimal.Decimal(match.group(2).replace(",", ""))
  with decimal.localcontext(prec=2 * _MAX_ANSWER_CHARS):  # enough digits for any answer that is graded: exact
    while words and words[0].lower().removesuffix("s") in MULTIPLIERS:
      value *= MULTIPLIERS[words.pop(0).lower().removesuffix("s")]
  digits = str(int(value)) if value == value.to_integral_value() else format(value.normalize(), "f")
  number = match.group(1) + digits
  if all(_is_unit_word(w) for w in words):  # unit words, as for a number without a multiplier
    return number
  return " ".join([number, *words])


def _normalise(answer: str) -> str:
  """Returns `answer` with what math-verify misreads rewritten.

  Thousands separated by a LaTeX thin space (`1\\,000`) or by spaces (`1 000`) become plain digits; a whole
  `\\text{...}` that starts with a number (`\\text{5 cm}`) is unwrapped; a number followed by multiplier words
  (`5 million`, `5\\text{ thousand}`, `3 dozen`; see MULTIPLIERS) becomes the number they make (`5000000`), since
  math-verify would drop the word as a unit and grade "5 million" equal to 5; a number followed only by other
  words of three or more letters (`18 dollars`) becomes the number (math-verify would read the words as a product
  of symbols; shorter words are left to math-verify's own unit handling: `5 cm`), unless one is a fraction word
  (`5 thirds`, see FRACTION_WORDS), which is left to math-verify too.
  """
  answer = _THIN_SPACE_THOUSANDS.sub("", answer.strip())
  text = _TEXT.fullmatch(answer)
  if text and _NUMBER.match(text.group(1).strip()):
    answer = text.group(1).strip()
  if _SPACE_THOUSANDS.fullmatch(answer):
    return answer.replace(" ", "")
  scaled = _scaled_number(answer)
  if scaled is not None:
    return scaled
  words = answer.split()
  if len(words) >= 2 and _NUMBER.fullmatch(words[0]) and all(_is_unit_word(w) for w in words[1:]):
    return words[0]
  return answer


def _balanced(text: str) -> bool:
  """Returns whether every "{" in `text` is closed by a later "}" and no "}" closes nothing."""
  depth = 0
  for ch in text:
    if ch == "{":
      depth += 1
    elif ch == "}":
      depth -= 1
      if depth < 0:
        return False
  return depth == 0


def _parse(answer: str, deadline: float | None) -> list:
  """Returns math-verify's parse of `answer` (sympy objects and/or the raw string; [] if nothing is found).

  The answer is wrapped as `\\boxed{...}`, or as `$...$` if its braces do not balance or the box gives no
  sympy object, so plain-text numbers and LaTeX both parse; never the bare text, from which math-verify would
  pick any number out of prose. `deadline` (time.monotonic) bounds each attempt with
  math-verify's signal timeout; None runs without a timeout.
  """
  from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

  config = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
  wrapped = ["\\boxed{" + answer + "}"] if _balanced(answer) else []
  wrapped += ["$" + answer + "$"]
  parsed: list = []
  for text in wrapped:
    timeout = _seconds_left(deadline)
    if timeout == 0:
      break
    result = parse(text, extraction_config=config, parsing_timeout=timeout)
    if any(not isinstance(r, str) for r in result):
      return result
    parsed = parsed or result
  return parsed


def _seconds_left(deadline: float | None) -> int | None:
  """Returns whole seconds (at least 1) until `deadline` for signal.alarm, 0 if it has passed, None if none."""
  if deadline is None:
    return None
  left = deadline - time.monotonic()
  return 0 if left <= 0 else max(1, math.ceil(left))


def grade_answer(answer: str, gold: str, timeout_s: float = 5.0) -> bool:
  """Returns whether the already-extracted `answer` is mathematically equivalent to `gold`.

  Both are normalised (see `_normalise`) and parsed with math-verify, then compared with
  `verify(gold, answer)` (gold first: math-verify is not symmetric), allowing an inequality to match an
  interval either way round (`x \\le 3` equals `(-\\infty, 3]`). False for an empty answer, an answer
  over 2000 characters, a parse failure, or when math-verify's timeout (about `timeout_s` in all) expires.
  The timeout uses SIGALRM, so it only works on the main thread; on any other thread this runs without a
  timeout (use `GradingPool` there). Never raises for any str input (an ImportError of math-verify is raised:
  a broken setup must not pass for wrong answers).
  """
  from math_verify import verify
  from math_verify.errors import TimeoutException

  try:
    if not isinstance(answer, str) or not answer.strip() or len(answer) > _MAX_ANSWER_CHARS:
      return False
    on_main = threading.current_thread() is threading.main_thread()
    deadline = time.monotonic() + timeout_s if on_main else None
    gold_parsed = _parse(_normalise(str(gold)), deadline)
    answer_parsed = _parse(_normalise(answer), deadline)
    timeout = _seconds_left(deadline)
    if not gold_parsed or not answer_parsed or timeout == 0:
      return False
    return bool(verify(gold_parsed, answer_parsed, allow_set_relation_comp=True, timeout_seconds=timeout))
  except (Exception, TimeoutException):  # noqa: BLE001 -- a grading that fails is a wrong answer
    return False


def grade(completion: str, gold: str, timeout_s: float = 5.0) -> bool:
  """Returns whether the final answer of `completion` (see `extract_answer`) is equivalent to `gold`.

  False when no answer (or an empty one) is found, or when grading takes longer than about `timeout_s`.
  On the main thread it grades in this process under math-verify's signal timeout (which interrupted every
  pathological expression tried, e.g. `9^{9^{9^9}}`); on any other thread, where no signal can be used, it
  hands the grading to a shared one-worker `GradingPool`, whose worker is killed if it hangs. For many
  completions use `grade_many` / `GradingPool`.
  """
  answer = extract_answer(completion)
  if not answer:
    return False
  if threading.current_thread() is threading.main_thread():
    return grade_answer(answer, gold, timeout_s)
  return _thread_pool().grade_many([(completion, gold)], timeout_s)[0]


_SHARED_POOL = None
_SHARED_POOL_LOCK = threading.Lock()


def _thread_pool() -> GradingPool:
  """The one-worker pool `grade` uses off the main thread (started on first use, stopped at exit)."""
  global _SHARED_POOL
  with _SHARED_POOL_LOCK:
    if _SHARED_POOL is None:
      import atexit  # noqa: PLC0415
      _SHARED_POOL = GradingPool(1)
      atexit.register(_SHARED_POOL.close)
    return _SHARED_POOL


def _warm_up() -> None:
  """Imports math-verify and grades one answer, so a worker's first task does not pay for the imports.

  Raises if math-verify cannot be imported: the pool then reports BrokenProcessPool instead of grading."""
  if not grade_answer("1", "1", 5.0):
    raise RuntimeError("grading worker: math-verify does not grade 1 == 1 as equal")


def _grade_chunk(fn: GradeFn, items: Sequence[tuple[str, str]], timeout_s: float) -> list[bool]:
  """Returns [fn(answer, gold, timeout_s) for each item], False where fn ran out of memory or recursion depth:
  the body of one pool task."""
  verdicts = []
  for answer, gold in items:
    try:
      verdicts.append(bool(fn(answer, gold, timeout_s)))
    except (MemoryError, RecursionError):
      verdicts.append(False)
  return verdicts


def default_workers() -> int:
  """Returns the default number of grading processes: min(cpu count, 8)."""
  return min(os.cpu_count() or 1, 8)


class GradingPool:
  """Worker processes that grade (completion, gold) pairs, reused across calls; use as a context manager.

  Each pool task grades up to 8 pairs and is killed `timeout_s + 2` seconds after it starts; a task that
  times out or whose worker dies (os._exit, segfault) is retried one pair per task, and a pair that times
  out, crashes its worker or runs out of memory on its own is graded False. The pool replaces dead workers
  and keeps working. Other errors (from `fn`, or workers that cannot start) are raised, not graded False.

  Args:
    workers: number of processes (>= 1); None -> min(cpu count, 8). There is no in-process mode: 0 is refused
      (ValueError), since grading in the calling process has no timeout that can stop it (math-verify's SIGALRM
      one works on the main thread only, and C-level work such as big-integer arithmetic outlasts it), so one
      pathological answer could hang an evaluation. `grade` on the main thread is the in-process path.
    timeout_s: time limit for one grading, enforced by killing the worker.
    fn: picklable module-level `fn(answer, gold, timeout_s) -> bool` run instead of `grade_answer` (a test hook).
  """

  def __init__(self, workers: int | None = None, timeout_s: float = 5.0, fn: GradeFn | None = None):
    if workers is None:
      workers = default_workers()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
      raise ValueError(f"GradingPool: workers must be an int >= 1 (or None for min(cpu count, 8)), got {workers!r}; "
                       "grading in this process (0 workers) has no timeout that can stop a hung grading")
    if timeout_s <= 0:
      raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    self.workers = workers
    self.timeout_s = timeout_s
    self._fn = fn or grade_answer
    self._closed = False
    self.lost = 0  # pairs graded False because their grading timed out or crashed its worker
    import pebble

    self._pool = pebble.ProcessPool(
      max_workers=workers, initializer=_warm_up if fn is None else None,
      context=multiprocessing.get_context("spawn"))

  def grade_many(self, pairs: Sequence[tuple[str, str]], timeout_s: float | None = None) -> list[bool]:
    """Returns one verdict per (completion, gold) pair, in the order of `pairs` (see `grade`).

    `timeout_s` overrides the pool's limit for this call.
    """
    if self._closed:
      raise RuntimeError("GradingPool is closed")
    timeout_s = self.timeout_s if timeout_s is None else timeout_s
    verdicts = [False] * len(pairs)
    todo = []  # (index, answer, gold) of the pairs that have an answer to grade
    for i, (completion, gold) in enumerate(pairs):
      answer = extract_answer(completion)
      if answer:
        todo.append((i, answer, str(gold)))
    chunks = [todo[k:k + _CHUNK_SIZE] for k in range(0, len(todo), _CHUNK_SIZE)]
    retry = []
    for chunk, results in zip(chunks, self._run(chunks, timeout_s)):
      if results is None:
        retry.extend([item] for item in chunk)
      else:
        for (i, _, _), verdict in zip(chunk, results):
          verdicts[i] = verdict
    for chunk, results in zip(retry, self._run(retry, timeout_s)):
      verdicts[chunk[0][0]] = bool(results and results[0])
      self.lost += results is None
    return verdicts

  map = grade_many

  def _run(self, chunks: list[list[tuple[int, str, str]]], timeout_s: float) -> list[list[bool] | None]:
    """Returns, per chunk, its verdicts from a pool task, or None if the task timed out or its worker died.

    Any other error (fn raised, fn cannot be unpickled, the workers cannot start: BrokenProcessPool) is
    raised here rather than graded False, so a broken setup cannot pass for a model that is always wrong.
    """
    from pebble import ProcessExpired

    futures = [
      self._pool.schedule(_grade_chunk, args=(self._fn, [(a, g) for _, a, g in chunk], timeout_s),
                          timeout=timeout_s + _HARD_TIMEOUT_MARGIN_S)
      for chunk in chunks]
    results: list[list[bool] | None] = []
    try:
      for future in futures:
        try:
          results.append(future.result())
        except (TimeoutError, ProcessExpired):
          results.append(None)
    finally:
      for future in futures[len(results):]:
        future.cancel()
    return results


  def close(self) -> None:
    """Stops the worker processes (idempotent); pending gradings are abandoned."""
    self._closed = True
    if self._pool is not None:
      self._pool.stop()
      self._pool.join()
      self._pool = None

  def __enter__(self) -> Self:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def grade_many(pairs: Sequence[tuple[str, str]], timeout_s: float = 5.0, workers: int | None = None) -> list[bool]:
  """Returns one verdict per (completion, gold) pair, in order, graded by a temporary `GradingPool`.

  `workers`: number of processes, >= 1; None -> min(cpu count, 8) (0 is refused: see `GradingPool`).
  """
  with GradingPool(workers=workers, timeout_s=timeout_s) as pool:
    return pool.grade_many(pairs)
