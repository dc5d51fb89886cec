"""The problems of an evaluation benchmark: canonical records with their gold answers, read through the TFDS builders.

Built-in sets: GSM8K test (`gsm8k_local`), AIME24, AMC23, MATH500, Minerva Math and OlympiadBench
(`math_eval/<set>`), the synthetic corpus's held-out split; a NAME=PATH set is a user's JSONL file of
problems and answers (`sft_jsonl` with the configured field mapping, no response needed).
"""

from __future__ import annotations

import dataclasses
import os

from rankjax.data import sources, synthetic, tfds_builders
from rankjax.eval.settings import BenchmarkSpec


@dataclasses.dataclass(frozen=True)
class Problem:
  """One problem: its benchmark, its index in the set's file order, its canonical record and gold answer."""

  benchmark: str
  index: int
  record: dict
  gold: str


def _user_set_dir(spec: BenchmarkSpec, data_dir: str) -> str:
  """A manual dir holding the user's file as test.jsonl (a directory is used as it is; a file is linked)."""
  path = os.path.abspath(os.path.expanduser(spec.path))
  if os.path.isdir(path):
    return path
  if not os.path.isfile(path):
    raise FileNotFoundError(f"benchmark {spec.name}: no file or directory at {path}")
  manual = os.path.join(data_dir, "manual", spec.name)
  os.makedirs(manual, exist_ok=True)
  link = os.path.join(manual, "test.jsonl")
  if os.path.realpath(link) != os.path.realpath(path):
    if os.path.lexists(link):
      os.remove(link)
    os.symlink(path, link)
  return manual


def _need_dir(field: str, value: str, name: str) -> str:
  if not value:
    raise ValueError(f"benchmark {name}: set config.data.{field} (the directory of its test.jsonl)")
  return os.path.abspath(os.path.expanduser(value))


def load_records(spec: BenchmarkSpec, data_config, data_dir: str, synthetic_config=None):
  """Returns the random-access canonical records of one benchmark (all of them, in file order).

  `data_config` is the eval config's `data` group; `data_dir` where TFDS prepares the sets;
  `synthetic_config` the data config whose synthetic corpus "synthetic" means (default: the default corpus).
  """
  if spec.path:
    manual = _user_set_dir(spec, data_dir)
    return tfds_builders.load_source("sft_jsonl", "test", manual, data_dir, name=f"eval_{spec.name}",
                                     prompt_field=data_config.problem_field, response_field="",
                                     answer_field=data_config.answer_field)
  if spec.name == "synthetic":
    config = synthetic_config if synthetic_config is not None else sources.default_config()
    return synthetic.as_records(sources.synthetic_splits(config)["eval"], "eval")
  if spec.name == "gsm8k":
    return tfds_builders.load_source("gsm8k_local", "test", _need_dir("gsm8k_dir", data_config.gsm8k_dir, "gsm8k"),
                                     data_dir)
  return tfds_builders.load_source(f"math_eval/{spec.name}", "test",
                                   _need_dir("math_eval_dir", data_config.math_eval_dir, spec.name), data_dir)


def load_problems(spec: BenchmarkSpec, data_config, data_dir: str, num_problems: int = 0,
                  synthetic_config=None) -> list[Problem]:
  """Returns the first `num_problems` (0 = all) problems of a benchmark that have a gold answer.

  Records the builders flagged as unusable (no gold answer, bad fields) are skipped; their indices are
  not reused, so problem i is always the set's i-th record. ValueError when no problem has an answer.
  """
  records = load_records(spec, data_config, data_dir, synthetic_config)
  n = len(records) if num_problems <= 0 else min(num_problems, len(records))
  problems = []
  for i in range(n):
    record = records[i]
    gold = str(record.get("answer") or "").strip()
    if record.get("error") or not gold:
      continue
    problems.append(Problem(spec.name, i, record, gold))
  if not problems:
    raise ValueError(f"benchmark {spec.name}: none of its first {n} records has a gold answer "
                     f"(answer field {data_config.answer_field!r} for a NAME=PATH set)")
  return problems
