"""The train step and run of the schemes that read a second model (asft: the initial weights, or a LoRA run's base;
psft: an old-policy snapshot in the state, refreshed every psft_refresh_steps): sharded == single device, asft's first
step is DFT's, the snapshot's refresh schedule, resume == uninterrupted (the snapshot is checkpointed), and a resumed
run that would anchor on other weights, or has no snapshot, is refused. The losses themselves:
tests/test_losses_anchored.py."""

import os
import shutil

import jax
import numpy as np
import pytest

from rankjax import models
from rankjax.models import lora
from rankjax.train import checkpointing, loop
from rankjax.train import state as train_state_layout
from rankjax.train.metrics_writer import read_metrics
from rankjax.train.optimizer import learning_rate_schedule
from rankjax.train.train_step import make_train_step
from tests import shared_runs
from tests.helpers import tiny_run_config
from tests.test_train import _assert_trees_close, _batch

SPEC = lora.LoraSpec(rank=4, alpha=8.0)


def _run_steps(config, model, mesh, batch, steps: int, spec=None):
  """(states after each of `steps` steps, last metrics) of the run's step on `mesh`, from `create_state`."""
  step = jax.jit(make_train_step(model, config.loss, learning_rate_schedule(config.optimizer, 10), mesh))
  state = loop.create_state(config, model, mesh)
  frozen = train_state_layout.load_base(config, model, mesh) if spec else None
  anchor = (train_state_layout.load_base(config, model, mesh)
            if train_state_layout.needs_initial_anchor(config, model) else None)
  placed = jax.device_put(batch, loop._batch_sharding(mesh, batch["inputs"].shape[1]))
  states = [state]
  for _ in range(steps):
    state, metrics = step(state, placed, None, frozen, anchor)
    states.append(state)
  return states, metrics


# psft fully fine-tuned on (4, 2, 1) (FSDP; the fused loss under shard_map with the old policy's log-probs split like
# the rows; the snapshot sharded like the params); asft with LoRA on (2, 2, 2) (the anchor is the base with B = 0
# adapters; XLA's partitioning with "tensor"). asft's KL under shard_map: tests/test_losses_anchored.py.
@pytest.mark.parametrize("name, spec, mesh_shape", [("psft", None, (4, 2, 1)), ("asft", SPEC, (2, 2, 2))])
def test_sharded_steps_equal_single_device(name, spec, mesh_shape):
  config = tiny_run_config(**{"loss.name": name, "loss.psft_refresh_steps": 2, "loss.asft_beta": 0.5})
  model = models.build_model(config.model, spec)
  batch = _batch(np.random.default_rng(1), 1, 8, 16, config.model.vocab_size)
  results = [_run_steps(config, model, mesh, batch, 3, spec)
             for mesh in (models.make_mesh(1, 1, 1, devices=jax.devices()[:1]), models.make_mesh(*mesh_shape))]
  (single, m1), (sharded, m2) = results
  _assert_trees_close(single[-1].params, sharded[-1].params, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(float(m1["loss"]), float(m2["loss"]), rtol=1e-5)
  if name == "psft":  # refreshed after step 2: the snapshot is the params of step 2 on both meshes
    _assert_trees_close(sharded[-1].anchor_params, sharded[2].params, rtol=0, atol=0)
    _assert_trees_close(single[-1].anchor_params, sharded[-1].anchor_params, rtol=1e-4, atol=1e-5)
  else:
    assert float(m1["mean_token_loss"]) > 0  # the KL to the initial weights after two steps


def _single_device_run(overrides, steps, batch):
  config = tiny_run_config(**overrides)
  mesh = models.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  return _run_steps(config, models.build_model(config.model), mesh, batch, steps)


def test_asft_first_step_is_dfts():
  """At step 0 the anchor is the model itself: KL 0 and its gradient 0, so asft's first update is DFT's. (psft with the
  old policy equal to the current one is SFT: tests/test_losses_anchored.py; its snapshot's schedule: below.)"""
  batch = _batch(np.random.default_rng(2), 2, 4, 16, tiny_run_config().model.vocab_size)
  (asft, m_asft), (dft, _) = (_single_device_run({"loss.name": n, "loss.asft_beta": 1.0, "loss.histograms": True,
                                                  "loss.dump_tokens": 1}, 1, batch) for n in ("asft", "dft"))
  assert abs(float(m_asft["mean_token_loss"])) < 1e-6 and abs(float(m_asft["mean_anchor_kl"])) < 1e-6
  # the KL per token reaches the histograms and the token dump
  assert int(np.sum(m_asft["hist/anchor_kl/counts"])) == int(m_asft["tokens"]) and "dump/anchor_kl" in m_asft
  _assert_trees_close(asft[-1].params, dft[-1].params, rtol=1e-5, atol=1e-7)


def test_psft_run_resumes_its_snapshot_exactly(tmp_path):
  """6 steps, snapshot every 4, checkpoints at 3 and 6: a relaunch from step 3 (whose snapshot is step 0's) gives the
  uninterrupted run's losses and parameters, and checkpoint 6 holds the snapshot of step 4."""
  overrides = {"loss.name": "psft", "loss.psft_refresh_steps": 4}
  straight = str(tmp_path / "straight")
  loop.train(tiny_run_config(**overrides), straight)
  resumed = shutil.copytree(straight, str(tmp_path / "resumed"))
  shutil.rmtree(os.path.join(resumed, "checkpoints", "6"))
  loop.train(tiny_run_config(**overrides), resumed)
  for a, b in zip(read_metrics(straight), read_metrics(resumed)):
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-6)
  like = checkpointing.params_target(models.build_model(tiny_run_config().model),
                                     models.make_mesh(1, 1, 1, devices=jax.devices()[:1]))
  _assert_trees_close(checkpointing.restore_params(straight, like), checkpointing.restore_params(resumed, like),
                      rtol=1e-6, atol=1e-7)
  assert os.path.isdir(os.path.join(straight, "checkpoints", "6", checkpointing.ANCHOR_ITEM))
  # r = 1 on the snapshot's own step (step 1; step 2 too: warm-up's first learning rate is 0) and on step 5, right
  # after the refresh; r != 1 on steps 3 and 4
  weights = [r["mean_weight"] for r in read_metrics(straight)]
  assert weights[0] == weights[4] == pytest.approx(1.0, rel=1e-6) and abs(weights[2] - 1) > 1e-3 < abs(weights[3] - 1)


def test_asft_relaunch_on_other_initial_weights_is_refused(tmp_path):
  """A relaunch whose anchor (the initial weights) is not the one the checkpoint was trained against is refused: a
  workdir of another loss (the shared 3-step RankTuner run) has no anchor fingerprint; a changed init_from differs."""
  workdir = shared_runs.copy_of_three_steps(tmp_path)
  with pytest.raises(ValueError, match=r"checkpoint \(step 3\) holds no anchor fingerprint, so it was not written by "
                                       r"an asft run"):
    loop.train(tiny_run_config(**{"loss.name": "asft", "total_steps": 6}), workdir)
  saved = {"init_from": "/runs/base", "fingerprint": {"embed": [0.0, 1.0], "head": [0.5, 2.0]}}
  now = {"init_from": "", "fingerprint": {"embed": [0.0, 1.0], "head": [0.1, 2.0]}}
  loop.check_anchor({"step": 3, "anchor": saved}, saved, "W")
  with pytest.raises(ValueError, match=r"W: its asft run \(step 3\) anchored on init_from='/runs/base', and the "
                                       r"initial parameters loaded now \(init_from=''\): 1 of 2 tensors differ, e.g. "
                                       r"head: \[mean, rms\] \[0.5, 2.0\] when saved vs \[0.1, 2.0\] now"):
    loop.check_anchor({"step": 3, "anchor": saved}, now, "W")


def test_psft_resume_of_a_checkpoint_without_snapshot_is_named(tmp_path):
  """The shared 3-step run trained RankTuner: relaunched as psft, its checkpoint has no old policy to resume from."""
  workdir = shared_runs.copy_of_three_steps(tmp_path)
  with pytest.raises(RuntimeError, match=r"checkpoint at .*/3 holds no old-policy snapshot \(anchor_params/\), which "
                                         r"this run's loss \(psft\) needs"):
    loop.train(tiny_run_config(**{"loss.name": "psft", "total_steps": 6}), workdir)
