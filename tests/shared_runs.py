"""Finished tiny training runs shared by every test of one process (an xdist worker, or a serial run), so that
tests which only read a finished run, or copy it before changing it, do not each train their own."""

import atexit
import functools
import os
import shutil
import tempfile

from rankjax.train import loop
from tests.helpers import tiny_run_config

THREE_STEPS = {"total_steps": 3, "checkpoint_every": 3}


@functools.cache
def finished_run(total_steps: int, checkpoint_every: int) -> str:
  """Returns the workdir of a finished `tiny_run_config(total_steps=..., checkpoint_every=...)` run (trained on the
  first call, removed when the process exits). Treat it as read-only: `shutil.copytree` it before changing it."""
  root = tempfile.mkdtemp(prefix="rankjax-shared-run-")
  atexit.register(shutil.rmtree, root, ignore_errors=True)
  workdir = os.path.join(root, "run")
  loop.train(tiny_run_config(total_steps=total_steps, checkpoint_every=checkpoint_every), workdir)
  return workdir


def three_steps() -> str:
  """The shared finished 3-step run: checkpoint 3, metrics of steps 1-3, the run's own tokenizer."""
  return finished_run(**THREE_STEPS)


def copy_of_three_steps(tmp_path) -> str:
  """A private copy of `three_steps()` at tmp_path/run, for a test that changes it."""
  return shutil.copytree(three_steps(), os.path.join(str(tmp_path), "run"))
