"""Packaging: a non-editable install (a wheel built from the source tree) has every subpackage.

The wheel is built offline (`pip wheel --no-build-isolation`, with the setuptools of the test
venv) from a copy of the sources, and installed with `--no-deps --no-index` into a fresh venv that
sees the test venv's site-packages through a .pth path line (so the dependencies are there) but not
the editable rankjax: a path line in a .pth only extends sys.path, it does not run the .pth files
(the editable finder's hook) found there.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

ROOT = pathlib.Path(__file__).resolve().parents[1]
SUBPACKAGES = ("rankjax.data", "rankjax.eval", "rankjax.losses", "rankjax.models", "rankjax.sampling", "rankjax.train")
IMPORTED = (*SUBPACKAGES, "rankjax.train.loop", "rankjax.demo")  # imported (run); every module is found
# Imports the modules named in argv and prints {module: file} for every module of the installed
# rankjax (found, not run).
CHECK = """
import importlib, importlib.util, json, pkgutil, sys
import rankjax
for name in sys.argv[1:]:
  importlib.import_module(name)
names = {"rankjax", *sys.argv[1:]} | {m.name for m in pkgutil.walk_packages(rankjax.__path__, "rankjax.")}
print(json.dumps({n: importlib.util.find_spec(n).origin for n in sorted(names)}))
"""


def _run(args, limit, check=True, **kwargs):
  try:
    out = subprocess.run(args, capture_output=True, text=True, timeout=limit.seconds, **kwargs)
  except subprocess.TimeoutExpired:
    pytest.fail(limit.message(f"{args}"))
  assert out.returncode == 0 or not check, f"{args} exited with {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
  return out


def test_wheel_installs_every_subpackage(tmp_path, timeouts):
  # Each command takes a few calibrations (the imports of every module about 10) on an idle machine.
  limit = timeouts.calibrated(floor_s=300, calibrations=20)
  src = tmp_path / "src"  # a copy: the build writes build/ and *.egg-info next to setup.py
  src.mkdir()
  for name in ("setup.py", "README.md"):
    shutil.copy(ROOT / name, src / name)
  shutil.copytree(ROOT / "rankjax", src / "rankjax", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
  dist = tmp_path / "dist"
  _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(dist),
        str(src)], limit)
  (wheel,) = dist.glob("rankjax-*.whl")

  venv = tmp_path / "venv"
  _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], limit)
  python = venv / "bin" / "python"
  purelib = pathlib.Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              limit).stdout.strip())
  ours = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
  (purelib / "test_venv_site_packages.pth").write_text("".join(f"{p}\n" for p in sorted(ours)))
  _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
        "--ignore-installed", "-q", str(wheel)], limit)

  cwd = tmp_path / "elsewhere"  # outside the source tree: `-m` puts the cwd first on sys.path
  cwd.mkdir()
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
  env.update(HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu", XLA_FLAGS="")
  # absl's --help prints the usage and exits 1 (like --helpfull), so its output is checked instead.
  out = _run([str(python), "-m", "rankjax.main", "--help"], limit, check=False, cwd=cwd, env=env)
  assert out.returncode in (0, 1) and "Traceback" not in out.stderr, out.stderr[-3000:]
  assert "--workdir" in out.stdout and str(venv) in out.stdout, out.stdout[-3000:]  # the flags' module path

  files = json.loads(_run([str(python), "-c", CHECK, *IMPORTED], limit, cwd=cwd, env=env).stdout.splitlines()[-1])
  assert files["rankjax.train"].endswith(os.path.join("rankjax", "train", "__init__.py")), files["rankjax.train"]
  outside = {n: f for n, f in files.items() if not (f and pathlib.Path(f).resolve().is_relative_to(venv.resolve()))}
  assert not outside, f"imported from outside the wheel's venv {venv}: {outside}"
  in_source = {".".join(p.relative_to(src).with_suffix("").parts).removesuffix(".__init__")
               for p in (src / "rankjax").rglob("*.py")}
  assert set(files) == in_source, f"in the sources, not the wheel: {sorted(in_source - set(files))}"
