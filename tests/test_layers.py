"""The package's floors: models and losses at the bottom, data and sampling above them, train and eval next, entry
points on top. No module imports from a higher floor, and no import cycle exists, even one hidden inside a function."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1] / "rankjax"
# The brief's floors: models and losses at the bottom, data above them, train, eval and diagnostics next, entry points
# on top. ConfigError (raised by every validator) is models/errors.py. sampling (generation on a model) needs only
# models and serves eval and train (rollouts): floor 1. cli (flag parsing, the runner, the multi-host start) and
# rundir (the run folder's names, read by train, sweeps, launchers, report) sit beside train: floor 2; models
# spells the two names of a run folder it must recognise (tests/test_rundir.py checks they agree). rl (GRPO: the
# train loop's pieces, the sampling engine and the grading pool) sits beside train and eval: floor 2.
FLOOR = {"models": 0, "losses": 0, "data": 1, "sampling": 1, "cli": 2, "rundir": 2, "train": 2, "eval": 2,
         "diagnostics": 2, "rl": 2}


def _modules() -> dict[str, pathlib.Path]:
  out = {}
  for path in ROOT.rglob("*.py"):
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
      parts = parts[:-1]
    out[".".join(parts)] = path
  return out


def _floor(module: str) -> int:
  parts = module.split(".")
  return FLOOR.get(parts[1], 3) if len(parts) > 1 else 3


def _imports(module: str, path: pathlib.Path, known: dict) -> set[str]:
  """Every rankjax module `module` imports, at top level or inside a function."""
  found = set()
  package = module if path.name == "__init__.py" else module.rpartition(".")[0]
  for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join(anchor + ([node.module] if node.module else []))
      # `from pkg import sub` imports the module pkg.sub; `from pkg import attr` needs pkg's __init__ itself.
      names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
    else:
      continue
    found |= {n for n in names if n in known and n != module}
  return found


def _graph():
  known = _modules()
  return {m: _imports(m, p, known) for m, p in known.items()}


def test_no_module_imports_from_a_higher_floor():
  upward = [f"{m} (floor {_floor(m)}) imports {n} (floor {_floor(n)})"
            for m, deps in _graph().items() for n in deps
            if m != "rankjax" and n != "rankjax" and _floor(n) > _floor(m)]
  assert not upward, "\n".join(upward)


def test_no_import_cycle():
  graph = _graph()
  # `from pkg import sub` is an edge to pkg.sub only, so a package __init__ importing its children is no cycle;
  # a child importing a name from its package's __init__ (even inside a function, to dodge the import order) is.
  edges = graph
  state, cycles = {}, []

  def visit(node, stack):
    state[node] = "open"
    stack.append(node)
    for nxt in edges[node]:
      if state.get(nxt) == "open":
        cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
      elif nxt not in state:
        visit(nxt, stack)
    stack.pop()
    state[node] = "done"

  for module in sorted(edges):
    if module not in state:
      visit(module, [])
  assert not cycles, "\n".join(cycles)
