"""The launcher: one command runs a config; a typo in an override is an error naming it."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config.model.hidden_size=32", "--config.model.num_layers=1", "--config.model.mlp_dim=64",
        "--config.data.num_pretrain=200", "--config.data.num_finetune=64", "--config.data.num_eval=8",
        "--config.data.batch_size=4", "--config.log_every=1", "--config.progress=False"]


def _run(*args):
  env = dict(os.environ, HF_HUB_OFFLINE="1", XLA_FLAGS="")
  return subprocess.run([sys.executable, "-m", "rankjax.main", *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600)


def test_train_run_from_config_file(tmp_path):
  out = _run("--config=configs/synthetic_sft.py", f"--workdir={tmp_path}", "--config.total_steps=2",
             "--config.loss.name=dft", *TINY)
  assert out.returncode == 0, out.stderr[-3000:]
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in rows] == [1, 2]
  assert json.load(open(tmp_path / "config.json"))["loss"]["name"] == "dft"


@pytest.mark.parametrize("override,needle", [("--config.totl_steps=3", "totl_steps"),
                                             ("--config.loss.name=focal", "focal")])
def test_bad_override_is_a_clear_error(tmp_path, override, needle):
  out = _run("--config=configs/synthetic_sft.py", f"--workdir={tmp_path}", override)
  assert out.returncode != 0
  assert needle in out.stderr


def test_demo_end_to_end_small(tmp_path):
  out = _run("--config=configs/demo.py", f"--workdir={tmp_path}", "--config.total_steps=2",
             "--config.demo.pretrain_steps=2", "--config.demo.max_new_tokens=8", *TINY)
  assert out.returncode == 0, out.stderr[-3000:]
  results = json.load(open(tmp_path / "results.json"))
  assert [r["method"] for r in results["rows"]] == ["base (no fine-tuning)", "sft", "dft", "ranktuner"]
  for r in results["rows"]:
    assert 0.0 <= r["accuracy"] <= 1.0 and r["mean_ranktuner_weight"] > 0
  assert (tmp_path / "results.md").exists() and (tmp_path / "loss_curves.png").stat().st_size > 0


def test_sweep_runs_each_entry(tmp_path):
  sweep = tmp_path / "sweep.py"
  sweep.write_text('def get_sweep():\n  return [("a", {"loss.name": "sft"}), ("b", {"loss.name": "ranktuner", "loss.form": "bound"})]\n')
  env = dict(os.environ, HF_HUB_OFFLINE="1", XLA_FLAGS="")
  out = subprocess.run([sys.executable, "experiments/sweep.py", "--config=configs/synthetic_sft.py", f"--sweep={sweep}",
                        f"--workdir={tmp_path / 'runs'}", "--config.total_steps=1", *TINY], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  for name, scheme in (("a", "sft"), ("b", "ranktuner")):
    assert json.load(open(tmp_path / "runs" / name / "config.json"))["loss"]["name"] == scheme
