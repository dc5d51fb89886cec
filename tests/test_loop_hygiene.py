"""The loop reads the device only on log and checkpoint steps, yet a refused (non-finite) step is reported with
its own step number, and no checkpoint is written after it."""

import os

import jax.numpy as jnp
import pytest

from rankjax.train import loop
from rankjax.train import state as train_state_layout
from tests.helpers import tiny_run_config


def test_first_nonfinite_step_is_named_at_the_next_log_step(tmp_path, monkeypatch):
  real = train_state_layout.make_train_step

  def poisoned(model, loss_config, schedule, mesh=None, **kwargs):
    step = real(model, loss_config, schedule, mesh, **kwargs)

    def wrapped(state, batch, diagnose=None, frozen=None, anchor=None):
      new_state, metrics = step(state, batch, diagnose, frozen, anchor)
      bad = state.step == 2  # the third optimizer step "diverges": refused, state kept
      metrics = dict(metrics, nonfinite=jnp.where(bad, 1.0, metrics["nonfinite"]))
      return (jax_tree_where(bad, state, new_state)), metrics
    return wrapped

  monkeypatch.setattr(train_state_layout, "make_train_step", poisoned)  # the step the loop jits
  config = tiny_run_config(total_steps=6, log_every=5, checkpoint_every=5)
  workdir = str(tmp_path / "run")
  with pytest.raises(FloatingPointError, match=r"^step 3: .*at step 5.*last good checkpoint \(step None\)"):
    loop.train(config, workdir)
  assert not os.path.exists(os.path.join(workdir, "checkpoints", "5"))  # nothing saved after the bad step


def jax_tree_where(cond, a, b):
  import jax  # noqa: PLC0415
  return jax.tree.map(lambda x, y: jnp.where(cond, x, y), a, b)


def test_only_process_zero_writes_run_files(tmp_path, monkeypatch):
  monkeypatch.setattr(loop, "is_lead_process", lambda: False)
  workdir = str(tmp_path / "run")
  loop.train(tiny_run_config(total_steps=1, checkpoint_every=1), workdir)
  assert not os.path.exists(os.path.join(workdir, "config.json"))
  assert not os.path.exists(os.path.join(workdir, "metrics.jsonl"))
  assert not os.path.exists(os.path.join(workdir, "tensorboard"))
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "1"))
