"""The TFDS builders over local files: sft_jsonl, gsm8k_local, numina_math_cot and math_eval (one config per set).

Each is a `tfds.core.GeneratorBasedBuilder` that reads its split files from the manual dir (never downloading
anything) with rankjax.data.tfds_builders.records and emits the canonical record described in
rankjax.data.tfds_builders; gold answers are cut by rankjax.data.answers.extract_answer. Preparing them and
reading them back is rankjax.data.tfds_builders.store.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import math
import os
import pathlib
import re
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from tensorflow_datasets.core.utils import gcs_utils

from rankjax.data.answers import extract_answer
from rankjax.data.formatting import record_location
from rankjax.data.tfds_builders.records import (BadRecord, InvalidLine, RecordFields, check_messages, expected_names,
                                                file_digest, find_split_files, number_text, read_records)
from rankjax.models.errors import DataFileNotFoundError

# Never reach Google Cloud Storage for dataset files or metadata (the default in recent TFDS; made explicit).
gcs_utils._is_gcs_disabled = True

TEXT_FIELDS = ("prompt", "response", "messages", "answer", "source_file", "error")
MATH_EVAL_SETS = ("aime24", "amc23", "math500", "minerva_math", "olympiadbench")  # math500: the user brings its file
_WARN_PER_REASON = 3  # bad records named in the log per reason and split while preparing
_ONE_EXTRACTOR = "gold answers cut by rankjax.data.answers.extract_answer, the extractor grading uses"


def gold_answer(solution: str) -> str:
  """Returns the final answer a reference solution states (`rankjax.data.answers.extract_answer`: the last box,
  else the "####" line, else "the answer is x"), "" when it states none."""
  return extract_answer(solution) or ""


def _strip_dollars(text: str) -> str:
  """Returns `text` without unescaped `$` math delimiters, stripped."""
  return re.sub(r"(?<!\\)\$", "", text).strip()


def canonical_features(extra: Sequence[str] = ()) -> tfds.features.FeaturesDict:
  """Returns the canonical FeaturesDict (plus Text features named in `extra`)."""
  features = {name: tfds.features.Text() for name in TEXT_FIELDS + tuple(extra)}
  features["source_index"] = tfds.features.Scalar(dtype=np.int64)
  return tfds.features.FeaturesDict(features)


class LocalFilesBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of the builders: finds split files in the manual dir, converts raw records, keeps file order."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = "Put the source files (<split>.jsonl or <split>.parquet) in the manual dir."
  DESCRIPTION = ""
  EXTRA_FEATURES: tuple[str, ...] = ()

  def _info(self) -> tfds.core.DatasetInfo:
    """Returns the DatasetInfo: canonical features, file order kept, metadata for the source fingerprint."""
    return tfds.core.DatasetInfo(builder=self, description=self.DESCRIPTION,
                                 features=canonical_features(self.EXTRA_FEATURES),
                                 disable_shuffling=True, metadata=tfds.core.MetadataDict())

  def split_files(self, manual_dir: pathlib.Path) -> dict[str, list[pathlib.Path]]:
    """Returns {split: files} found in `manual_dir`; FileNotFoundError when it is missing or has none."""
    if not manual_dir.is_dir():
      raise DataFileNotFoundError(f"{self.name}: manual dir {manual_dir} does not exist; it should hold "
                              f"{expected_names()} files")
    files = find_split_files(manual_dir)
    if not files:
      raise DataFileNotFoundError(f"{self.name}: no data files in {manual_dir}; expected {expected_names()}")
    return files

  def fingerprint(self, manual_dir: pathlib.Path) -> str:
    """Returns a digest of the builder version, its config's field mapping and its source files' bytes."""
    config = self.builder_config
    mapping = {}
    if config is not None:
      mapping = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
                 if f.name not in ("description", "release_notes", "supported_versions", "tags")}
      mapping["version"] = str(mapping["version"])
    files = {split: [(p.name, p.stat().st_size, file_digest(p)) for p in paths]
             for split, paths in sorted(self.split_files(manual_dir).items())}
    blob = json.dumps({"builder": self.name, "version": str(self.VERSION), "config": mapping, "files": files},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()

  def _split_generators(self, dl_manager):
    """Returns {split: example generator}, one split per group of data files in the manual dir."""
    manual_dir = pathlib.Path(os.fspath(dl_manager.manual_dir))
    files = self.split_files(manual_dir)
    self.info.metadata["source_fingerprint"] = self.fingerprint(manual_dir)
    self.info.metadata["source_files"] = {s: [p.name for p in paths] for s, paths in files.items()}
    return {split: self._generate_examples(paths) for split, paths in files.items()}

  def _generate_examples(self, paths: list[pathlib.Path]):
    """Yields (int key in file order, canonical example) for every record of `paths`; logs the first bad records
    of each reason (file and line) and a count of all of them."""
    key = 0
    bad: collections.Counter = collections.Counter()
    for path in paths:
      for index, raw in read_records(path):
        example = self._example(raw, path.name, index)
        if example["error"]:
          bad[example["error"]] += 1
          if bad[example["error"]] <= _WARN_PER_REASON:
            detail = f" ({raw.detail})" if isinstance(raw, InvalidLine) and raw.detail else ""
            logging.warning("%s: %s: bad record, %s%s; it is kept marked %r, and the data pipeline counts and skips "
                            "it (data.strict=True raises on it)", self.name, record_location(example),
                            example["error"], detail, example["error"])
        yield key, example
        key += 1
    if bad:
      logging.warning("%s: %d bad record(s) in %s, by reason: %s", self.name, sum(bad.values()),
                      ", ".join(p.name for p in paths), dict(bad))

  def _example(self, raw: dict | InvalidLine, source_file: str, index: int) -> dict:
    """Returns the canonical example of one raw record (errors recorded, never raised)."""
    example = {name: "" for name in TEXT_FIELDS + self.EXTRA_FEATURES}
    example.update(source_file=source_file, source_index=index)
    if isinstance(raw, InvalidLine):
      example["error"] = raw.reason
      return example
    fields = RecordFields(raw)
    try:
      converted = self.convert(fields)
    except BadRecord as e:
      fields.fail(e.reason)
      converted = {}
    example.update(converted)
    example["error"] = fields.error
    return example

  def convert(self, fields: RecordFields) -> dict:
    """Returns the canonical text fields of a raw record (read through `fields`, which keeps the error)."""
    raise NotImplementedError


def _answer_text(fields: RecordFields, name: str, required: bool) -> str:
  """Returns an answer field as text: numbers formatted by `number_text`, strings stripped."""
  value = fields.raw.get(name)
  if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
    return number_text(value)
  return fields.text(name, required=required).strip()


def _prompt_response(fields: RecordFields, prompt_field: str, response_field: str) -> dict:
  """Returns {"prompt", "response"} read from the two fields, flagging an empty response; with no
  response_field (an evaluation set of problems and answers) the response is ""."""
  prompt = fields.text(prompt_field)
  if not response_field:
    return {"prompt": prompt, "response": ""}
  response = fields.text(response_field)
  if not fields.error and not response.strip():
    fields.fail("empty_response")
  return {"prompt": prompt, "response": response}


def _messages(fields: RecordFields, messages_field: str) -> dict:
  """Returns {"messages", "prompt", "response"} from a chat messages field."""
  value = fields.raw.get(messages_field)
  if value is None:
    raise BadRecord(f"missing_field:{messages_field}")
  messages, prompt, response, error = check_messages(value)
  if error:
    raise BadRecord(error if error != "missing_field:messages" else f"missing_field:{messages_field}")
  return {"messages": messages, "prompt": prompt, "response": response}


@dataclasses.dataclass
class SftConfig(tfds.core.BuilderConfig):
  """Field mapping of `sft_jsonl`: `messages_field` (when set) wins over prompt/response fields;
  `answer_field` ("" for none) fills `answer`."""

  prompt_field: str = "prompt"
  response_field: str = "response"
  messages_field: str = ""
  answer_field: str = ""


class SftJsonl(LocalFilesBuilder):
  """Generic SFT files (`<split>.jsonl` / `<split>.parquet`) with a field mapping given by an `SftConfig`."""

  name = "sft_jsonl"
  VERSION = tfds.core.Version("1.0.0")
  DESCRIPTION = "Local SFT JSONL/Parquet files mapped to canonical prompt/response/messages records."
  BUILDER_CONFIGS: ClassVar[list[SftConfig]] = [SftConfig(name="prompt_response", description="fields prompt / response")]

  def convert(self, fields: RecordFields) -> dict:
    """Returns prompt/response (or messages) and answer by the config's field mapping."""
    c = self.builder_config
    out = _messages(fields, c.messages_field) if c.messages_field else _prompt_response(
        fields, c.prompt_field, c.response_field)
    if c.answer_field:
      out["answer"] = _answer_text(fields, c.answer_field, required=False)
    return out


class Gsm8kLocal(LocalFilesBuilder):
  """GSM8K from local `train.jsonl` / `test.jsonl`: question, answer (chain of thought ending "#### n")."""

  name = "gsm8k_local"
  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.1.0": _ONE_EXTRACTOR}
  DESCRIPTION = "GSM8K: prompt = question, response = full answer text, answer = the number after ####."

  def convert(self, fields: RecordFields) -> dict:
    """Returns prompt = question, response = the answer text unchanged, answer = the "####" line's number
    (thousands commas removed; see `gold_answer`)."""
    out = _prompt_response(fields, "question", "answer")
    out["answer"] = gold_answer(out["response"])
    return out


class NuminaMathCot(LocalFilesBuilder):
  """NuminaMath-CoT style records: problem/solution (preferred when present) or messages; JSONL or Parquet."""

  name = "numina_math_cot"
  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.1.0": _ONE_EXTRACTOR}
  DESCRIPTION = "NuminaMath-CoT: problem -> prompt, solution -> response, last \\boxed{} -> answer."

  def convert(self, fields: RecordFields) -> dict:
    """Returns prompt/response from problem/solution, else from messages; answer = the final answer of the
    response (its last box; see `gold_answer`).

    Records with problem/solution keep messages "" (the chat is exactly user=problem, assistant=solution).
    """
    raw = fields.raw
    if raw.get("problem") is None and raw.get("solution") is None and raw.get("messages") is not None:
      out = _messages(fields, "messages")
    else:
      out = _prompt_response(fields, "problem", "solution")
    out["answer"] = gold_answer(out["response"])
    return out


@dataclasses.dataclass
class MathEvalConfig(tfds.core.BuilderConfig):
  """One evaluation set of `math_eval`; its file is `<name>/test.jsonl` (or `test.jsonl`) in the manual dir."""


class MathEval(LocalFilesBuilder):
  """Math evaluation sets (config per set), split "test": prompt, reference solution, gold answer string."""

  name = "math_eval"
  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.1.0": _ONE_EXTRACTOR + " (minerva_math)"}
  DESCRIPTION = "Math evaluation sets with gold answers: aime24, amc23, math500, minerva_math, olympiadbench."
  BUILDER_CONFIGS: ClassVar[list[MathEvalConfig]] = [MathEvalConfig(name=s, description=f"{s} test set") for s in MATH_EVAL_SETS]
  EXTRA_FEATURES = ("answer_type", "unit")

  def split_files(self, manual_dir: pathlib.Path) -> dict[str, list[pathlib.Path]]:
    """Returns {"test": [file]}: `<manual_dir>/<set>/test.jsonl`, else `<manual_dir>/test.jsonl`."""
    candidates = [manual_dir / self.builder_config.name / "test.jsonl", manual_dir / "test.jsonl"]
    for path in candidates:
      if path.is_file():
        return {"test": [path]}
    raise DataFileNotFoundError(f"{self.name}/{self.builder_config.name}: no test file; expected "
                            f"{' or '.join(map(str, candidates))}")

  def convert(self, fields: RecordFields) -> dict:
    """Returns the set's prompt, reference solution (may be ""), gold answer and olympiadbench extras."""
    raw, which = fields.raw, self.builder_config.name
    out = {}
    if which == "olympiadbench":
      question = fields.text("question")
      context = raw.get("context")
      out["prompt"] = f"{context}\n\n{question}" if isinstance(context, str) and context.strip() else question
      solutions = raw.get("solution") or []
      solutions = [solutions] if isinstance(solutions, str) else solutions
      out["response"] = "\n\n".join(s for s in solutions if isinstance(s, str))
      answers = raw.get("final_answer")
      if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        raise BadRecord("missing_field:final_answer" if answers is None else "non_string:final_answer")
      out["answer"] = ", ".join(_strip_dollars(a) for a in answers)
      out["answer_type"] = fields.text("answer_type", required=False)
      out["unit"] = fields.text("unit", required=False)
    else:
      out["prompt"] = fields.text("problem" if raw.get("problem") is not None or "question" not in raw
                                  else "question")
      out["response"] = fields.text("solution", required=False)
      if which == "minerva_math":
        out["answer"] = gold_answer(out["response"])
      else:
        out["answer"] = _answer_text(fields, "answer", required=True)
    if not fields.error and not out["answer"]:
      fields.fail("no_answer")
    return out


BUILDERS: dict[str, type[LocalFilesBuilder]] = {
    cls.name: cls for cls in (SftJsonl, Gsm8kLocal, NuminaMathCot, MathEval)}


def known_builders() -> tuple[str, ...]:
  """Returns the builder names `load_source` accepts ("math_eval" needs a config: "math_eval/aime24")."""
  return tuple(sorted(BUILDERS))

