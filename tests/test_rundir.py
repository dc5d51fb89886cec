"""rankjax.rundir: the run folder's names and paths, its progress (metrics rows, committed checkpoints, finished),
atomic writes, the preemption exit status; importable without JAX."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from rankjax.rundir import atomic, exit_status, layout, progress

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_importing_rundir_does_not_import_jax():
  code = ("import sys, rankjax.rundir, rankjax.rundir.layout, rankjax.rundir.progress, rankjax.rundir.atomic, "
          "rankjax.rundir.exit_status; assert 'jax' not in sys.modules, 'jax imported'")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       check=False)
  assert out.returncode == 0, out.stderr


def test_layout_paths(tmp_path):
  run = str(tmp_path / "run")
  assert layout.config_path(run) == os.path.join(run, "config.json")
  assert layout.metrics_path(run) == os.path.join(run, "metrics.jsonl")
  assert layout.checkpoints_dir(run) == os.path.join(run, "checkpoints")
  assert layout.checkpoints_dir(os.path.join(run, "checkpoints")) == os.path.join(run, "checkpoints")
  assert layout.workdir_of(os.path.join(run, "checkpoints") + os.sep) == run and layout.workdir_of(run) == run
  assert layout.eval_step_dir(run, 40) == os.path.join(run, "eval", "step_40")
  assert layout.eval_step_of("step_40") == 40 and layout.eval_step_of("row.json") is None
  assert layout.eval_row_path(run) == os.path.join(run, "eval", "row.json")


def _metrics(run: pathlib.Path, steps, torn: str = ""):
  run.mkdir(parents=True, exist_ok=True)
  (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in steps) + torn)


def test_read_metrics_and_logged_steps(tmp_path):
  run = tmp_path / "run"
  assert progress.logged_steps(str(run)) == []
  with pytest.raises(FileNotFoundError):
    progress.read_metrics(str(run))
  _metrics(run, (1, 2), torn='{"step": 3, "lo')
  assert progress.logged_steps(str(run)) == [1, 2]
  with pytest.raises(ValueError):
    progress.read_metrics(str(run))  # the report names a torn file; it does not pass over it
  _metrics(run, (1, 2))
  assert [r["step"] for r in progress.read_metrics(str(run))] == [1, 2]


def test_committed_steps_ignore_temporary_checkpoints(tmp_path):
  run = tmp_path / "run"
  assert progress.committed_steps(str(run)) == []
  for name in ("4", "12", "16.orbax-checkpoint-tmp-123"):
    (run / "checkpoints" / name).mkdir(parents=True)
  (run / "checkpoints" / "8").write_text("")  # a file, not a step
  assert progress.committed_steps(str(run)) == [4, 12]
  assert progress.committed_steps(str(run / "checkpoints")) == [4, 12]


def test_is_finished_follows_the_committed_checkpoints_else_the_metrics(tmp_path):
  run = tmp_path / "run"
  assert not progress.is_finished(str(run), 4)
  _metrics(run, (1, 2, 3), torn='{"step": 4, "lo')
  assert not progress.is_finished(str(run), 4) and progress.is_finished(str(run), 3)  # no checkpoints: metrics
  _metrics(run, (1, 2, 3, 4))
  (run / "checkpoints" / "2").mkdir(parents=True)
  (run / "checkpoints" / "4.orbax-checkpoint-tmp-1").mkdir()
  assert not progress.is_finished(str(run), 4)  # step 4 logged, its checkpoint not committed: a relaunch redoes it
  (run / "checkpoints" / "4").mkdir()
  assert progress.is_finished(str(run), 4) and progress.is_finished(str(run), 3)


def test_atomic_writes_leave_no_temporary_file(tmp_path):
  path = str(tmp_path / "x.json")
  assert atomic.write_json(path, {"a": 1}) == path
  assert json.loads(pathlib.Path(path).read_text()) == {"a": 1}
  atomic.write_text(path, "second")
  atomic.write_lines(str(tmp_path / "rows.jsonl"), ["1\n", "2\n"])
  assert pathlib.Path(path).read_text() == "second" and (tmp_path / "rows.jsonl").read_text() == "1\n2\n"
  assert sorted(os.listdir(tmp_path)) == ["rows.jsonl", "x.json"]


def test_preemption_exit_status_is_the_one_the_launchers_expect():
  from rankjax import launch  # noqa: PLC0415
  from rankjax.train import preemption  # noqa: PLC0415 (imports JAX)
  assert exit_status.PREEMPTED_EXIT_CODE == preemption.PREEMPTED_EXIT_CODE == launch.PREEMPTED == 75


def test_models_recognises_a_workdir_by_the_run_folders_names():
  from rankjax.models import hf_checkpoint  # noqa: PLC0415 (loads JAX)
  assert hf_checkpoint.RUN_CONFIG_FILE == layout.CONFIG_FILE
  assert hf_checkpoint.CHECKPOINTS_DIR == layout.CHECKPOINTS_DIR
