"""python -m rankjax.launch: the local, slurm and tpu launchers. Fake `sbatch`, `gcloud`, `srun`, `scontrol` and
`python` executables first on PATH record their argument lists, which must equal the expected command lines; one
real tiny local sweep (2 runs, 2 at a time, then a relaunch that skips both) runs rankjax.main."""

import json
import os
import pathlib
import shlex
import stat
import subprocess
import sys

import pytest

from rankjax import launch, sweeps
from tests.conftest import FAST_COMPILE_FLAGS

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = "configs/synthetic_sft.py"
SEEDS, METHODS = (0, 1, 2), ("sft", "dft", "ranktuner")  # its get_sweep(): 3 seeds x 3 methods, seed outermost
RUNS = [(f"loss.name-{m}_seed-{s}", [f"--config.seed={s}", f"--config.loss.name={m}"]) for s in SEEDS for m in METHODS]

# A fake executable: appends [its name, *argv] to $FAKE_CALLS; exits with the code of the first key of the JSON
# object $FAKE_EXITS found in its joined arguments. Fake gcloud answers `queued-resources describe` (ACTIVE once a
# create was recorded, else not found) and records the top-level listing of what `tpu-vm scp` copies.
FAKE = r'''#!{python}
import json, os, sys
name, args = os.path.basename(sys.argv[0]), sys.argv[1:]
calls = os.environ["FAKE_CALLS"]
previous = [json.loads(line) for line in open(calls)] if os.path.exists(calls) else []
with open(calls, "a") as f:
  f.write(json.dumps([name, *args]) + "\n")
print(name, "called", file=sys.stderr, flush=True)
if name == "gcloud" and args[:4] == ["compute", "tpus", "queued-resources", "describe"]:
  if any(c[:5] == ["gcloud", "compute", "tpus", "queued-resources", "create"] for c in previous):
    print("ACTIVE")
    sys.exit(0)
  print("ERROR: NOT_FOUND", file=sys.stderr)
  sys.exit(1)
if name == "gcloud" and args[:4] == ["compute", "tpus", "tpu-vm", "scp"]:
  with open(os.environ["FAKE_CALLS"] + ".listing", "w") as f:
    json.dump(sorted(os.listdir(args[-2])), f)
if name == "sbatch":
  print("Submitted batch job 77")
joined = " ".join(args)
for key, code in json.loads(os.environ.get("FAKE_EXITS", "{{}}")).items():
  if key in joined:
    sys.exit(code)
'''


@pytest.fixture
def fakes(tmp_path, monkeypatch):
  """Fake executables first on PATH; returns a function that reads the recorded calls."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for name in ("sbatch", "gcloud", "srun", "scontrol", "fakepython"):
    path = bin_dir / name
    path.write_text(FAKE.format(python=sys.executable))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
  calls = tmp_path / "calls.jsonl"
  monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
  monkeypatch.setenv("FAKE_CALLS", str(calls))
  monkeypatch.delenv("FAKE_EXITS", raising=False)

  def recorded():
    return [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []
  recorded.bin = bin_dir
  recorded.path = calls
  return recorded


def _main(capsys, *argv):
  code = launch.main(list(argv))
  return code, capsys.readouterr().out


def _finish(workdir: pathlib.Path, step: int):
  workdir.mkdir(parents=True)
  (workdir / "metrics.jsonl").write_text(json.dumps({"step": step, "loss": 1.0}) + "\n")


# --------------------------------------------------------------------------------------------------------- local


def test_local_dry_run_lists_every_command_skips_finished_and_runs_nothing(tmp_path, fakes, capsys):
  sweep = tmp_path / "sweep"
  _finish(sweep / "loss.name-dft_seed-1", 5)  # finished (total_steps=5)
  _finish(sweep / "loss.name-sft_seed-2", 4)  # not finished: relaunched, it resumes
  code, out = _main(capsys, "local", f"--config={CONFIG}", f"--workdir={sweep}", "--dry-run", "--parallel=3",
                    "--python=py", "--config.total_steps=5")
  assert code == 0
  expected = [shlex.join(["py", "-m", "rankjax.main", f"--config={CONFIG}", f"--workdir={sweep}/{name}",
                          "--config.total_steps=5", *flags]) for name, flags in RUNS if name != "loss.name-dft_seed-1"]
  lines = out.splitlines()
  assert "[sweep] loss.name-dft_seed-1: finished, skipped" in lines
  assert [line for line in lines if not line.startswith("[sweep]")] == expected
  assert fakes() == [] and sorted(os.listdir(sweep)) == ["loss.name-dft_seed-1", "loss.name-sft_seed-2"]


def test_local_parallel_runs_each_unfinished_run_once_with_logs_and_reports_failures(tmp_path, fakes, capsys,
                                                                                      monkeypatch):
  sweep = tmp_path / "sweep"
  _finish(sweep / "loss.name-sft_seed-0", 200)
  monkeypatch.setenv("FAKE_EXITS", json.dumps({"loss.name-ranktuner_seed-1": 3}))
  code, out = _main(capsys, "local", f"--config={CONFIG}", f"--workdir={sweep}", "--parallel=2",
                    f"--python={fakes.bin / 'fakepython'}")
  assert code == 1
  assert sorted(map(tuple, fakes())) == sorted(
      ("fakepython", "-m", "rankjax.main", f"--config={CONFIG}", f"--workdir={sweep}/{name}", *flags)
      for name, flags in RUNS[1:])
  assert "[sweep] loss.name-sft_seed-0: finished, skipped" in out
  assert f"[sweep] loss.name-ranktuner_seed-1: failed (exit 3) (log {sweep}/loss.name-ranktuner_seed-1/launch.log)" in out
  assert "[sweep] 9 runs: 1 finished before (skipped), 7 done, 1 failed (loss.name-ranktuner_seed-1)" in out
  log = (sweep / "loss.name-dft_seed-2" / "launch.log").read_text()
  assert "fakepython called" in log and "--config.loss.name=dft" in log


def test_local_preempted_run_is_reported_and_stops_new_starts(tmp_path, fakes, capsys, monkeypatch):
  monkeypatch.setenv("FAKE_EXITS", json.dumps({"loss.name-dft_seed-0": 75}))
  code, out = _main(capsys, "local", f"--config={CONFIG}", f"--workdir={tmp_path / 'sweep'}",
                    f"--python={fakes.bin / 'fakepython'}")
  assert code == 75
  assert len(fakes()) == 2  # one after another: the second run was preempted, the others did not start
  assert "[sweep] loss.name-dft_seed-0: preempted (exit 75, checkpoint saved): relaunch the sweep to resume" in out
  assert "1 done, 1 preempted (loss.name-dft_seed-0), 7 not started" in out


def test_a_typo_in_an_override_fails_before_anything_runs(tmp_path, fakes, capsys):
  code = launch.main(["local", f"--config={CONFIG}", f"--workdir={tmp_path}", f"--python={fakes.bin / 'fakepython'}",
                      "--config.totl_steps=3"])
  err = capsys.readouterr().err
  assert code == 2 and "totl_steps" in err and CONFIG in err and fakes() == []


# --------------------------------------------------------------------------------------------------------- slurm


SLURM_ARGS = ("--nodes=2", "--gpus_per_node=8", "--time=01:30:00", "--partition=gpu", "--python=python")


def _slurm_argv(sweep, name, flags, distributed=True):
  return ["python", "-m", "rankjax.main", *(["--distributed"] if distributed else []),
          f"--config={ROOT / CONFIG}", f"--workdir={sweep}/{name}", *flags]


def _header(script: str):
  return [line.split(" ", 1)[1] for line in script.splitlines() if line.startswith("#SBATCH ")]


def test_slurm_writes_an_array_script_and_submits_it(tmp_path, fakes, capsys, monkeypatch):
  sweep = tmp_path / "sweep"
  code, _ = _main(capsys, "slurm", f"--config={CONFIG}", f"--workdir={sweep}", *SLURM_ARGS, f"--chdir={tmp_path}")
  assert code == 0
  script_path = sweep / "sweep.sbatch"
  assert fakes() == [["sbatch", str(script_path)]]
  script = script_path.read_text()
  assert _header(script) == [
      "--job-name=sweep", "--array=0-8", "--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=8", "--time=01:30:00",
      "--partition=gpu", f"--output={sweep}/slurm-%A_%a.out", "--open-mode=append", "--requeue", "--signal=TERM@120"]
  runs = script.split("RUNS=(\n", 1)[1].split("\n)\n", 1)[0].splitlines()
  assert [shlex.split(shlex.split(line)[0]) for line in runs] == [_slurm_argv(sweep, n, f) for n, f in RUNS]
  subprocess.run(["bash", "-n", str(script_path)], check=True)

  # The script itself, as array task 4: srun gets exactly run 4's argument list; an exit 75 requeues the task.
  env = dict(os.environ, SLURM_ARRAY_TASK_ID="4", SLURM_ARRAY_JOB_ID="77")
  fakes.path.unlink()
  for srun_exit, requeue in ((0, []), (75, [["scontrol", "requeue", "77_4"]])):
    env["FAKE_EXITS"] = json.dumps({"--kill-on-bad-exit": srun_exit})
    done = subprocess.run(["bash", str(script_path)], env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == srun_exit, done.stderr
    assert fakes() == [["srun", "--kill-on-bad-exit=1", *_slurm_argv(sweep, *RUNS[4])], *requeue]
    assert f"[sweep] {RUNS[4][0]}: array task 4 of job 77" in done.stdout
    fakes.path.unlink()


def test_slurm_dry_run_prints_the_script_and_submits_nothing_and_skips_finished(tmp_path, fakes, capsys):
  sweep = tmp_path / "sweep"
  _finish(sweep / RUNS[0][0], 200)
  code, out = _main(capsys, "slurm", f"--config={CONFIG}", f"--workdir={sweep}", "--nodes=1", "--dry-run",
                    "--gpus-per-node=4", "--python=python", "--job_name=cmp")
  assert code == 0 and fakes() == [] and not (sweep / "sweep.sbatch").exists()
  assert f"[sweep] {RUNS[0][0]}: finished, skipped" in out
  assert out.rstrip().splitlines()[-1] == f"sbatch {sweep}/sweep.sbatch"
  assert "#SBATCH --array=0-7" in out and "#SBATCH --gpus-per-node=4" in out and "#SBATCH --job-name=cmp" in out
  for name, flags in RUNS[1:]:  # one node: no --distributed
    assert shlex.quote(shlex.join(_slurm_argv(sweep, name, flags, distributed=False))) in out


# ----------------------------------------------------------------------------------------------------------- tpu


def _fake_repo(tmp_path) -> pathlib.Path:
  repo = tmp_path / "repo"
  for d in ("configs", ".venv/bin", ".git", "workdirs/old", "rankjax/__pycache__"):
    (repo / d).mkdir(parents=True)
  (repo / "configs" / "sweep_cfg.py").write_text((ROOT / CONFIG).read_text())
  (repo / "rankjax" / "x.py").write_text("")
  (repo / "setup.py").write_text("")
  return repo


def test_tpu_queued_resource_sync_setup_and_every_run(tmp_path, fakes, capsys):
  repo = _fake_repo(tmp_path)
  sweep = "gs://bucket/my sweep"  # a space: quoted in the remote command
  code, out = _main(capsys, "tpu", f"--config={repo / 'configs' / 'sweep_cfg.py'}", f"--workdir={sweep}",
                    "--tpu_name=pod", "--zone=us-central2-b", "--project=proj", "--queued_resource",
                    "--accelerator_type=v4-32", "--runtime_version=tpu-ubuntu2204-base", f"--local_repo={repo}",
                    f"--stage_dir={tmp_path / 'stage'}", "--poll_s=0", "--wait_s=60")
  assert code == 0, out
  where = ["--zone", "us-central2-b", "--project", "proj"]
  qr = ["gcloud", "compute", "tpus", "queued-resources"]
  describe = [*qr, "describe", "pod", *where, "--format=value(state.state)"]
  ssh = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod", *where, "--worker=all", "--command"]
  expected = [
      describe,  # not found: create it
      [*qr, "create", "pod", "--node-id", "pod", *where, "--accelerator-type", "v4-32",
       "--runtime-version", "tpu-ubuntu2204-base"],
      describe,  # ACTIVE
      ["gcloud", "compute", "tpus", "tpu-vm", "scp", "--recurse", *where, "--worker=all",
       str(tmp_path / "stage" / "rankjax"), "pod:~/"],
      [*ssh, "cd ~/rankjax && python3.11 -m venv .venv && .venv/bin/pip install -e . 'jax[tpu]'"],
      *([*ssh, (f"cd ~/rankjax && .venv/bin/python -m rankjax.main --distributed --config=configs/sweep_cfg.py "
                f"'--workdir=gs://bucket/my sweep/{name}' {' '.join(flags)}")] for name, flags in RUNS),
  ]
  assert fakes() == expected
  # What was copied: the repository without .git, .venv, workdirs and caches.
  assert json.loads(pathlib.Path(str(fakes.path) + ".listing").read_text()) == [
      ".rankjax-sync", "configs", "rankjax", "setup.py"]
  assert not (tmp_path / "stage" / "rankjax" / "rankjax" / "__pycache__").exists()
  # Every remote command parses back to `cd REPO && <the run's argv>`.
  for call, (name, flags) in zip(fakes()[5:], RUNS):
    assert shlex.split(call[-1]) == ["cd", "~/rankjax", "&&", ".venv/bin/python", "-m", "rankjax.main",
                                     "--distributed", "--config=configs/sweep_cfg.py",
                                     f"--workdir={sweep}/{name}", *flags]


def test_tpu_dry_run_prints_every_command_and_a_preempted_run_stops_the_sweep(tmp_path, fakes, capsys, monkeypatch):
  repo = _fake_repo(tmp_path)
  argv = ["tpu", f"--config={repo / 'configs' / 'sweep_cfg.py'}", "--workdir=workdirs/s", "--tpu_name=pod",
          "--zone=z", f"--local_repo={repo}", f"--stage_dir={tmp_path / 'stage'}", "--repo_dir=/opt/code/rk"]
  code, out = _main(capsys, *argv, "--dry-run")
  assert code == 0 and fakes() == [] and not (tmp_path / "stage").exists()
  printed = [shlex.split(line) for line in out.splitlines() if line.startswith("gcloud ")]
  assert printed[0][-2:] == [str(tmp_path / "stage" / "rk"), "pod:/opt/code"]
  assert printed[1][-1] == "cd /opt/code/rk && python3.11 -m venv .venv && .venv/bin/pip install -e . 'jax[tpu]'"
  assert [p[-1] for p in printed[2:]] == [
      f"cd /opt/code/rk && .venv/bin/python -m rankjax.main --distributed --config=configs/sweep_cfg.py "
      f"--workdir=workdirs/s/{name} {' '.join(flags)}" for name, flags in RUNS]

  monkeypatch.setenv("FAKE_EXITS", json.dumps({"loss.name-dft_seed-0": 75}))
  code, out = _main(capsys, *argv)
  assert code == 75
  assert [c[5 if c[4] == "ssh" else 4] for c in fakes()] == ["scp", "pod", "pod", "pod"]  # sync, setup, 2 runs
  assert "1 done, 1 preempted (loss.name-dft_seed-0), 7 not started" in out


# ---------------------------------------------------------------------------------------------- a real tiny sweep


TINY = ["--config.model.hidden_size=32", "--config.model.num_layers=1", "--config.model.mlp_dim=64",
        "--config.data.synthetic.num_pretrain=200", "--config.data.synthetic.num_finetune=64",
        "--config.data.synthetic.num_eval=8", "--config.data.batch_size=4", "--config.log_every=1",
        "--config.progress=False", "--config.total_steps=2"]


@pytest.mark.multiprocess
@pytest.mark.slow
def test_real_local_sweep_two_at_a_time_then_a_relaunch_skips_both(tmp_path, timeouts):
  sweep_file = tmp_path / "two.py"
  sweep_file.write_text('def get_sweep():\n  return [{"loss.name": "sft"}, {"loss.name": "dft"}]\n')
  sweep = tmp_path / "runs"
  argv = [sys.executable, "-m", "rankjax.launch", "local", f"--config={CONFIG}", f"--sweep={sweep_file}",
          f"--workdir={sweep}", "--parallel=2", *TINY]
  env = dict(os.environ, HF_HUB_OFFLINE="1", XLA_FLAGS=FAST_COMPILE_FLAGS)  # one CPU device per run
  limit = timeouts.calibrated(floor_s=300, calibrations=40)
  try:
    out = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit.seconds, check=False)
  except subprocess.TimeoutExpired:
    pytest.fail(limit.message("the 2-run local sweep"))
  logs = {n: (sweep / n / "launch.log").read_text()[-3000:] for n in ("loss.name-sft", "loss.name-dft")
          if (sweep / n / "launch.log").exists()}
  assert out.returncode == 0, (out.stdout, out.stderr, logs)
  assert "[sweep] 2 runs: 0 finished before (skipped), 2 done" in out.stdout
  for name in ("sft", "dft"):
    workdir = sweep / f"loss.name-{name}"
    assert [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert json.loads((workdir / "config.json").read_text())["loss"]["name"] == name
    assert sweeps.is_finished(str(workdir), 2)
  again = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit.seconds, check=False)
  assert again.returncode == 0, again.stderr
  assert "[sweep] loss.name-sft: finished, skipped" in again.stdout
  assert "[sweep] loss.name-dft: finished, skipped" in again.stdout
  assert "[sweep] 2 runs: 2 finished before (skipped), 0 done" in again.stdout
