"""What every part of the report reads with: numbers from JSON values, JSON files that may be unreadable."""

from __future__ import annotations

import json

MISSING = "<missing>"  # a config key that a run's config.json lacks (written before the field existed)


class RunError(ValueError):
  """A run folder that cannot be read; the message names the file."""


def number(value) -> float | None:
  """`value` as a float (a logged "nan"/"inf" string included); None for anything else (bools, text, None)."""
  if isinstance(value, bool) or value is None:
    return None
  if isinstance(value, (int, float)):
    return float(value)
  if isinstance(value, str) and value.strip().lower() in ("nan", "inf", "-inf", "+inf", "infinity", "-infinity"):
    return float(value.strip())
  return None


def read_json(path: str):
  """The JSON value in `path`; RunError naming the file when it cannot be read or parsed."""
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
    raise RunError(f"{path}: cannot be read as JSON ({e})") from e
