"""An evaluation's record on disk: `samples.jsonl` (one graded sample per line) and the settings it was drawn with.

A relaunch reads back the samples already graded and draws only the rest, so a preempted evaluation resumes.
It refuses to mix samples drawn under different settings (checkpoint, sampling, prompt): those go to a new
workdir. A torn last line (a kill mid-write) is dropped and its sample drawn again.
"""

from __future__ import annotations

import json
import os

SAMPLES_FILE = "samples.jsonl"
SETTINGS_FILE = "eval_settings.json"
SAMPLE_FIELDS = ("benchmark", "problem", "sample", "completion", "answer", "gold", "correct", "generated_tokens",
                 "finish")


def check_settings(directory: str, settings: dict) -> None:
  """Writes `settings` (what determines the samples) to DIR/eval_settings.json, or, when the file exists,
  raises ValueError naming every field that differs from it."""
  path = os.path.join(directory, SETTINGS_FILE)
  settings = json.loads(json.dumps(settings))  # tuples -> lists, as they read back
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      previous = json.load(f)
    changed = {k: (previous.get(k), settings.get(k)) for k in sorted(set(previous) | set(settings))
               if previous.get(k) != settings.get(k)}
    if changed:
      lines = "\n".join(f"  {k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
      raise ValueError(f"{directory} holds samples drawn with other settings; use a new workdir (or delete "
                       f"{SAMPLES_FILE} and {SETTINGS_FILE}) to evaluate with these:\n{lines}")
    return
  os.makedirs(directory, exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(settings, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def _parse_row(line: bytes) -> tuple[tuple[str, int, int], dict]:
  """The (benchmark, problem, sample) key and the row of one line; raises ValueError when it is not a sample row."""
  try:
    row = json.loads(line.decode("utf-8"))
    return (str(row["benchmark"]), int(row["problem"]), int(row["sample"])), row
  except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
    raise ValueError(str(e)) from None


def _intact(path: str, data: bytes) -> tuple[dict[tuple[str, int, int], dict], int]:
  """The rows of `data` (the bytes of samples.jsonl) and the length of the prefix that holds them.

  The prefix ends after the last line that is newline-terminated and parses: a kill mid-write leaves a last line
  without its newline, possibly cut inside a multi-byte UTF-8 character, and that line is not part of the record
  even when its bytes happen to parse. A line that does not parse anywhere but last raises ValueError naming the
  file and line. Reading and repairing both use this, so a count taken before a relaunch's repair equals the
  file after it.
  """
  lines = data.split(b"\n")
  complete = lines[:-1]  # the piece after the last newline is unterminated (b"" when the file ends with one)
  while complete and not complete[-1].strip():
    complete.pop()
  rows, kept = {}, 0
  offset = 0
  for i, line in enumerate(complete):
    offset += len(line) + 1
    if not line.strip():
      continue
    try:
      key, row = _parse_row(line)
    except ValueError:
      if i == len(complete) - 1:
        break  # the last complete line is torn too (e.g. a newline inside the cut-short write): dropped
      raise ValueError(f"{path}: line {i + 1} is not a sample row: {line[:200]!r}") from None
    rows[key] = row
    kept = offset
  return rows, kept


def read_samples(directory: str) -> dict[tuple[str, int, int], dict]:
  """Returns {(benchmark, problem, sample): row} of DIR/samples.jsonl ({} when absent).

  Only newline-terminated rows count: an unterminated or unparsable last line (a write cut short) is left out,
  exactly as `SamplesWriter` will cut it; an unparsable line elsewhere raises ValueError naming the file and line.
  """
  path = os.path.join(directory, SAMPLES_FILE)
  if not os.path.exists(path):
    return {}
  with open(path, "rb") as f:
    return _intact(path, f.read())[0]


class SamplesWriter:
  """Appends sample rows to DIR/samples.jsonl, each flushed as written (a torn tail line is repaired first)."""

  def __init__(self, directory: str):
    os.makedirs(directory, exist_ok=True)
    self.path = os.path.join(directory, SAMPLES_FILE)
    self._repair_tail()
    self._file = open(self.path, "a", encoding="utf-8")

  def _repair_tail(self) -> None:
    """Cuts what `read_samples` leaves out at the end (a line torn by a kill mid-write), so that the file holds
    exactly the rows read back and appends start on a fresh line."""
    if not os.path.exists(self.path):
      return
    with open(self.path, "rb+") as f:
      data = f.read()
      keep = _intact(self.path, data)[1]
      if keep != len(data):
        f.truncate(keep)

  def write(self, rows: list[dict]) -> None:
    for row in rows:
      self._file.write(json.dumps({k: row[k] for k in SAMPLE_FIELDS}, ensure_ascii=False) + "\n")
    self._file.flush()

  def close(self) -> None:
    self._file.close()
