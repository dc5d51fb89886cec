"""Training: accumulation == one big batch, sharded == single device, resume == uninterrupted,
metrics/config files, non-finite and corrupt-checkpoint errors."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rankjax import models
from rankjax.train import loop
from rankjax.train.metrics_writer import read_metrics
from rankjax.train.optimizer import learning_rate_schedule, make_optimizer
from rankjax.train.train_step import make_train_step
from tests.helpers import tiny_run_config
from tests.shared_runs import copy_of_three_steps


def _batch(rng, a, b, t, v):
  tokens = rng.integers(3, v, size=(a * b, t + 1)).astype(np.int32)
  lengths = rng.integers(t // 2, t + 1, size=a * b)
  seg = (np.arange(t)[None] < lengths[:, None] - 1).astype(np.int32)
  mask = seg * (np.arange(t)[None] >= rng.integers(1, t // 2, size=(a * b, 1)))
  mask[0] = 0  # a sequence without any supervised token
  out = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "loss_mask": mask.astype(np.float32), "segment_ids": seg,
         "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (a * b, t)).copy()}
  return {k: v.reshape(a, b, t) for k, v in out.items()}


def _setup(scheme):
  config = tiny_run_config(**{"loss.name": scheme, "loss.diagnostics": True})
  model = models.build_model(config.model)
  params = models.init_params(model, jax.random.PRNGKey(0))
  state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=make_optimizer(config.optimizer, 10))
  step = make_train_step(model, config.loss, learning_rate_schedule(config.optimizer, 10))
  return config, state, step


def _assert_histograms_close(m1, m2):
  """The whole batch's token histograms agree: same statistics, same token count, at most 2 tokens in another bin
  (float rounding at a bin edge), min/max/sums and quantiles close."""
  hist1 = {k: v for k, v in m1.items() if k.startswith("hist/")}
  assert hist1 and set(hist1) == {k for k in m2 if k.startswith("hist/")}
  for k, v in hist1.items():
    a, b = np.asarray(v, np.float64), np.asarray(m2[k], np.float64)
    if k.endswith("/counts"):
      assert a.sum() == b.sum() > 0, k
      assert np.abs(a - b).sum() <= 4, k
    else:
      np.testing.assert_allclose(a, b, rtol=1e-4, err_msg=k)
  for k in ("weight/q50", "prob/q10", "entropy_bits/q90", "rank/q50"):
    np.testing.assert_allclose(m1[k], m2[k], rtol=0.04, err_msg=k)


def _assert_trees_close(a, b, rtol=2e-5, atol=1e-6):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64), rtol=rtol, atol=atol)


class _SharedSteps:
  """One jitted train step per scheme and its single-device results, computed once for the whole module: the
  accumulation, data-parallel, fused/dense and guard tests compare against the same runs, so each scheme compiles
  its step once per batch shape (a 16-sequence batch whole, as 2 micro-batches of 8, and sharded) instead of
  twice per test."""

  def __init__(self):
    self._steps, self._results = {}, {}

  def setup(self, scheme):
    """(config, initial state, jitted step) of `scheme`; `loss.token_chunk` 24 does not divide a micro-batch's 128
    tokens, so the fused head's last chunk is ragged in every test that uses it."""
    if scheme not in self._steps:
      config, state, step = _setup(scheme)
      config.loss.token_chunk = 24
      self._steps[scheme] = config, state, jax.jit(make_train_step(
          models.build_model(config.model), config.loss, learning_rate_schedule(config.optimizer, 10)))
    return self._steps[scheme]

  def batch(self, scheme, shape):
    """The module's batch of 16 sequences of 16 tokens, as one batch ("whole": [1, 16, T]) or as 2 micro-batches
    ("micro": [2, 8, T])."""
    config = self.setup(scheme)[0]
    whole = _batch(np.random.default_rng(0), 1, 16, 16, config.model.vocab_size)
    return whole if shape == "whole" else {k: v.reshape(2, 8, 16) for k, v in whole.items()}

  def single(self, scheme, shape):
    """(new state, metrics) of one single-device step of `scheme` on `self.batch(scheme, shape)`."""
    if (scheme, shape) not in self._results:
      _, state, step = self.setup(scheme)
      self._results[scheme, shape] = step(state, self.batch(scheme, shape))
    return self._results[scheme, shape]


@pytest.fixture(scope="module")
def shared_steps():
  return _SharedSteps()


# The train step's accumulation, sharding and fused head are scheme-independent except where a scheme needs more than
# per-token weights: RankTuner's rank statistics and E[R] (carried through the fused head and the histograms) and
# TALR's whole-batch constants (a forward pre-pass over every micro-batch, all-reduced over devices). SFT, DFT and
# EAFT weights are per-token functions of per-token statistics, the path RankTuner already takes here, and
# tests/test_losses_*.py check each of them (fused, sharded and whole-batch) at the loss level.
SCHEMES = ["ranktuner", "talr"]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_accumulation_equals_one_big_batch(scheme, shared_steps):
  s1, m1 = shared_steps.single(scheme, "whole")
  s2, m2 = shared_steps.single(scheme, "micro")
  for k in ("loss", "grad_norm", "tokens", "mean_weight", "mean_nll", "mean_expected_rank", "max_weight"):
    np.testing.assert_allclose(m1[k], m2[k], rtol=2e-5, err_msg=k)
  _assert_histograms_close(m1, m2)
  _assert_trees_close(s1.params, s2.params)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_data_parallel_sharding_equals_single_device(scheme, shared_steps):
  _, state, step = shared_steps.setup(scheme)
  single_state, single = shared_steps.single(scheme, "micro")  # 2 micro-batches: sharded accumulation too
  mesh = Mesh(np.asarray(jax.devices()), ("data",))
  sharded_batch = jax.device_put(shared_steps.batch(scheme, "micro"), NamedSharding(mesh, P(None, "data")))
  rep_state = jax.device_put(state, NamedSharding(mesh, P()))
  sharded_state, sharded = step(rep_state, sharded_batch)
  assert len(sharded_batch["inputs"].sharding.device_set) == jax.device_count()
  np.testing.assert_allclose(single["loss"], sharded["loss"], rtol=1e-5)
  _assert_histograms_close(single, sharded)
  _assert_trees_close(single_state.params, sharded_state.params)


def _adam_state(opt_state) -> optax.ScaleByAdamState:
  """The one ScaleByAdamState (count, mu, nu) in the optimizer chain's state."""
  found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
           if isinstance(s, optax.ScaleByAdamState)]
  assert len(found) == 1, jax.tree.structure(opt_state)
  return found[0]


def _assert_trees_bitwise_equal(a, b, what):
  assert jax.tree.structure(a) == jax.tree.structure(b), what
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), \
        f"{what}{jax.tree_util.keystr(path)} changed"


# The guards against empty and non-finite steps live in the train step, not in a scheme: both tests use RankTuner's
# shared step and its state after one step (non-zero Adam moments to keep).
def test_empty_batch_gives_zero_loss_and_no_update_of_adam_moments(shared_steps):
  _, _, step = shared_steps.setup("ranktuner")
  warm, _ = shared_steps.single("ranktuner", "micro")
  assert any(np.any(x) for x in jax.tree.leaves(_adam_state(warm.opt_state).mu))  # non-zero moments to keep
  batch = shared_steps.batch("ranktuner", "micro")
  batch["loss_mask"][:] = 0
  new, metrics = step(warm, batch)
  assert float(metrics["loss"]) == 0.0 and float(metrics["grad_norm"]) == 0.0
  assert float(metrics["nonfinite"]) == 0.0 and float(metrics["empty_batch"]) == 1.0
  assert int(new.step) == 2  # the batch was consumed
  before, after = _adam_state(warm.opt_state), _adam_state(new.opt_state)
  _assert_trees_bitwise_equal(before.mu, after.mu, "mu")  # no decay by b1, b2
  _assert_trees_bitwise_equal(before.nu, after.nu, "nu")
  _assert_trees_bitwise_equal(warm.opt_state, new.opt_state, "opt_state")  # count included
  _assert_trees_bitwise_equal(warm.params, new.params, "params")  # no step by momentum


def test_nonfinite_step_is_not_applied(shared_steps):
  config, _, step = shared_steps.setup("ranktuner")
  warm, _ = shared_steps.single("ranktuner", "micro")
  assert int(warm.step) == 1 and any(np.any(x) for x in jax.tree.leaves(_adam_state(warm.opt_state).mu))
  batch = _batch(np.random.default_rng(3), 2, 8, 16, config.model.vocab_size)
  bad = warm.replace(params=jax.tree.map(lambda x: x.at[(0,) * x.ndim].set(jnp.nan), warm.params))
  new, metrics = step(bad, batch)
  assert float(metrics["nonfinite"]) == 1.0
  assert int(new.step) == int(bad.step) == 1
  _assert_trees_bitwise_equal(bad.params, new.params, "params")
  _assert_trees_bitwise_equal(bad.opt_state, new.opt_state, "opt_state")


def test_run_writes_files_and_resume_equals_uninterrupted(tmp_path):
  straight = str(tmp_path / "straight")
  loop.train(tiny_run_config(total_steps=6), straight)
  rows = read_metrics(straight)
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
  for key in ("loss", "learning_rate", "grad_norm", "tokens_per_second", "tokens", "mean_weight"):
    assert key in rows[0], key
  cfg = json.load(open(os.path.join(straight, "config.json")))
  assert cfg["total_steps"] == 6 and cfg["loss"]["name"] == "ranktuner"
  assert os.listdir(os.path.join(straight, "tensorboard"))

  resumed = shutil.copytree(straight, str(tmp_path / "resumed"))  # what an identical run would have written
  # Simulate a crash after step 3: drop the last checkpoint, keep the metrics written after it.
  shutil.rmtree(os.path.join(resumed, "checkpoints", "6"))
  loop.train(tiny_run_config(total_steps=6), resumed)
  assert [r["step"] for r in read_metrics(resumed)] == [1, 2, 3, 4, 5, 6]
  for a, b in zip(read_metrics(straight), read_metrics(resumed)):
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-6)

  like = models.init_params(models.build_model(tiny_run_config().model), jax.random.PRNGKey(0))
  from rankjax.train.checkpointing import restore_params
  _assert_trees_close(restore_params(straight, like), restore_params(resumed, like), rtol=1e-6, atol=1e-7)


def test_relaunch_with_more_steps_continues(tmp_path):
  d = copy_of_three_steps(tmp_path)
  assert loop.train(tiny_run_config(total_steps=3), d) == {}  # already complete: nothing to do
  loop.train(tiny_run_config(total_steps=5), d)
  assert [r["step"] for r in read_metrics(d)] == [1, 2, 3, 4, 5]


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
  d = copy_of_three_steps(tmp_path)
  step_dir = os.path.join(d, "checkpoints", "3", "params")
  for root, _, files in os.walk(step_dir):
    for f in files:
      with open(os.path.join(root, f), "wb") as fh:
        fh.write(b"garbage")
  with pytest.raises(RuntimeError, match="checkpoints/3"):
    loop.train(tiny_run_config(total_steps=5), d)


def test_init_from_missing_dir_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="init_from"):
    loop.train(tiny_run_config(init_from=str(tmp_path / "nope")), str(tmp_path / "run"))


def test_invalid_run_config(tmp_path):
  with pytest.raises(ValueError, match="grad_accum_steps"):
    loop.train(tiny_run_config(grad_accum_steps=3), str(tmp_path / "run"))
  with pytest.raises(ValueError, match="loss config: name"):
    loop.train(tiny_run_config(**{"loss.name": "focal"}), str(tmp_path / "run2"))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_fused_and_dense_train_steps_agree(scheme, shared_steps):
  config, state, _ = shared_steps.setup(scheme)
  s1, m1 = shared_steps.single(scheme, "micro")  # fused, token_chunk 24
  dense = config.loss.copy_and_resolve_references()
  dense.fused = False
  step = make_train_step(models.build_model(config.model), dense, learning_rate_schedule(config.optimizer, 10))
  s2, m2 = jax.jit(step)(state, shared_steps.batch(scheme, "micro"))
  assert config.loss.fused
  for k in ("loss", "grad_norm", "mean_weight", "mean_expected_rank"):
    np.testing.assert_allclose(m1[k], m2[k], rtol=1e-5, err_msg=k)
  _assert_histograms_close(m1, m2)
  _assert_trees_close(s1.params, s2.params)


def test_export_hf_carries_the_runs_own_tokenizer(tmp_path):
  from rankjax.data.hf_tokenizer import load_hf_tokenizer
  from rankjax.data.tokenizer import load_tokenizer
  workdir = str(tmp_path / "run")
  loop.train(tiny_run_config(total_steps=1, export_hf=True), workdir)  # a BPE trained by the run itself
  exported = load_hf_tokenizer(os.path.join(workdir, "hf"))
  own = load_tokenizer(workdir)
  assert exported.encode("12 + 34 = 46") == own.encode("12 + 34 = 46")
