"""TFDS builders over local SFT / math files, all emitting one canonical record, and a random-access loader.

Every builder is a `tfds.core.GeneratorBasedBuilder` prepared from files in a manual dir (nothing is ever
downloaded) into `array_record` files, read back without TensorFlow by `load_source` (random access, for
`grain.MapDataset.source`). Each record has the canonical features

  prompt, response   Text   the question and the reference answer text
  messages           Text   JSON list of {"role", "content"}; "" when the source has plain prompt/response
  answer             Text   gold final answer ("" when none)
  source_file        Text   basename of the file the record came from
  source_index       int64  0-based record index in that file (JSONL: line number; Parquet: row number)
  error              Text   "" for a good record, else a reason code (below)

and `math_eval` adds `answer_type` and `unit` (olympiadbench; "" elsewhere). Records keep the file order.

Bad records are kept, with `error` set and "" in the broken fields, so the pipeline can count them per
reason (or raise naming `source_file` / `source_index` in strict mode). Reason codes:

  invalid_json             a JSONL line that does not parse (or is not a JSON object), or a messages string
                           that does not parse
  invalid_utf8             a JSONL line whose bytes are not UTF-8
  missing_field:<name>     the field is absent or null
  non_string:<name>        the field is not a string (a number where a number is expected is fine)
  empty_response           the response (or final assistant turn) is empty or whitespace
  invalid_messages         messages is not a non-empty list of {"role": str, "content": str}
  no_assistant_turn        the last message is not the assistant's
  no_answer                (math_eval only) no gold answer could be found

Preparing logs a warning naming the file and line (JSONL; row for Parquet) of the first bad records of each
reason, and a file with no record at all is an error naming it. Over-length is decided later by the tokenizer
pipeline. Builders:

  sft_jsonl         generic `<split>.jsonl` / `<split>.parquet` files (or shards `<split>-*.jsonl|parquet`)
                    with a field mapping (`SftConfig`: prompt_field / response_field, or messages_field);
  gsm8k_local       GSM8K `{train,test}.jsonl`: question -> prompt, answer text -> response, the number after
                    "####" -> answer;
  numina_math_cot   NuminaMath-CoT style problem/solution or messages records, JSONL or Parquet; answer = the
                    last \\boxed{...} of the solution;
  math_eval         eval sets, one config each: aime24, amc23, math500 (MATH-500: problem / answer fields; the user
                    brings its file), minerva_math, olympiadbench
                    (`<set>/test.jsonl` or `test.jsonl` in the manual dir); single split "test".

A prepared dataset records a fingerprint of its source files (names, sizes, SHA-256) and field mapping;
`load_source` reuses it when they match and prepares it again when they changed.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import hashlib
import json
import math
import os
import pathlib
import re
import shutil
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from tensorflow_datasets.core.utils import gcs_utils

from rankjax.data.formatting import record_location

# Never reach Google Cloud Storage for dataset files or metadata (the default in recent TFDS; made explicit).
gcs_utils._is_gcs_disabled = True

FORMATS = (".jsonl", ".parquet")
TEXT_FIELDS = ("prompt", "response", "messages", "answer", "source_file", "error")
MATH_EVAL_SETS = ("aime24", "amc23", "math500", "minerva_math", "olympiadbench")  # math500: the user brings its file
_SPLIT_RE = re.compile(r"^(\w+?)(?:-[^/]*)?$")  # "<split>" or a shard "<split>-00000-of-00004"
_PARQUET_BATCH = 1024


class _Invalid:
  """Stands for a JSONL line that is not a JSON object (`reason` invalid_json) or not UTF-8 (invalid_utf8)."""

  def __init__(self, reason: str = "invalid_json", detail: str = ""):
    self.reason, self.detail = reason, detail


_WARN_PER_REASON = 3  # bad records named in the log per reason and split while preparing


class BadRecord(Exception):
  """A record that cannot be converted; `reason` is its `error` code."""

  def __init__(self, reason: str):
    super().__init__(reason)
    self.reason = reason


# ----------------------------------------------------------------------------- field helpers


class _Fields:
  """Reads fields of one raw record, remembering the first problem as the record's error code."""

  def __init__(self, raw: dict):
    self.raw = raw
    self.error = ""

  def fail(self, reason: str) -> str:
    """Records `reason` (the first one wins); returns "" for the broken field."""
    self.error = self.error or reason
    return ""

  def text(self, name: str, required: bool = True) -> str:
    """Returns the string field `name`; "" (and an error when `required`) when absent, null or not a str."""
    value = self.raw.get(name)
    if value is None:
      return self.fail(f"missing_field:{name}") if required else ""
    if not isinstance(value, str):
      return self.fail(f"non_string:{name}")
    return value


def last_boxed(text: str) -> str:
  """Returns the content of the last balanced `\\boxed{...}` (or `\\boxed x`) in `text`, "" when none."""
  for match in reversed(list(re.finditer(r"\\boxed", text))):
    rest = text[match.end():]
    if rest.startswith("{"):
      depth = 0
      for i, ch in enumerate(rest):
        depth += (ch == "{") - (ch == "}")
        if depth == 0:
          return rest[1:i].strip()
    elif rest[:1] == " ":
      token = re.match(r"\s*([^\s$]+)", rest)
      if token:
        return token.group(1)
  return ""


def gsm8k_answer(text: str) -> str:
  """Returns the number after the last "####" of a GSM8K answer, stripped, commas removed; "" when none."""
  if "####" not in text:
    return ""
  return text.rsplit("####", 1)[1].strip().replace(",", "")


def number_text(value: float) -> str:
  """Returns a numeric answer as text: 27.0 -> "27", 0.5 -> "0.5"."""
  if isinstance(value, float) and value.is_integer():
    return str(int(value))
  return str(value)


def _strip_dollars(text: str) -> str:
  """Returns `text` without unescaped `$` math delimiters, stripped."""
  return re.sub(r"(?<!\\)\$", "", text).strip()


def check_messages(value: Any) -> tuple[str, str, str, str]:
  """Validates a chat `messages` value (a list, or a JSON string of one).

  Returns (messages JSON of {role, content} dicts, prompt = the last user turn before the final one,
  response = the final assistant turn, error code or ""); the texts are "" when there is an error.
  """
  if value is None:
    return "", "", "", "missing_field:messages"
  if isinstance(value, str):
    try:
      value = json.loads(value)
    except json.JSONDecodeError:
      return "", "", "", "invalid_json"
  if not isinstance(value, list) or not value:
    return "", "", "", "invalid_messages"
  turns = []
  for turn in value:
    if not (isinstance(turn, dict) and isinstance(turn.get("role"), str) and isinstance(turn.get("content"), str)):
      return "", "", "", "invalid_messages"
    turns.append({"role": turn["role"], "content": turn["content"]})
  if turns[-1]["role"] != "assistant":
    return "", "", "", "no_assistant_turn"
  response = turns[-1]["content"]
  if not response.strip():
    return "", "", "", "empty_response"
  prompt = next((t["content"] for t in reversed(turns[:-1]) if t["role"] == "user"), "")
  return json.dumps(turns, ensure_ascii=False), prompt, response, ""


# ----------------------------------------------------------------------------- reading files


def read_records(path: pathlib.Path) -> Iterator[tuple[int, dict | _Invalid]]:
  """Yields (0-based index, raw record) of a .jsonl (index = line number - 1; blank lines skipped; a line that
  is not a JSON object, or not UTF-8, gives an `_Invalid`) or .parquet (index = row number) file."""
  if path.suffix == ".parquet":
    import pyarrow.parquet as pq  # only Parquet sources need it
    index = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=_PARQUET_BATCH):
      for row in batch.to_pylist():
        yield index, row
        index += 1
    return
  with open(path, "rb") as f:
    for index, line in enumerate(f):
      if not line.strip():
        continue
      try:
        text = line.decode("utf-8")
      except UnicodeDecodeError as e:
        yield index, _Invalid("invalid_utf8", f"byte 0x{line[e.start]:02x} at column {e.start + 1} is not UTF-8")
        continue
      try:
        raw = json.loads(text)
      except json.JSONDecodeError as e:
        yield index, _Invalid("invalid_json", f"{e.msg} at column {e.colno}")
        continue
      yield index, raw if isinstance(raw, dict) else _Invalid("invalid_json", "not a JSON object")


def has_records(path: pathlib.Path) -> bool:
  """Whether a data file holds at least one record (a non-blank JSONL line, a Parquet row); reads no further."""
  if path.suffix == ".parquet":
    import pyarrow.parquet as pq  # only Parquet sources need it
    return pq.ParquetFile(path).metadata.num_rows > 0
  with open(path, "rb") as f:
    return any(line.strip() for line in f)


def _file_digest(path: pathlib.Path) -> str:
  """Returns the SHA-256 hex digest of a file's bytes."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def _split_of(path: pathlib.Path) -> str | None:
  """Returns the split a data file belongs to ("train" for train.jsonl / train-00001-of-00004.parquet)."""
  if path.suffix not in FORMATS:
    return None
  m = _SPLIT_RE.match(path.stem)
  return m.group(1) if m else None


def find_split_files(directory: pathlib.Path) -> dict[str, list[pathlib.Path]]:
  """Returns {split: sorted data files} of `<split>.jsonl|parquet` and `<split>-*.jsonl|parquet` in a dir."""
  found: dict[str, list[pathlib.Path]] = collections.defaultdict(list)
  if directory.is_dir():
    for path in sorted(directory.iterdir()):
      split = _split_of(path)
      if split and path.is_file():
        found[split].append(path)
  return dict(found)


def expected_names(split: str = "<split>") -> str:
  """Returns the file names a split may have, for error messages."""
  return f"{split}.jsonl, {split}.parquet, or shards {split}-*.jsonl / {split}-*.parquet"


# ----------------------------------------------------------------------------- builders


def canonical_features(extra: Sequence[str] = ()) -> tfds.features.FeaturesDict:
  """Returns the canonical FeaturesDict (plus Text features named in `extra`)."""
  features = {name: tfds.features.Text() for name in TEXT_FIELDS + tuple(extra)}
  features["source_index"] = tfds.features.Scalar(dtype=np.int64)
  return tfds.features.FeaturesDict(features)


class _LocalFilesBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
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
      raise FileNotFoundError(f"{self.name}: manual dir {manual_dir} does not exist; it should hold "
                              f"{expected_names()} files")
    files = find_split_files(manual_dir)
    if not files:
      raise FileNotFoundError(f"{self.name}: no data files in {manual_dir}; expected {expected_names()}")
    return files

  def fingerprint(self, manual_dir: pathlib.Path) -> str:
    """Returns a digest of the builder version, its config's field mapping and its source files' bytes."""
    config = self.builder_config
    mapping = {}
    if config is not None:
      mapping = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
                 if f.name not in ("description", "release_notes", "supported_versions", "tags")}
      mapping["version"] = str(mapping["version"])
    files = {split: [(p.name, p.stat().st_size, _file_digest(p)) for p in paths]
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
            detail = f" ({raw.detail})" if isinstance(raw, _Invalid) and raw.detail else ""
            logging.warning("%s: %s: bad record, %s%s; it is kept marked %r, and the data pipeline counts and skips "
                            "it (data.strict=True raises on it)", self.name, record_location(example),
                            example["error"], detail, example["error"])
        yield key, example
        key += 1
    if bad:
      logging.warning("%s: %d bad record(s) in %s, by reason: %s", self.name, sum(bad.values()),
                      ", ".join(p.name for p in paths), dict(bad))

  def _example(self, raw: dict | _Invalid, source_file: str, index: int) -> dict:
    """Returns the canonical example of one raw record (errors recorded, never raised)."""
    example = {name: "" for name in TEXT_FIELDS + self.EXTRA_FEATURES}
    example.update(source_file=source_file, source_index=index)
    if isinstance(raw, _Invalid):
      example["error"] = raw.reason
      return example
    fields = _Fields(raw)
    try:
      converted = self.convert(fields)
    except BadRecord as e:
      fields.fail(e.reason)
      converted = {}
    example.update(converted)
    example["error"] = fields.error
    return example

  def convert(self, fields: _Fields) -> dict:
    """Returns the canonical text fields of a raw record (read through `fields`, which keeps the error)."""
    raise NotImplementedError


def _answer_text(fields: _Fields, name: str, required: bool) -> str:
  """Returns an answer field as text: numbers formatted by `number_text`, strings stripped."""
  value = fields.raw.get(name)
  if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
    return number_text(value)
  return fields.text(name, required=required).strip()


def _prompt_response(fields: _Fields, prompt_field: str, response_field: str) -> dict:
  """Returns {"prompt", "response"} read from the two fields, flagging an empty response; with no
  response_field (an evaluation set of problems and answers) the response is ""."""
  prompt = fields.text(prompt_field)
  if not response_field:
    return {"prompt": prompt, "response": ""}
  response = fields.text(response_field)
  if not fields.error and not response.strip():
    fields.fail("empty_response")
  return {"prompt": prompt, "response": response}


def _messages(fields: _Fields, messages_field: str) -> dict:
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


class SftJsonl(_LocalFilesBuilder):
  """Generic SFT files (`<split>.jsonl` / `<split>.parquet`) with a field mapping given by an `SftConfig`."""

  name = "sft_jsonl"
  VERSION = tfds.core.Version("1.0.0")
  DESCRIPTION = "Local SFT JSONL/Parquet files mapped to canonical prompt/response/messages records."
  BUILDER_CONFIGS: ClassVar[list[SftConfig]] = [SftConfig(name="prompt_response", description="fields prompt / response")]

  def convert(self, fields: _Fields) -> dict:
    """Returns prompt/response (or messages) and answer by the config's field mapping."""
    c = self.builder_config
    out = _messages(fields, c.messages_field) if c.messages_field else _prompt_response(
        fields, c.prompt_field, c.response_field)
    if c.answer_field:
      out["answer"] = _answer_text(fields, c.answer_field, required=False)
    return out


class Gsm8kLocal(_LocalFilesBuilder):
  """GSM8K from local `train.jsonl` / `test.jsonl`: question, answer (chain of thought ending "#### n")."""

  name = "gsm8k_local"
  VERSION = tfds.core.Version("1.0.0")
  DESCRIPTION = "GSM8K: prompt = question, response = full answer text, answer = the number after ####."

  def convert(self, fields: _Fields) -> dict:
    """Returns prompt = question, response = the answer text unchanged, answer = the number after "####"."""
    out = _prompt_response(fields, "question", "answer")
    out["answer"] = gsm8k_answer(out["response"])
    return out


class NuminaMathCot(_LocalFilesBuilder):
  """NuminaMath-CoT style records: problem/solution (preferred when present) or messages; JSONL or Parquet."""

  name = "numina_math_cot"
  VERSION = tfds.core.Version("1.0.0")
  DESCRIPTION = "NuminaMath-CoT: problem -> prompt, solution -> response, last \\boxed{} -> answer."

  def convert(self, fields: _Fields) -> dict:
    """Returns prompt/response from problem/solution, else from messages; answer = last boxed of the response.

    Records with problem/solution keep messages "" (the chat is exactly user=problem, assistant=solution).
    """
    raw = fields.raw
    if raw.get("problem") is None and raw.get("solution") is None and raw.get("messages") is not None:
      out = _messages(fields, "messages")
    else:
      out = _prompt_response(fields, "problem", "solution")
    out["answer"] = last_boxed(out["response"])
    return out


@dataclasses.dataclass
class MathEvalConfig(tfds.core.BuilderConfig):
  """One evaluation set of `math_eval`; its file is `<name>/test.jsonl` (or `test.jsonl`) in the manual dir."""


class MathEval(_LocalFilesBuilder):
  """Math evaluation sets (config per set), split "test": prompt, reference solution, gold answer string."""

  name = "math_eval"
  VERSION = tfds.core.Version("1.0.0")
  DESCRIPTION = "Math evaluation sets with gold answers: aime24, amc23, math500, minerva_math, olympiadbench."
  BUILDER_CONFIGS: ClassVar[list[MathEvalConfig]] = [MathEvalConfig(name=s, description=f"{s} test set") for s in MATH_EVAL_SETS]
  EXTRA_FEATURES = ("answer_type", "unit")

  def split_files(self, manual_dir: pathlib.Path) -> dict[str, list[pathlib.Path]]:
    """Returns {"test": [file]}: `<manual_dir>/<set>/test.jsonl`, else `<manual_dir>/test.jsonl`."""
    candidates = [manual_dir / self.builder_config.name / "test.jsonl", manual_dir / "test.jsonl"]
    for path in candidates:
      if path.is_file():
        return {"test": [path]}
    raise FileNotFoundError(f"{self.name}/{self.builder_config.name}: no test file; expected "
                            f"{' or '.join(map(str, candidates))}")

  def convert(self, fields: _Fields) -> dict:
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
        out["answer"] = last_boxed(out["response"])
      else:
        out["answer"] = _answer_text(fields, "answer", required=True)
    if not fields.error and not out["answer"]:
      fields.fail("no_answer")
    return out


_BUILDERS: dict[str, type[_LocalFilesBuilder]] = {
    cls.name: cls for cls in (SftJsonl, Gsm8kLocal, NuminaMathCot, MathEval)}


def known_builders() -> tuple[str, ...]:
  """Returns the builder names `load_source` accepts ("math_eval" needs a config: "math_eval/aime24")."""
  return tuple(sorted(_BUILDERS))


# ----------------------------------------------------------------------------- making, preparing, loading


def _sft_config_name(manual_dir: str, mapping: dict) -> str:
  """Returns a config name unique to a manual dir and field mapping: "<dir basename>_<hash>"."""
  base = re.sub(r"[^A-Za-z0-9_]+", "_", os.path.basename(os.path.normpath(manual_dir))).strip("_") or "data"
  digest = hashlib.sha256(json.dumps([os.path.abspath(manual_dir), mapping], sort_keys=True).encode())
  return f"{base}_{digest.hexdigest()[:10]}"


def make_sft_builder(name: str | None, manual_dir: str, data_dir: str | None = None, *,
                     prompt_field: str = "prompt", response_field: str = "response",
                     messages_field: str = "", answer_field: str = "") -> SftJsonl:
  """Returns a prepared `sft_jsonl` builder with this field mapping (prepared into data_dir if needed).

  `name` is the config name (its prepared data lives in data_dir/sft_jsonl/<name>/); None derives one from
  the manual dir and the mapping, so different files or mappings never share a prepared dataset.
  """
  mapping = {"prompt_field": prompt_field, "response_field": response_field,
             "messages_field": messages_field, "answer_field": answer_field}
  for key, value in mapping.items():
    if not isinstance(value, str):
      raise TypeError(f"sft_jsonl: {key} must be a str field name, got {value!r}")
  if not messages_field and not (prompt_field and (response_field or answer_field)):
    raise ValueError("sft_jsonl: set messages_field, or prompt_field and response_field (or, for an evaluation "
                     "set without responses, prompt_field and answer_field)")
  name = name or _sft_config_name(manual_dir, mapping)
  config = SftConfig(name=name, description=f"fields {mapping}", **mapping)
  builder = SftJsonl(config=config, data_dir=data_dir, file_format="array_record")
  return prepare(builder, manual_dir)


def make_builder(builder_name: str, manual_dir: str, data_dir: str | None = None,
                 **builder_kwargs) -> _LocalFilesBuilder:
  """Returns the named builder, prepared from manual_dir into data_dir if needed.

  `builder_name` is one of `known_builders()`, "math_eval/<set>" or "math_eval" with config="<set>".
  sft_jsonl takes name, prompt_field, response_field, messages_field, answer_field (see make_sft_builder).
  """
  name, _, config = builder_name.partition("/")
  config = builder_kwargs.pop("config", None) or config or None
  if name not in _BUILDERS:
    raise ValueError(f"unknown builder {builder_name!r}; known: {known_builders()}")
  if name == "sft_jsonl":
    if config:
      builder_kwargs.setdefault("name", config)
    return make_sft_builder(builder_kwargs.pop("name", None), manual_dir, data_dir, **builder_kwargs)
  if builder_kwargs:
    raise TypeError(f"{name}: unexpected arguments {sorted(builder_kwargs)}")
  cls = _BUILDERS[name]
  if cls.BUILDER_CONFIGS:
    names = [c.name for c in cls.BUILDER_CONFIGS]
    if config not in names:
      raise ValueError(f"{name} needs a config, one of {names} (e.g. '{name}/{names[0]}'); got {config!r}")
  elif config:
    raise ValueError(f"{name} has no configs; got {config!r}")
  return prepare(cls(config=config, data_dir=data_dir, file_format="array_record"), manual_dir)


def prepare(builder: _LocalFilesBuilder, manual_dir: str) -> _LocalFilesBuilder:
  """Returns `builder` prepared from `manual_dir`: the existing data when its source fingerprint matches,
  else freshly generated (a stale prepared version is deleted first). Never downloads anything.

  When manual_dir is missing but the dataset is prepared (e.g. data_dir copied to another machine), the
  prepared data is used as is, with a warning.
  """
  manual = pathlib.Path(os.path.abspath(os.path.expanduser(manual_dir)))
  if builder.is_prepared():
    if not manual.is_dir():
      logging.warning("%s: manual dir %s is missing; using the prepared data at %s unchecked",
                      builder.name, manual, builder.data_dir)
      return builder
    stored = (builder.info.metadata or {}).get("source_fingerprint")
    if stored == builder.fingerprint(manual):
      return builder
    logging.warning("%s: the source files or field mapping changed since %s was prepared; preparing again",
                    builder.name, builder.data_dir)
    shutil.rmtree(builder.data_path)
    builder = type(builder)(config=builder.builder_config, data_dir=builder.data_dir_root,
                            file_format="array_record")
  for split, paths in builder.split_files(manual).items():  # FileNotFoundError naming the path before TFDS's checks
    if not any(has_records(p) for p in paths):  # TFDS would fail with "No examples were yielded"
      raise ValueError(f"{builder.name}: split {split!r} has no records: {', '.join(map(str, paths))} "
                       f"{'is' if len(paths) == 1 else 'are'} empty (blank lines are not records); nothing was "
                       "prepared")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual), try_download_gcs=False),
      file_format="array_record")
  return builder


def _plain(value: Any) -> Any:
  """Returns a decoded feature value as plain Python: bytes -> str, numpy scalars -> int / float."""
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, np.ndarray) and value.ndim == 0:
    value = value.item()
  if isinstance(value, np.generic):
    return value.item()
  return value


class RecordSource(collections.abc.Sequence):
  """Random-access records of one prepared split: `len(src)`, `src[i]` -> dict of str / int.

  Holds only the prepared dataset's directory and the split, and opens the array_record files lazily, so
  it pickles cheaply (e.g. into Grain worker processes) and works as `grain.MapDataset.source(src)`.
  """

  def __init__(self, prepared_dir: str, split: str):
    self.prepared_dir, self.split = os.fspath(prepared_dir), split
    self._source = None

  @property
  def source(self):
    """Returns the underlying `tfds` ArrayRecordDataSource (opened on first use)."""
    if self._source is None:
      self._source = tfds.builder_from_directory(self.prepared_dir).as_data_source(split=self.split)
    return self._source

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index):
    """Returns record `index` as a dict of str / int (a list of them for a slice)."""
    if isinstance(index, slice):
      return self.__getitems__(range(*index.indices(len(self))))
    if index < 0:
      index += len(self)
    if not 0 <= index < len(self):
      raise IndexError(f"record {index} out of range for {len(self)} records")
    return {k: _plain(v) for k, v in self.source[index].items()}

  def __getitems__(self, indices) -> list[dict]:
    """Returns the records at `indices` (one batched read)."""
    return [{k: _plain(v) for k, v in r.items()} for r in self.source.__getitems__(list(indices))]

  def __getstate__(self) -> dict:
    return {"prepared_dir": self.prepared_dir, "split": self.split}

  def __setstate__(self, state: dict):
    self.__init__(state["prepared_dir"], state["split"])

  def __repr__(self) -> str:
    return f"RecordSource({self.prepared_dir!r}, split={self.split!r})"


def load_source(builder_name: str, split: str, manual_dir: str, data_dir: str | None = None,
                **builder_kwargs) -> RecordSource:
  """Returns the random-access records of `split` (TFDS split syntax, e.g. "train[:100]") of a builder,
  preparing it from manual_dir into data_dir (None: TFDS's default) first unless already prepared.

  Raises FileNotFoundError naming the path and expected file names when the manual dir or the split's
  file is missing, ValueError for an unknown builder / config.
  """
  base_split = re.match(r"^\s*(\w+)", split)
  if not base_split:
    raise ValueError(f"{builder_name}: invalid split {split!r}")
  builder = make_builder(builder_name, manual_dir, data_dir, **builder_kwargs)
  if base_split.group(1) not in builder.info.splits:
    where = os.path.abspath(manual_dir)
    expected = expected_names(base_split.group(1)) if builder.name != "math_eval" else "test.jsonl"
    raise FileNotFoundError(f"{builder.info.full_name}: no split {base_split.group(1)!r} in {where} "
                            f"(expected {expected}); prepared splits: {sorted(builder.info.splits)}")
  return RecordSource(os.fspath(builder.data_dir), split.strip())
