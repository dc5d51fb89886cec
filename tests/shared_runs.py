"""Finished tiny training runs shared by the tests of one process (an xdist worker, or a serial run): each is
trained on first use, so that tests which only read a finished run, or copy it before changing it, do not each
train their own. Under xdist each worker that needs a run trains its own copy. JAX starts only when a test asks.

- `three_steps()` / `copy_of_three_steps(tmp_path)`: the plain 3-step run (checkpoint 3), for the training-loop,
  checkpoint, determinism and security tests;
- `tiny_trained_run(tmp_path_factory)`: a 4-step run with checkpoints, evaluations every 2 steps and an HF export,
  for the notebooks, the noise diagnostic and the evaluation harness.
"""

import atexit
import functools
import os
import shutil
import tempfile

THREE_STEPS = {"total_steps": 3, "checkpoint_every": 3}
# 4 steps with a checkpoint, and an evaluation on the synthetic benchmark, every 2 (so steps 1 and 3 have none), and
# an HF export: enough for the notebooks, the noise diagnostic, the eval harness and the eval during training.
TINY_RUN_OVERRIDES = {"total_steps": 4, "checkpoint_every": 2, "export_hf": True, "eval.every_steps": 2,
                      "eval.num_problems": 4, "eval.max_new_tokens": 16, "eval.batch_size": 4,
                      "eval.grading.workers": 1}
_built = {}


def _train(overrides: dict, workdir: str) -> None:
  from rankjax.train import loop  # noqa: PLC0415 (JAX starts only when a test needs a run)
  from tests.helpers import tiny_run_config  # noqa: PLC0415
  loop.train(tiny_run_config(**overrides), workdir)


@functools.cache
def finished_run(total_steps: int, checkpoint_every: int) -> str:
  """Returns the workdir of a finished `tiny_run_config(total_steps=..., checkpoint_every=...)` run (trained on the
  first call, removed when the process exits). Treat it as read-only: `shutil.copytree` it before changing it."""
  root = tempfile.mkdtemp(prefix="rankjax-shared-run-")
  atexit.register(shutil.rmtree, root, ignore_errors=True)
  workdir = os.path.join(root, "run")
  _train({"total_steps": total_steps, "checkpoint_every": checkpoint_every}, workdir)
  return workdir


def three_steps() -> str:
  """The shared finished 3-step run: checkpoint 3, metrics of steps 1-3, the run's own tokenizer."""
  return finished_run(**THREE_STEPS)


def copy_of_three_steps(tmp_path) -> str:
  """A private copy of `three_steps()` at tmp_path/run, for a test that changes it."""
  return shutil.copytree(three_steps(), os.path.join(str(tmp_path), "run"))


def tiny_trained_run(tmp_path_factory) -> str:
  """The workdir (a path) of `tiny_run_config(**TINY_RUN_OVERRIDES)` trained to the end; its export is in
  workdir/hf. Trained by the first call in this process (`tmp_path_factory`: pytest's session fixture), reused
  after. Tests only read it."""
  if "tiny" not in _built:
    workdir = tmp_path_factory.mktemp("tiny_trained_run") / "run"
    _train(TINY_RUN_OVERRIDES, str(workdir))
    _built["tiny"] = str(workdir)
  return _built["tiny"]
