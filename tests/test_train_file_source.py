"""A run on GSM8K files (TFDS + Grain): relaunching resumes the data exactly; metrics show each step once."""

import json
import os
import shutil

import numpy as np
import orbax.checkpoint as ocp
import pytest

from rankjax.data import preview
from rankjax.train import loop
from rankjax.train import config as run_config
from rankjax.train.config import with_overrides
from rankjax.train.metrics_writer import read_metrics


def load_config_file(path):
  return run_config.load_config_file(path)

@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def _config(shared_data, tfds_dir, **overrides):
  config = load_config_file("configs/gsm8k_tiny.py")
  small = {"data.files.manual_dir": str(shared_data / "gsm8k"), "data.files.tfds_data_dir": tfds_dir, "data.seq_len": 256,
           "data.batch_size": 4, "model.vocab_size": 1024, "model.hidden_size": 32, "model.num_layers": 2,
           "model.mlp_dim": 64, "total_steps": 3, "log_every": 1, "checkpoint_every": 2, "progress": False}
  return with_overrides(config, {**small, **overrides})


def _params(workdir):
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_names=("params",))
  out = manager.restore(manager.latest_step(), args=ocp.args.Composite(params=ocp.args.StandardRestore()))
  return out["params"]


def test_relaunch_resumes_data_and_metrics_exactly(shared_data, tfds_dir, tmp_path):
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  loop.train(_config(shared_data, tfds_dir), straight)
  shutil.copytree(straight, resumed)
  shutil.rmtree(os.path.join(resumed, "checkpoints", "3"))  # a crash in step 3: the last checkpoint is step 2
  loop.train(_config(shared_data, tfds_dir), resumed)  # relaunch: params, optimizer and data resume at step 2
  a, b = read_metrics(straight), read_metrics(resumed)
  assert [r["step"] for r in b] == [1, 2, 3]
  for ra, rb in zip(a, b):
    assert {k: v for k, v in ra.items() if k.startswith("data/")} == {k: v for k, v in rb.items() if k.startswith("data/")}
    for key in ("loss", "tokens"):
      np.testing.assert_allclose(ra[key], rb[key], rtol=1e-5, err_msg=f"step {ra['step']} {key}")
  for x, y in zip(_leaves(_params(straight)), _leaves(_params(resumed))):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
  state = json.loads(open(os.path.join(resumed, "checkpoints", "3", "data_iter", "process_0-of-1.json")).read())
  assert "record_counts" in json.dumps(state)


def _leaves(tree):
  import jax  # noqa: PLC0415
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_preview_marks_the_supervised_span(shared_data, tfds_dir, tmp_path):
  text = preview.preview(_config(shared_data, tfds_dir), 2, str(tmp_path), color=False)
  assert text.count("--- segment") == 2
  assert "Question: " in text and "\nAnswer: ⟦" in text and "<eos>⟧" in text and "#### " in text
  assert "=== records read so far, each once (used, skipped by reason, truncated): {'used': " in text
  assert text.endswith(" epochs read")
