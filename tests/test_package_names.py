"""No package binds a name that shadows one of its submodules: `rankjax.x.y` is the module x/y.py whatever was
imported before (a function `rankjax.models.generate` once hid the module of the same name)."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1] / "rankjax"
# Shadows older than this test, each a public function named after its module; removing one means renaming the
# module (and its importers). Take a name off this list once it no longer shadows (the test says when).
KNOWN = {"rankjax.eval.pass_at_k", "rankjax.losses.head_loss", "rankjax.losses.weighted_loss"}


def _bound_names(init: pathlib.Path, package: str) -> dict[str, str]:
  """Every top-level name that `init` binds, mapped to what it binds (the dotted origin, or the statement kind)."""
  bound = {}
  for node in ast.parse(init.read_text(encoding="utf-8")).body:
    if isinstance(node, ast.ImportFrom):
      base = package if node.level else (node.module or "")
      if node.level and node.module:
        base = f"{package}.{node.module}"
      for a in node.names:
        bound[a.asname or a.name] = f"{base}.{a.name}"
    elif isinstance(node, ast.Import):
      for a in node.names:
        bound[a.asname or a.name.partition(".")[0]] = a.name
    elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      bound[node.name] = "a definition"
    elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
      targets = node.targets if isinstance(node, ast.Assign) else [node.target]
      for t in targets:
        for n in ast.walk(t):
          if isinstance(n, ast.Name):
            bound[n.id] = "an assignment"
  return bound


def _shadows(root: pathlib.Path = ROOT) -> dict[str, str]:
  """{package.name: why} for every name a package's __init__ binds to something other than its submodule `name`."""
  shadows = {}
  for init in sorted(root.rglob("__init__.py")):
    package = ".".join(init.parent.relative_to(root.parent).parts)
    submodules = {p.stem for p in init.parent.glob("*.py") if p.stem != "__init__"}
    submodules |= {p.parent.name for p in init.parent.glob("*/__init__.py")}
    for name, origin in _bound_names(init, package).items():
      if name in submodules and origin != f"{package}.{name}":  # binding the submodule itself is no shadow
        shadows[f"{package}.{name}"] = f"{package}/__init__.py binds the submodule's name {name} to {origin}"
  return shadows


def test_no_package_name_shadows_a_submodule():
  shadows = _shadows()
  new = [why for name, why in shadows.items() if name not in KNOWN]
  assert not new, "\n".join(new)
  assert not KNOWN - set(shadows), f"no longer shadows, take off KNOWN: {sorted(KNOWN - set(shadows))}"


def test_the_shadow_check_sees_the_old_models_generate(tmp_path):
  models = tmp_path / "rankjax" / "models"
  models.mkdir(parents=True)
  (tmp_path / "rankjax" / "__init__.py").write_text("")
  (models / "generate.py").write_text("")
  (models / "engine.py").write_text("")
  (models / "__init__.py").write_text("from rankjax.models.engine import generate\nfrom rankjax.models import engine\n")
  assert list(_shadows(tmp_path / "rankjax")) == ["rankjax.models.generate"]
