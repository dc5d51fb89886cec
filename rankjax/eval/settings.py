"""The settings of a sampled math evaluation (what `configs/eval_math.py` and a train config's `eval` hold).

Defaults are the paper's protocol: n = 16 samples per problem at temperature 1.0, top-p 1.0, up to 4096
new tokens, the Qwen2.5-Math CoT prompt, graded by math-verify, Pass@1 and Pass@16 on MATH500, Minerva
Math, OlympiadBench, AIME24 and AMC23.
"""

from __future__ import annotations

import dataclasses
import re

import ml_collections

from rankjax.models.errors import ConfigError

PAPER_BENCHMARKS = "math500,minerva_math,olympiadbench,aime24,amc23"
PROMPTS = ("auto", "chat_cot", "plain")
BUILTIN_BENCHMARKS = ("gsm8k", "aime24", "amc23", "math500", "minerva_math", "olympiadbench", "synthetic")


def default_config() -> ml_collections.ConfigDict:
  """Returns the sampling-evaluation fields, set to the paper's protocol."""
  c = ml_collections.ConfigDict()
  # Comma list: built-in sets (BUILTIN_BENCHMARKS; "synthetic" = the synthetic corpus's held-out split) or
  # NAME=PATH for a JSONL file of problems and gold answers (fields `data.problem_field` / `data.answer_field`).
  c.benchmarks = PAPER_BENCHMARKS
  c.num_problems = 0  # the first N problems of each benchmark; 0 = all
  c.num_samples = 16  # samples per problem (n)
  c.temperature = 1.0  # 0 = greedy (then use num_samples = 1)
  c.top_p = 1.0
  c.top_k = 0  # 0 = off
  c.max_new_tokens = 4096
  c.batch_size = 64  # decode slots of the sampling engine (samples generated at once, global over devices)
  c.seed = 0  # sample j of problem i of benchmark b uses key fold_in(fold_in(fold_in(seed, b), i), j)
  c.pass_k = (1, 16)  # Pass@k reported for each k <= num_samples
  # "auto": the checkpoint's chat template with the Qwen2.5-Math CoT system prompt when its tokenizer has one
  # and it was not trained with the plain format, else the plain template. "chat_cot" / "plain" force one.
  c.prompt = "auto"
  c.plain_template = ""  # "plain": "" = the template the checkpoint was trained with ("Question: {prompt}\nAnswer: ")
  c.grading = ml_collections.ConfigDict({
      "timeout_s": 5.0,  # per answer; a pathological expression is graded wrong after it
      # grading processes; 0 = min(CPU count, 8). Never in-process: a worker is killed when a grading passes its timeout
      "workers": 0})
  c.data = ml_collections.ConfigDict({
      "gsm8k_dir": "",  # holds test.jsonl (configs/eval_math.py: ../shared/data/gsm8k)
      "math_eval_dir": "",  # holds <set>/test.jsonl, math500 included (configs/eval_math.py: ../shared/data/math_eval)
      "tfds_data_dir": "",  # where the sets are prepared; "": WORKDIR/tfds
      "problem_field": "problem",  # NAME=PATH sets: the problem text ...
      "answer_field": "answer"})  # ... and the gold answer
  c.progress = True  # progress bar (samples/s, ETA) on stderr
  return c


@dataclasses.dataclass(frozen=True)
class BenchmarkSpec:
  """One benchmark of `benchmarks`: a built-in name, or a user's JSONL file (`path` set)."""

  name: str
  path: str = ""


def parse_benchmarks(text: str) -> list[BenchmarkSpec]:
  """Returns the benchmarks of a comma list ("aime24,mine=/data/mine.jsonl"); ValueError naming a bad item."""
  specs = []
  for item in (t.strip() for t in str(text).split(",")):
    if not item:
      continue
    name, sep, path = item.partition("=")
    name = name.strip()
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
      raise ConfigError(f"eval config: benchmarks item {item!r}: the name must be letters, digits, _ . -")
    if not sep and name not in BUILTIN_BENCHMARKS:
      raise ConfigError(f"eval config: unknown benchmark {name!r}; built-in: {BUILTIN_BENCHMARKS}, or give "
                        f"NAME=PATH for a JSONL file of problems and answers")
    if sep and not path.strip():
      raise ConfigError(f"eval config: benchmarks item {item!r} has no path after '='")
    specs.append(BenchmarkSpec(name, path.strip()))
  names = [s.name for s in specs]
  if len(set(names)) != len(names):
    raise ConfigError(f"eval config: benchmarks {names} name a set twice")
  if not specs:
    raise ConfigError("eval config: benchmarks is empty")
  return specs


def validate(config) -> None:
  """Raises ConfigError naming the field for settings no evaluation can use."""
  parse_benchmarks(config.benchmarks)
  for field in ("num_samples", "max_new_tokens", "batch_size"):
    if int(config[field]) <= 0:
      raise ConfigError(f"eval config: {field}={config[field]} must be positive")
  if int(config.num_problems) < 0:
    raise ConfigError(f"eval config: num_problems={config.num_problems} must be >= 0 (0 = all)")
  if config.prompt not in PROMPTS:
    raise ConfigError(f"eval config: prompt={config.prompt!r} is not one of {PROMPTS}")
  ks = pass_ks(config)
  if not ks:
    raise ConfigError(f"eval config: pass_k={tuple(config.pass_k)} has no k in [1, num_samples={config.num_samples}]")
  if float(config.grading.timeout_s) <= 0 or int(config.grading.workers) < 0:
    raise ConfigError(f"eval config: grading.timeout_s={config.grading.timeout_s} must be > 0 and "
                      f"grading.workers={config.grading.workers} >= 0")
  if config.plain_template and "{prompt}" not in config.plain_template:
    raise ConfigError(f"eval config: plain_template={config.plain_template!r} has no {{prompt}} field")


def pass_ks(config) -> tuple[int, ...]:
  """Returns the sorted distinct k of config.pass_k that can be estimated from num_samples samples."""
  try:
    ks = [int(k) for k in config.pass_k]
  except (TypeError, ValueError):
    raise ConfigError(f"eval config: pass_k={config.pass_k!r} must be a list of ints") from None
  return tuple(sorted({k for k in ks if 1 <= k <= int(config.num_samples)}))
