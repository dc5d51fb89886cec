"""Checkpoint writes that fail: a full disk while saving keeps the previous checkpoint restorable and the run
stops naming both; an unwritable checkpoints folder is an error before the first step; a torn metrics line from
a kill is dropped on resume."""

import contextlib
import os
import resource
import shutil
import signal
import subprocess

import pytest

from experiments import fault_injection as fi
from rankjax.train import loop
from rankjax.train.metrics_writer import MetricsWriter, read_metrics
from tests.helpers import tiny_run_config
from tests.shared_runs import copy_of_three_steps


@contextlib.contextmanager
def _unwritable(path: str):
  """Makes `path` (a folder) unwritable, for root too: `chattr +i` as root (permission bits do not stop root),
  else chmod 555. Skips when neither is possible."""
  if os.geteuid() == 0:
    if not shutil.which("chattr") or subprocess.run(["chattr", "+i", path], capture_output=True).returncode:
      pytest.skip("running as root without a working `chattr +i`: no way to make a folder unwritable")
    try:
      yield
    finally:
      subprocess.run(["chattr", "-i", path], check=True)
  else:
    os.chmod(path, 0o555)
    try:
      yield
    finally:
      os.chmod(path, 0o755)


def test_unwritable_checkpoint_folder_fails_before_the_first_step(tmp_path):
  workdir = copy_of_three_steps(tmp_path)
  checkpoints = os.path.join(workdir, "checkpoints")
  with _unwritable(checkpoints):
    with pytest.raises(PermissionError, match=f"cannot write checkpoints to {checkpoints}.*Nothing was trained"):
      loop.train(tiny_run_config(total_steps=4), workdir)
  assert [r["step"] for r in read_metrics(workdir)] == [1, 2, 3]
  loop.train(tiny_run_config(total_steps=4), workdir)  # permissions back: it resumes
  assert [r["step"] for r in read_metrics(workdir)] == [1, 2, 3, 4]


def _file_size_limit(limit_bytes: int):
  def set_limit():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, like ENOSPC
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
  return set_limit


@pytest.mark.multiprocess
def test_disk_full_during_a_save_keeps_the_previous_checkpoint(tmp_path, timeouts):
  limit = timeouts.calibrated(floor_s=240, calibrations=30)
  workdir = str(tmp_path / "run")
  steps = (*fi.DEFAULT_OVERRIDES, "--config.checkpoint_every=2")
  _, _, rc = fi.timed_run(fi.command(workdir, (*steps, "--config.total_steps=2")), workdir, workdir + ".log",
                          limit.seconds)
  assert rc == 0 and fi.latest_checkpoint(workdir) == 2, open(workdir + ".log").read()[-3000:]
  # Relaunch for 4 steps where no file may grow past 64 KiB: the checkpoint's array data (~700 KiB) cannot be
  # written. (The compilation cache is off: its entries are larger too.)
  env = {**fi.child_env(), "JAX_ENABLE_COMPILATION_CACHE": "false"}
  out = subprocess.run(fi.command(workdir, (*steps, "--config.total_steps=4")), cwd=fi.ROOT, env=env,
                       capture_output=True, text=True, timeout=limit.seconds, preexec_fn=_file_size_limit(64 * 1024))
  assert out.returncode != 0, out.stdout[-2000:] + out.stderr[-2000:]
  assert "saving the checkpoint of step 4" in out.stderr or "writing a checkpoint" in out.stderr, out.stderr[-3000:]
  assert "the last complete checkpoint, step 2, is intact" in out.stderr, out.stderr[-3000:]
  assert fi.latest_checkpoint(workdir) == 2
  # Without the limit the relaunch removes the half-written step, restores step 2 and finishes.
  _, _, rc = fi.timed_run(fi.command(workdir, (*steps, "--config.total_steps=4")), workdir, workdir + ".log",
                          limit.seconds)
  assert rc == 0, open(workdir + ".log").read()[-3000:]
  assert fi.latest_checkpoint(workdir) == 4 and fi.temporary_checkpoints(workdir) == []
  assert [r["step"] for r in read_metrics(workdir)] == [1, 2, 3, 4]


def test_a_torn_last_metrics_line_is_dropped_on_resume(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
  MetricsWriter(str(tmp_path), resume_step=2, tensorboard=False).close()
  assert path.read_text() == '{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n'
  path.write_text('{"step": 1, "loss": 2.0}\nnot json\n{"step": 2, "loss": 1.5}\n')
  with pytest.raises(ValueError, match="metrics.jsonl, line 2: not a JSON object"):
    MetricsWriter(str(tmp_path), resume_step=2, tensorboard=False)


def test_resuming_a_workdir_with_another_model_size_names_the_fields(tmp_path):
  workdir = copy_of_three_steps(tmp_path)
  before = open(os.path.join(workdir, "config.json")).read()
  with pytest.raises(ValueError, match=r"workdir .*run holds checkpoints of a model with other parameter shapes "
                                       r"\(model.hidden_size=32 there, 64 here"):
    loop.train(tiny_run_config(total_steps=4, **{"model.hidden_size": 64}), workdir)
  assert open(os.path.join(workdir, "config.json")).read() == before  # the run's record is untouched
  assert fi.latest_checkpoint(workdir) == 3


def test_checkpoint_without_data_state_is_refused(tmp_path):
  workdir = copy_of_three_steps(tmp_path)
  shutil.rmtree(os.path.join(workdir, "checkpoints", "3", "data_iter"))
  with pytest.raises(RuntimeError, match=r"checkpoints/3 has no data iterator state, so the data position cannot be "
                                         r"resumed exactly"):
    loop.train(tiny_run_config(total_steps=4), workdir)
  assert fi.latest_checkpoint(workdir) == 3
