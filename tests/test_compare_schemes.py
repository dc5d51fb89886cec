"""experiments/compare_schemes.py end to end at toy size: every stage, the summary over seeds, resumption."""

import importlib.util
import json
import os

import pytest

from rankjax.train.config import load_config_file, with_overrides

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script():
  spec = importlib.util.spec_from_file_location("compare_schemes", os.path.join(ROOT, "experiments", "compare_schemes.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_mean_ci_is_a_t_interval():
  script = _script()
  mean, half = script.mean_ci([0.1, 0.2, 0.3])  # rankjax.report.mean_ci: t(0.975, 2) = 4.3027
  assert mean == pytest.approx(0.2) and half == pytest.approx(4.302653 * 0.1 / 3 ** 0.5, rel=1e-6)


def test_compare_schemes_small(tmp_path):
  """One method (a second would repeat the same stages: the methods differ only in their loss config), 2 seeds,
  clean and noisy."""
  script = _script()
  config = with_overrides(load_config_file("configs/compare_schemes.py"), {
      "model.hidden_size": 32, "model.num_layers": 1, "model.mlp_dim": 64, "data.batch_size": 4,
      "data.synthetic.num_pretrain": 200, "data.synthetic.num_finetune": 40, "data.synthetic.num_eval": 6,
      "total_steps": 2, "checkpoint_every": 2, "log_every": 1, "compare.methods": "ranktuner_bound_uniform",
      "compare.seeds": (0, 1), "compare.pretrain_steps": 2, "compare.eval_samples": 2, "compare.max_new_tokens": 6})
  workdir = str(tmp_path)
  summary = script.run(config, workdir)
  assert set(summary) == {"clean", "noisy"}
  assert set(summary["noisy"]) == {"base", "ranktuner_bound_uniform"}
  for per in summary.values():
    for r in per.values():
      assert r["seeds"] == [0, 1] and 0 <= r["pass@1"][0] <= 1
  saved = json.load(open(os.path.join(workdir, "results.json")))
  assert len(saved["rows"]) == 4 + 4 and os.path.getsize(os.path.join(workdir, "compare.png")) > 0
  # The noisy runs trained on noisy records; a relaunch reuses every finished run and evaluation.
  noisy = json.load(open(os.path.join(workdir, "runs", "noisy", "ranktuner_bound_uniform", "seed1", "config.json")))
  assert noisy["data"]["response_noise"] == {"rate": 0.05, "seed": 1}
  again = script.run(config, workdir)
  assert json.loads(json.dumps(again)) == json.loads(json.dumps(summary))
