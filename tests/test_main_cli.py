"""The launcher: one command runs a config; a typo in an override is an error naming it."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import FAST_COMPILE_FLAGS

pytestmark = pytest.mark.multiprocess  # each test starts `python -m rankjax.main` (or experiments/sweep.py)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config.model.hidden_size=32", "--config.model.num_layers=1", "--config.model.mlp_dim=64",
        "--config.data.synthetic.num_pretrain=200", "--config.data.synthetic.num_finetune=64", "--config.data.synthetic.num_eval=8",
        "--config.data.batch_size=4", "--config.log_every=1", "--config.progress=False"]


def _limit(timeouts):
  """The longest run here (the demo) took ~50 calibrations (51 s) on a loaded 2-core machine; at least 600 s."""
  return timeouts.calibrated(floor_s=600, calibrations=60)


def _subprocess(args, limit):
  env = dict(os.environ, HF_HUB_OFFLINE="1", XLA_FLAGS=FAST_COMPILE_FLAGS)  # one CPU device, fast compiles
  try:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=limit.seconds)
  except subprocess.TimeoutExpired:
    pytest.fail(limit.message(" ".join(args[:3])))


def _run(timeouts, *args):
  return _subprocess(["-m", "rankjax.main", *args], _limit(timeouts))


# A top-level typo (--config.totl_steps=3, with its "Did you mean") is tests/test_bad_inputs.py's
# test_bad_config_flag[unknown_field], which checks the same status, line and message.
@pytest.mark.parametrize("override,needle", [
    ("--config.loss.nme=3", "the config has no field 'nme' in --config.loss.nme=3"),
    ("--config.nosuch.x=1", "the config has no field 'nosuch' in --config.nosuch.x=1"),
    ("--config.loss.name=focal", "focal")])
def test_bad_override_is_a_clear_error(tmp_path, timeouts, override, needle):
  out = _run(timeouts, "--config=configs/synthetic_sft.py", f"--workdir={tmp_path}", override)
  assert needle in out.stderr
  # the config flags themselves, and a value the config's validation refuses: one line, no traceback, status 2
  assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
  assert len(out.stderr.strip().splitlines()) == 1, out.stderr[-2000:]


def test_missing_config_file_is_one_line(tmp_path, timeouts):
  out = _run(timeouts, f"--config={tmp_path / 'nofile.py'}", f"--workdir={tmp_path}")
  assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
  assert "cannot load the config file" in out.stderr and "nofile.py" in out.stderr


@pytest.mark.slow
def test_demo_end_to_end_small(tmp_path, timeouts):
  """python -m rankjax.demo; python -m rankjax.main given the demo's config names that command instead."""
  flags = ["--config=configs/demo.py", f"--workdir={tmp_path}", "--config.total_steps=2",
           "--config.demo.pretrain_steps=2", "--config.demo.max_new_tokens=8", "--config.demo.noise_examples=16", *TINY]
  out = _run(timeouts, *flags)
  assert out.returncode == 2 and "python -m rankjax.demo --config=configs/demo.py" in out.stderr, out.stderr[-2000:]
  assert not tmp_path.joinpath("results.json").exists()
  out = _subprocess(["-m", "rankjax.demo", *flags], _limit(timeouts))
  assert out.returncode == 0, out.stderr[-3000:]
  results = json.load(open(tmp_path / "results.json"))
  assert [r["method"] for r in results["rows"]] == ["base (no fine-tuning)", "sft", "dft", "ranktuner",
                                                    "ranktuner_uniform"]
  assert "Noise diagnostic of the base model" in (tmp_path / "results.md").read_text()
  assert (tmp_path / "noise_diagnostic" / "results.json").exists()
  for r in results["rows"]:
    assert 0.0 <= r["accuracy"] <= 1.0 and r["mean_ranktuner_weight"] > 0
  assert (tmp_path / "results.md").exists() and (tmp_path / "loss_curves.png").stat().st_size > 0
  stages = ["data and tokenizer", "pretraining", *(f"fine-tuning {r['method']}" for r in results["rows"][1:]),
            *(f"evaluation of {r['method']}" for r in results["rows"]), "noise diagnostic"]
  assert list(results["stage_seconds"]) == stages and all(s >= 0 for s in results["stage_seconds"].values())


@pytest.mark.slow
def test_sweep_runs_each_entry(tmp_path, timeouts):
  sweep = tmp_path / "sweep.py"
  sweep.write_text('def get_sweep():\n  return [("a", {"loss.name": "sft"}), ("b", {"loss.name": "ranktuner", "loss.form": "bound"})]\n')
  out = _subprocess(["experiments/sweep.py", "--config=configs/synthetic_sft.py", f"--sweep={sweep}",
                     f"--workdir={tmp_path / 'runs'}", "--config.total_steps=1", *TINY], _limit(timeouts))
  assert out.returncode == 0, out.stderr[-3000:]
  for name, scheme in (("a", "sft"), ("b", "ranktuner")):
    assert json.load(open(tmp_path / "runs" / name / "config.json"))["loss"]["name"] == scheme


def test_train_from_a_config_file_then_evaluate_the_workdir(tmp_path, timeouts):
  """python -m rankjax.main trains a config file's run with an override of the scheme; python -m rankjax.evaluate
  evaluates the workdir it wrote. (A typo in an evaluate override: test_every_config_entry_point_...)"""
  run = tmp_path / "run"
  out = _run(timeouts, "--config=configs/synthetic_sft.py", f"--workdir={run}", "--config.total_steps=2",
             "--config.loss.name=dft", *TINY)
  assert out.returncode == 0, out.stderr[-3000:]
  assert [json.loads(line)["step"] for line in open(run / "metrics.jsonl")] == [1, 2]
  assert json.load(open(run / "config.json"))["loss"]["name"] == "dft"
  args = ["-m", "rankjax.evaluate", "--config=configs/eval_math.py", f"--workdir={tmp_path / 'eval'}",
          f"--config.checkpoint={run}", "--config.benchmarks=synthetic", "--config.num_problems=4",
          "--config.num_samples=2", "--config.pass_k=(1,2)", "--config.max_new_tokens=8", "--config.batch_size=8",
          "--config.grading.workers=1"]
  out = _subprocess(args, _limit(timeouts))
  assert out.returncode == 0, out.stderr[-3000:]
  assert "| synthetic | 4 | 2 |" in out.stdout
  assert {"samples.jsonl", "results.json", "results.md"} <= set(os.listdir(tmp_path / "eval"))


@pytest.mark.parametrize("command,config", [(["-m", "rankjax.evaluate"], "configs/eval_math.py"),
                                            (["experiments/sweep.py"], "configs/synthetic_sft.py"),
                                            (["experiments/compare_schemes.py"], "configs/compare_schemes.py")])
def test_every_config_entry_point_reports_a_bad_override_in_one_line(tmp_path, timeouts, command, config):
  out = _subprocess([*command, f"--config={config}", f"--workdir={tmp_path}", "--config.no_such_key=1"], _limit(timeouts))
  assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
  assert "the config has no field 'no_such_key' in --config.no_such_key=1" in out.stderr
