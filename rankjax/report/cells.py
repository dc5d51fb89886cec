"""Table cells and tables of the report's markdown and CSV."""

from __future__ import annotations

import math


def cell(value) -> str:
  """A config value as a table cell: floats with %g, lists in parentheses, the empty string as ''."""
  if isinstance(value, float):
    return f"{value:g}"
  if isinstance(value, (list, tuple)):
    return "(" + ", ".join(cell(v) for v in value) + ")"
  if value == "":
    return "''"
  return str(value)


def num(x: float | None, digits: int = 4) -> str:
  """A metric value with `digits` significant digits; "-" for None, nan/inf as they are."""
  if x is None:
    return "-"
  if not math.isfinite(x):
    return str(x)
  return f"{x:.{digits}g}"


def stat_cell(s: dict) -> str:
  """A group's statistic (`stats.group_stats`) as "mean ± half-width", "mean (n=1)" or "-"."""
  if s["n"] == 0:
    return "-" if not s["nonfinite"] else f"{s['nonfinite']} non-finite"
  text = f"{num(s['mean'])} ± {num(s['ci95'], 2)}" if s["n"] > 1 else f"{num(s['mean'])} (n=1)"
  if s["nonfinite"]:
    text += f" ({s['nonfinite']} non-finite left out)"
  return text


def table(head, rows) -> list[str]:
  """The lines of a markdown table; `|` in cells escaped."""
  esc = lambda t: str(t).replace("|", "\\|")  # noqa: E731
  return ["| " + " | ".join(esc(h) for h in head) + " |", "|" + "---|" * len(head)] + \
         ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
