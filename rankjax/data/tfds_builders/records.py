"""Reading raw records from local .jsonl / .parquet files, finding a split's files, and checking fields.

Pure Python (pyarrow only for Parquet, imported when a Parquet file is read): the TFDS builders
(rankjax.data.tfds_builders.builders) turn these raw records into canonical examples.
"""

from __future__ import annotations

import collections
import hashlib
import json
import pathlib
import re
from collections.abc import Iterator
from typing import Any

FORMATS = (".jsonl", ".parquet")
_SPLIT_RE = re.compile(r"^(\w+?)(?:-[^/]*)?$")  # "<split>" or a shard "<split>-00000-of-00004"
_PARQUET_BATCH = 1024
# Windows tools (Notepad, Excel, PowerShell's Out-File) start UTF-8 text with a byte-order mark; it is not data.
UTF8_BOM = b"\xef\xbb\xbf"


class InvalidLine:
  """Stands for a JSONL line that is not a JSON object (`reason` invalid_json) or not UTF-8 (invalid_utf8)."""

  def __init__(self, reason: str = "invalid_json", detail: str = ""):
    self.reason, self.detail = reason, detail


class BadRecord(Exception):
  """A record that cannot be converted; `reason` is its `error` code."""

  def __init__(self, reason: str):
    super().__init__(reason)
    self.reason = reason


class RecordFields:
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


def number_text(value: float) -> str:
  """Returns a numeric answer as text: 27.0 -> "27", 0.5 -> "0.5"."""
  if isinstance(value, float) and value.is_integer():
    return str(int(value))
  return str(value)


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


def read_records(path: pathlib.Path) -> Iterator[tuple[int, dict | InvalidLine]]:
  """Yields (0-based index, raw record) of a .jsonl (index = line number - 1; blank lines skipped; a line that
  is not a JSON object, or not UTF-8, gives an `InvalidLine`; a leading UTF-8 byte-order mark and CRLF line ends
  are accepted) or .parquet (index = row number) file."""
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
      if index == 0:
        line = line.removeprefix(UTF8_BOM)
      if not line.strip():
        continue
      try:
        text = line.decode("utf-8")
      except UnicodeDecodeError as e:
        yield index, InvalidLine("invalid_utf8", f"byte 0x{line[e.start]:02x} at column {e.start + 1} is not UTF-8")
        continue
      try:
        raw = json.loads(text)
      except json.JSONDecodeError as e:
        yield index, InvalidLine("invalid_json", f"{e.msg} at column {e.colno}")
        continue
      yield index, raw if isinstance(raw, dict) else InvalidLine("invalid_json", "not a JSON object")


def has_records(path: pathlib.Path) -> bool:
  """Whether a data file holds at least one record (a non-blank JSONL line, a Parquet row); reads no further."""
  if path.suffix == ".parquet":
    import pyarrow.parquet as pq  # only Parquet sources need it
    return pq.ParquetFile(path).metadata.num_rows > 0
  with open(path, "rb") as f:
    return any(line.removeprefix(UTF8_BOM).strip() for line in f)


def file_digest(path: pathlib.Path) -> str:
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

