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


def read_samples(directory: str) -> dict[tuple[str, int, int], dict]:
  """Returns {(benchmark, problem, sample): row} of DIR/samples.jsonl ({} when absent).

  A line that does not parse is skipped when it is the last one (a write cut short); elsewhere it raises
  ValueError naming the file and line.
  """
  path = os.path.join(directory, SAMPLES_FILE)
  if not os.path.exists(path):
    return {}
  with open(path, encoding="utf-8") as f:
    lines = f.read().split("\n")
  rows = {}
  last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
      key = (str(row["benchmark"]), int(row["problem"]), int(row["sample"]))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
      if i == last:
        break
      raise ValueError(f"{path}: line {i + 1} is not a sample row: {line[:200]!r}") from None
    rows[key] = row
  return rows


class SamplesWriter:
  """Appends sample rows to DIR/samples.jsonl, each flushed as written (a torn tail line is repaired first)."""

  def __init__(self, directory: str):
    os.makedirs(directory, exist_ok=True)
    self.path = os.path.join(directory, SAMPLES_FILE)
    self._repair_tail()
    self._file = open(self.path, "a", encoding="utf-8")

  def _repair_tail(self) -> None:
    """Cuts an unterminated last line (from a kill mid-write) so that appends start on a fresh line."""
    if not os.path.exists(self.path):
      return
    with open(self.path, "rb+") as f:
      data = f.read()
      if data and not data.endswith(b"\n"):
        f.truncate(data.rfind(b"\n") + 1)

  def write(self, rows: list[dict]) -> None:
    for row in rows:
      self._file.write(json.dumps({k: row[k] for k in SAMPLE_FIELDS}, ensure_ascii=False) + "\n")
    self._file.flush()

  def close(self) -> None:
    self._file.close()
