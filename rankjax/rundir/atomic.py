"""Whole-file writes that a kill never leaves half done: the text goes to `<path>.tmp`, which is then renamed
over `path` (atomic on POSIX within one filesystem), so readers see the old file or the new one."""

from __future__ import annotations

import json
import os


def write_lines(path: str, lines) -> str:
  """Writes the strings `lines` (each with its own newline) to `path` by rename; returns `path`."""
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.writelines(lines)
  os.replace(tmp, path)
  return path


def write_text(path: str, text: str) -> str:
  """Writes `text` to `path` by rename; returns `path`."""
  return write_lines(path, [text])


def write_json(path: str, value, indent: int | None = 2, sort_keys: bool = False) -> str:
  """Writes `value` as JSON to `path` by rename; returns `path`."""
  return write_text(path, json.dumps(value, indent=indent, sort_keys=sort_keys))
