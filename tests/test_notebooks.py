"""The notebooks in notebooks/ run, and are stored without outputs.

Every notebook there is executed with nbclient in a fresh kernel of this Python (the venv's), on small inputs built once
per module: a rankjax workdir trained for four steps (tests/shared_runs.py, shared with other test files), its Hugging
Face export, a JSONL file and a second BPE tokenizer; and a sweep folder of three tiny runs. A notebook reads its inputs
from RANKJAX_* environment variables; CASES says which ones each notebook gets (one line per case). A notebook without
an entry runs once with only COMMON_ENV, in a scratch directory where the defaults meant for a human user (e.g.
workdirs/demo) do not exist: one that needs inputs this file does not build fails, it is never skipped. Any error fails
the test with the cell's source and the error; each cell has a time limit (conftest's `timeouts`, scaled by
RANKJAX_TEST_TIMEOUT_SCALE). Each execution's time is printed (`pytest -s`).

To strip a notebook's outputs: `.venv/bin/python -m tests.test_notebooks notebooks/NAME.ipynb`.
"""

import json
import os
import pathlib
import re
import string
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb"))

# Environment of every execution. Placeholders: {out} and {tfds} are fresh directories of the execution;
# {workdir} (a rankjax workdir: tests/shared_runs.py's tiny run), {hf} (an HF checkpoint directory, the workdir's
# export), {jsonl} (a train.jsonl file whose first record is bad) and {tokenizer} (a BPE of 300 tokens, not the
# checkpoint's) are built once per module by the fixture `inputs`, {sweep} (a sweep folder: sft x 2 seeds and
# ranktuner x 1, with token dumps) by `sweep_inputs`; each fixture only when an execution names one of its
# placeholders (INPUT_FIXTURES).
COMMON_ENV = {"HF_HUB_OFFLINE": "1", "JAX_PLATFORMS": "cpu", "RANKJAX_OUT": "{out}", "RANKJAX_TFDS_DATA_DIR": "{tfds}"}
# notebook -> {case: environment on top of COMMON_ENV}. A new notebook: one line here (or none if it needs no input).
CASES = {
    "inspect_token_weights.ipynb": {
        "workdir": {"RANKJAX_CHECKPOINT": "{workdir}", "RANKJAX_NUM_EXAMPLES": "4"},
        "hf_jsonl_other_tokenizer": {"RANKJAX_CHECKPOINT": "{hf}", "RANKJAX_DATA": "{jsonl}",
                                     "RANKJAX_TOKENIZER": "{tokenizer}", "RANKJAX_METHOD": "ranktuner_bound_uniform",
                                     "RANKJAX_NUM_EXAMPLES": "4"},
    },
    "noise_diagnostic.ipynb": {"workdir": {"RANKJAX_CHECKPOINT": "{workdir}", "RANKJAX_NUM_EXAMPLES": "50"}},
    "compare_sweep_runs.ipynb": {"sweep": {"RANKJAX_SWEEP_DIR": "{sweep}"}},
    "weight_surfaces.ipynb": {"default": {}},
}
PER_EXECUTION = ("out", "tfds")
INPUT_FIXTURES = {"workdir": "inputs", "hf": "inputs", "jsonl": "inputs", "tokenizer": "inputs",
                  "sweep": "sweep_inputs"}  # placeholder -> the module fixture that builds it
# A cell's limit: max(180 s, 8 x 20 calibrations) x RANKJAX_TEST_TIMEOUT_SCALE. The slowest cell (the noise
# diagnostic's run) took 7-10 s, and a whole notebook 11-21 s, on a 2-core machine busy with two other test runs
# (calibration 1.5 s): a machine several times slower still passes.
CELL_FLOOR_S, CELL_CALIBRATIONS = 180, 20
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _executions():
  return [pytest.param(name, case, id=f"{name[:-len('.ipynb')]}-{case}")
          for name in NOTEBOOKS for case in CASES.get(name, {"default": {}})]


def _placeholders(env: dict) -> set:
  return {field for value in env.values() for _, field, _, _ in string.Formatter().parse(value) if field}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
  """The inputs the notebooks read: paths by placeholder name (see COMMON_ENV)."""
  from rankjax.data import bpe  # noqa: PLC0415 (JAX starts only when a notebook needs these)
  from tests.shared_runs import tiny_trained_run  # noqa: PLC0415
  root = tmp_path_factory.mktemp("notebook_inputs")
  workdir = pathlib.Path(tiny_trained_run(tmp_path_factory))  # shared with other files' tests: read only
  hf = workdir / "hf"
  assert (hf / "tokenizer.json").is_file()  # the export carries the run's own BPE
  jsonl = root / "jsonl" / "train.jsonl"
  jsonl.parent.mkdir()
  rows = [{"question": "a record without the prompt field"}]
  rows += [{"prompt": f"What is {i} plus {i + 1}?",
            "response": f"{i} + {i + 1} = {2 * i + 1}. The answer is {2 * i + 1}."} for i in range(12)]
  jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
  tokenizer = root / "tokenizer"
  bpe.train_bpe([r.get("prompt", "") + r.get("response", "") for r in rows] * 4, 300, str(tokenizer))
  return {"workdir": str(workdir), "hf": str(hf), "jsonl": str(jsonl), "tokenizer": str(tokenizer)}


@pytest.fixture(scope="module")
def sweep_inputs(tmp_path_factory) -> dict:
  """{"sweep": a folder laid out as `rankjax.launch` writes a sweep}: sft with seeds 0 and 1, ranktuner with seed 0
  (so the notebook shows a group of n = 2, with its interval and band, and one of n = 1, without), one run per folder
  named by `sweeps.run_name`, 2 steps each (curves of two points are enough to draw), every step logged (token
  quantiles included); the ranktuner run also dumps tokens every 2 steps. loss.form="bound" in every run (sft ignores
  it): with the exact form's E[R_t] a ranktuner step took 1.7 s here, with the bound form 0.16 s. Two programs to
  compile (sft, ranktuner)."""
  from rankjax import sweeps  # noqa: PLC0415
  from rankjax.train.loop import train  # noqa: PLC0415
  from tests.helpers import tiny_run_config  # noqa: PLC0415
  root = tmp_path_factory.mktemp("sweep")
  runs = [o for o in sweeps.product(seed=[0, 1], **{"loss.name": ["sft", "ranktuner"]})
          if o["loss.name"] == "sft" or o["seed"] == 0]
  assert len(runs) == 3
  for overrides in runs:
    dump = {"loss.dump_tokens": 2} if overrides["loss.name"] == "ranktuner" else {}
    config = tiny_run_config(**overrides, **dump, **{"loss.form": "bound"}, total_steps=2, checkpoint_every=2)
    train(config, str(root / sweeps.run_name(overrides)))
  return {"sweep": str(root)}


@pytest.fixture(scope="module")
def kernel_path(tmp_path_factory) -> str:
  """A JUPYTER_PATH whose kernel `python3` is this interpreter (a user's own python3 kernelspec is not used)."""
  root = tmp_path_factory.mktemp("jupyter")
  spec = root / "kernels" / "python3"
  spec.mkdir(parents=True)
  (spec / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "Python 3 (rankjax tests)", "language": "python"}), encoding="utf-8")
  return str(root)


def _kernel_env(case_env: dict, paths: dict) -> dict:
  from tests.conftest import FAST_COMPILE_FLAGS  # noqa: PLC0415
  env = {k: v for k, v in os.environ.items() if not k.startswith("RANKJAX_") and k != "MPLBACKEND"}
  env["XLA_FLAGS"] = FAST_COMPILE_FLAGS  # one CPU device (not the suite's 8), fast compiles
  env.update({k: v.format_map(paths) for k, v in {**COMMON_ENV, **case_env}.items()})
  return env


def _error_text(cell, error) -> str:
  errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
  text = "\n".join(errors[-1]["traceback"]) if errors else f"{type(error).__name__}: {error}"
  return ANSI.sub("", text)[-6000:]


# Each starts one single-process kernel, with per-cell limits far above its time: not timing-sensitive, so these run
# in the parallel part, one after another on one xdist worker (the module's fixtures are built once there).
@pytest.mark.xdist_group("notebooks")
@pytest.mark.parametrize("name,case", _executions())
def test_notebook_runs(name, case, request, tmp_path, timeouts, kernel_path, monkeypatch):
  import nbclient  # noqa: PLC0415
  import nbformat  # noqa: PLC0415
  from jupyter_client.kernelspec import KernelSpecManager  # noqa: PLC0415
  from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError  # noqa: PLC0415
  case_env = CASES.get(name, {"default": {}})[case]
  needed = _placeholders({**COMMON_ENV, **case_env}) - set(PER_EXECUTION)
  paths = {}
  for fixture in sorted({INPUT_FIXTURES[p] for p in needed}):
    paths.update(request.getfixturevalue(fixture))
  for key in PER_EXECUTION:
    (tmp_path / key).mkdir()
    paths[key] = str(tmp_path / key)
  env = _kernel_env(case_env, paths)
  monkeypatch.setenv("JUPYTER_PATH", kernel_path)
  argv = KernelSpecManager().get_kernel_spec("python3").argv
  assert argv[0] == sys.executable, f"kernel python3 runs {argv[0]}, not this Python {sys.executable}"

  nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
  cwd = tmp_path / "notebooks"  # where a notebook starts: its defaults (../workdirs/...) do not exist here
  cwd.mkdir()
  cell_limit = timeouts.calibrated(CELL_FLOOR_S, CELL_CALIBRATIONS)
  start_limit = timeouts.calibrated(60, 10)
  client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=int(cell_limit.seconds),
                                   startup_timeout=int(start_limit.seconds), resources={"metadata": {"path": str(cwd)}})
  current, cell_times = {"index": None, "start": 0.0}, {}

  def on_start(cell, cell_index):
    current.update(index=cell_index, start=time.monotonic())

  def on_executed(cell, cell_index, execute_reply):
    cell_times[cell_index] = time.monotonic() - current["start"]

  client.on_cell_start, client.on_cell_executed = on_start, on_executed
  where = f"notebooks/{name} [{case}]"
  start = time.monotonic()
  failure = None  # failed outside the except clauses, so that nbclient's own (coloured) message is not chained
  try:
    client.execute(env=env)
  except CellTimeoutError:
    i = current["index"]
    failure = f"{cell_limit.message(f'cell {i} of {where}')}\n--- cell {i} ---\n{nb.cells[i].source}"
  except (CellExecutionError, DeadKernelError, RuntimeError) as e:  # RuntimeError: the kernel did not start
    i = current["index"]
    failure = (f"{where}: the kernel did not start: {e}" if i is None else
               f"{where}: cell {i} (counting from 0, markdown cells included) failed\n--- cell {i} ---\n"
               f"{nb.cells[i].source}\n--- error ---\n{_error_text(nb.cells[i], e)}")
  total = time.monotonic() - start
  executed = tmp_path / name  # with its outputs, for a look after a failure
  nbformat.write(nb, executed)
  if failure:
    pytest.fail(f"{failure}\n(the executed notebook: {executed})", pytrace=False)
  cells = ", ".join(f"{i}: {t:.1f}" for i, t in cell_times.items())
  print(f"\n[notebooks] {where}: {total:.1f} s in all, kernel start included; code cells (s): {cells}")
  assert len(cell_times) == sum(c.cell_type == "code" for c in nb.cells)


def test_cases_name_existing_notebooks():
  assert NOTEBOOKS, f"no notebook in {NOTEBOOK_DIR}"
  stale = sorted(set(CASES) - set(NOTEBOOKS))
  assert not stale, f"CASES names notebooks that are not in notebooks/: {stale}"


def _stored_notebooks() -> list:
  """Every notebook in git (tracked anywhere in the repository) and every one in notebooks/ (new ones too)."""
  paths = {NOTEBOOK_DIR / n for n in NOTEBOOKS}
  try:
    tracked = subprocess.run(["git", "ls-files", "-z", "--", "*.ipynb"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout
    paths |= {ROOT / p for p in tracked.split("\0") if p and (ROOT / p).exists()}
  except (OSError, subprocess.CalledProcessError):  # not a git checkout (e.g. an unpacked sdist)
    pass
  return sorted(str(p.relative_to(ROOT)) for p in paths)


def _unstripped(nb) -> list:
  """What `strip_outputs` would remove: one line per cell."""
  found = []
  for i, cell in enumerate(nb.cells):
    what = [k for k in ("outputs",) if cell.get(k)] + [k for k in ("execution_count",) if cell.get(k) is not None]
    what += [f"metadata.{k}" for k in ("execution", "collapsed", "scrolled") if k in cell.get("metadata", {})]
    if what:
      found.append(f"cell {i}: {', '.join(what)}")
  return found


@pytest.mark.parametrize("path", _stored_notebooks())
def test_notebook_is_stored_without_outputs(path):
  import nbformat  # noqa: PLC0415
  nb = nbformat.read(ROOT / path, as_version=4)
  nbformat.validate(nb)
  found = _unstripped(nb)
  assert not found, (f"{path} carries outputs ({'; '.join(found)}); strip them with "
                     f"`.venv/bin/python -m tests.test_notebooks {path}`")


def strip_outputs(path) -> None:
  """Removes outputs, execution counts and cell timing metadata from the notebook at `path`, in place."""
  import nbformat  # noqa: PLC0415
  nb = nbformat.read(path, as_version=4)
  for cell in nb.cells:
    if cell.cell_type == "code":
      cell.outputs, cell.execution_count = [], None
    for key in ("execution", "collapsed", "scrolled"):
      cell.metadata.pop(key, None)
  nbformat.write(nb, path)


if __name__ == "__main__":
  for p in sys.argv[1:]:
    strip_outputs(p)
    print(f"stripped {p}")
