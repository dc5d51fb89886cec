"""The collectives a compiled XLA program runs per execution, read from its optimised HLO text.

Counts and bytes per kind (all-gather, reduce-scatter, all-reduce, all-to-all, collective-permute), per device.
A collective inside a while loop counts trip-count times: the loop's `known_trip_count` where XLA records it, else
the bound of its condition when that is `counter < constant` (how `lax.scan` and `fori_loop` lower, counting from
0); a loop whose trip count is neither counts once and the result says `partial`. Both branches of a conditional
count (an upper bound). XLA:TPU fuses a reduce-scatter as an all-reduce and a slice in a computation it names
`all-reduce-scatter*`: that counts as one reduce-scatter. Bytes are those of the collective's result on one
device (for an async `*-start`, its last tuple element: the output buffer). `largest` lists, per kind, the collectives that
move the most bytes per step, each with its shape and the JAX operation it came from (the HLO's `op_name`), to find
where an unexpected one comes from.
"""

from __future__ import annotations

import collections
import re

KINDS = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
                "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1, "s4": 0.5, "u4": 0.5}
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s*\(.*\)\s*->\s*.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.+?)\s+([a-z][\w\-]*)\((.*)$")
_ARRAY = re.compile(r"\b(pred|[sufc]\d+|bf16|f8e4m3fn|f8e5m2)\[([\d,]*)\]")
_CALLS = re.compile(r"\b(?:calls|body|to_apply|branch_computations|true_computation|false_computation)="
                    r"(\{[^}]*\}|%?[\w.\-]+)")
_TRIP = re.compile(r'"known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"(\d+)"')
_FUSED_REDUCE_SCATTER = "all-reduce-scatter"
_OP_NAME = re.compile(r'op_name="([^"]*)"')
LARGEST = 3  # per kind


def _array_bytes(shape_text: str) -> list[int]:
  out = []
  for dtype, dims in _ARRAY.findall(shape_text):
    n = 1
    for d in filter(None, dims.split(",")):
      n *= int(d)
    out.append(int(n * _DTYPE_BYTES.get(dtype, 4)))
  return out


def _parse(hlo_text: str):
  """{computation: [(opcode, result shape text, rest of line)]}, and the entry computation's name."""
  computations, entry, current = {}, None, None
  for line in hlo_text.splitlines():
    header = _COMPUTATION.match(line)
    if header:
      current = header.group(1)
      computations[current] = []
      if line.startswith("ENTRY"):
        entry = current
      continue
    if current is None:
      continue
    if line.strip() == "}":
      current = None
      continue
    m = _INSTRUCTION.match(line)
    if m:
      computations[current].append((m.group(2), m.group(1), m.group(3)))
  return computations, entry


def _trip_count(while_rest: str, computations: dict) -> int | None:
  known = _TRIP.search(while_rest)
  if known:
    return int(known.group(1))
  cond = re.search(r"\bcondition=%?([\w.\-]+)", while_rest)
  body = computations.get(cond.group(1), []) if cond else []
  constants = [re.search(r"constant\((-?\d+)\)", op + "(" + rest) for op, _, rest in body if op == "constant"]
  compares = [rest for op, _, rest in body if op == "compare"]
  values = [int(c.group(1)) for c in constants if c]
  if len(values) == 1 and len(compares) == 1 and "direction=LT" in compares[0]:
    return values[0]
  return None


def collective_stats(hlo_text: str, largest: int = LARGEST) -> dict:
  """{"<kind>": {"count": n, "bytes": b}, ..., "partial": bool, "largest": [...]} per execution of the program whose
  optimised HLO is `hlo_text` (e.g. `compiled.as_text()`), on one device. "largest": for each kind, the `largest`
  (kind, result shape, op_name) groups with the most bytes per step, each {"kind", "shape", "op_name", "count",
  "bytes"}, all sorted by bytes."""
  computations, entry = _parse(hlo_text)
  totals = {kind: collections.Counter() for kind in KINDS}
  groups: dict[tuple, collections.Counter] = collections.defaultdict(collections.Counter)
  partial = False

  def record(kind: str, shape: str, rest: str, times: int, nbytes: int) -> None:
    totals[kind]["count"] += times
    totals[kind]["bytes"] += times * nbytes
    op_name = _OP_NAME.search(rest)
    group = groups[(kind, shape.strip(), op_name.group(1) if op_name else "")]
    group["count"] += times
    group["bytes"] += times * nbytes

  def visit(name: str, times: int, seen: tuple) -> None:
    nonlocal partial
    if name not in computations or name in seen:
      return
    for opcode, shape, rest in computations[name]:
      base = opcode.removesuffix("-start")
      if base in KINDS and not opcode.endswith("-done"):
        sizes = _array_bytes(shape)
        record(base, shape, rest, times, sizes[-1] if opcode.endswith("-start") and sizes else sum(sizes))
      called = []
      for ref in _CALLS.findall(rest):
        called += [c.strip().lstrip("%") for c in ref.strip("{}").split(",") if c.strip()]
      if opcode == "fusion" and any(c.startswith(_FUSED_REDUCE_SCATTER) for c in called):
        record("reduce-scatter", shape, rest, times, sum(_array_bytes(shape)))
        continue
      if opcode == "while":
        trip = _trip_count(rest, computations)
        if trip is None:
          partial = True
        body = re.search(r"\bbody=%?([\w.\-]+)", rest)
        if body:
          visit(body.group(1), times * (trip or 1), seen + (name,))
        continue
      for callee in called:
        visit(callee, times, seen + (name,))

  if entry is not None:
    visit(entry, 1, ())
  out = {kind: {"count": int(c["count"]), "bytes": int(c["bytes"])} for kind, c in totals.items()}
  out["partial"] = partial
  ranked = sorted(groups.items(), key=lambda item: -item[1]["bytes"])
  kept = [item for kind in KINDS for item in [g for g in ranked if g[0][0] == kind][:largest]]
  out["largest"] = [{"kind": kind, "shape": shape, "op_name": op_name, "count": int(c["count"]),
                     "bytes": int(c["bytes"])} for (kind, shape, op_name), c in sorted(kept, key=lambda g: -g[1]["bytes"])]
  return out
