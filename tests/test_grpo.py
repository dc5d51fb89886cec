"""GRPO with a model: the trainer's log-probabilities of sampled tokens equal the sampler's distribution, token
weights change only what they should, sharded == single device, resume == uninterrupted, and config errors."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax.training import train_state
from jax.sharding import NamedSharding, PartitionSpec as P

from rankjax import models, sampling
from rankjax.losses import weights as loss_weights
from rankjax.losses.stats import token_stats
from rankjax.models.errors import ConfigError
from rankjax.rl import config as rl_config
from rankjax.rl import loop as rl_loop
from rankjax.rl import rewards, rollout
from rankjax.rl.step import make_behaviour_fn, make_update_fn
from rankjax.train import state as train_state_layout
from rankjax.train.config import with_overrides
from rankjax.train.loop import build_run_model
from tests.helpers import tiny_run_config

pytestmark = pytest.mark.xdist_group("grpo")  # one worker compiles the tiny model's RL step once


def _config(**overrides):
  config = tiny_run_config()
  with config.unlocked():
    config.rl = rl_config.default_config()
  rl = {"rl.prompts_per_step": 4, "rl.num_generations": 4, "rl.max_new_tokens": 16, "rl.grading_workers": 1,
        "data.split": "finetune", "optimizer.learning_rate": 1e-2, "optimizer.warmup_fraction": 0.0}
  return with_overrides(config, {**rl, **overrides})


@pytest.fixture(scope="module")
def setup():
  """(config, model, params, prompt ids [4 lists], samples) of a random tiny model sampled at T = 0.7."""
  config = _config()
  model = build_run_model(config, models.resolve_init_from(""))
  params = models.init_params(model, jax.random.PRNGKey(0), 32)
  rng = np.random.default_rng(0)
  prompts = [list(rng.integers(3, 400, n)) for n in (5, 9, 17, 30)]
  sampling_config = sampling.SamplingConfig(max_new_tokens=16, temperature=0.7, stop_ids=(2,))
  engine = sampling.Engine(model, params, slots=16, max_len=64)
  samples = engine.run(rollout.requests(prompts, 0, 4, sampling_config, seed=0))
  return config, model, params, prompts, samples


def _batch(prompts, samples, seq_len=64):
  host = rollout.completion_batch(prompts, samples, eos_id=2, seq_len=seq_len)
  return host, {k: jnp.asarray(host[k]) for k in ("inputs", "targets", "loss_mask", "segment_ids", "positions")}


def test_trainer_log_probs_equal_the_samplers_distribution(setup):
  """The classic RL bug is a mismatch between the sampler's and the trainer's log-probabilities (padding,
  positions, an off-by-one target). Reference: the dense forward of each unpadded sequence alone, log-softmax of
  logits / T at the sampled token. Tolerance 2e-5 nats (float32; measured below 1e-5)."""
  config, model, params, prompts, samples = setup
  config = with_overrides(config, {"rl.temperature": 0.7})
  host, batch = _batch(prompts, samples)
  got = np.asarray(jax.jit(make_behaviour_fn(model, config))(params, None, batch)["log_prob"])
  rows = [(p, s) for p, group in zip(prompts, samples) for s in group]
  assert host["loss_mask"].sum() > 100
  for r, (prompt, sample) in enumerate(rows):
    seq = list(prompt) + list(sample.tokens) + ([2] if sample.finish == sampling.FINISH_STOP else [])
    logits = model.apply({"params": params}, jnp.asarray([seq[:-1]]))[0] / 0.7
    ref = np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32)))[np.arange(len(seq) - 1), seq[1:]]
    on = host["loss_mask"][r] > 0
    np.testing.assert_allclose(got[r][on], ref[len(prompt) - 1:], atol=2e-5, err_msg=f"row {r}")
    assert (got[r][~on] == 0).all()


def test_greedy_samples_are_rank_one_for_the_trainer(setup):
  """The engine decodes with a KV cache and bucketed prompts; the trainer teacher-forces the padded batch. Their
  distributions agree where it matters: every greedy token is the trainer's top token (rank 1)."""
  config, model, params, prompts, _ = setup
  greedy = sampling.SamplingConfig(max_new_tokens=16, temperature=0.0, stop_ids=(2,))
  samples = sampling.Engine(model, params, slots=4, max_len=64).run(
      [sampling.Request(p, greedy) for p in prompts])
  host, batch = _batch(prompts, samples)
  out = jax.jit(make_behaviour_fn(model, with_overrides(config, {"rl.temperature": 1.0})))(params, None, batch)
  on = host["loss_mask"] > 0
  rank = np.asarray(out["rank"])
  assert (rank[on & (host["targets"] != 2)] == 1).all()


def _update(config, model, params, batch, advantages, mesh=None, sgd=False):
  """(behaviour, new params, metrics) of one update from `params` (the run's optimizer, fresh; or with `sgd`,
  plain SGD at learning rate 1: new params = params - gradient)."""
  mesh = mesh or models.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  if sgd:
    state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=optax.sgd(1.0))
  else:
    state = train_state_layout.create_state(config, model, mesh).replace(params=params)
  behaviour = jax.jit(make_behaviour_fn(model, config))(params, None, batch, params)  # reference: the start
  state, metrics = jax.jit(make_update_fn(model, config))(state, None, batch, behaviour, advantages)
  return behaviour, state.params, metrics


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_token_weights_change_only_what_they_should(setup):
  """none == weights of 1 (entropy_top keeping every token); with beta = 0 the two placements of a weight give
  the same update; ranktuner's weights are exp(ln S_t) of the dense statistics of the same tokens."""
  config, model, params, prompts, samples = setup
  host, batch = _batch(prompts, samples)
  adv = jnp.asarray(np.random.default_rng(1).normal(size=16), jnp.float32)
  _, p_none, m_none = _update(config, model, params, batch, adv)
  _, p_all, m_all = _update(with_overrides(config, {"rl.token_weight": "entropy_top",
                                                    "rl.entropy_top_fraction": 1.0}), model, params, batch, adv)
  for a, b in zip(_leaves(p_none), _leaves(p_all)):
    np.testing.assert_array_equal(a, b)
  assert float(m_none["loss"]) == float(m_all["loss"])

  rt = with_overrides(config, {"rl.token_weight": "ranktuner", "rl.ranktuner_form": "exact"})
  b_sur, p_sur, _ = _update(rt, model, params, batch, adv)
  _, p_adv, _ = _update(with_overrides(rt, {"rl.weight_placement": "advantage"}), model, params, batch, adv)
  for a, b in zip(_leaves(p_sur), _leaves(p_adv)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  assert any(not np.allclose(a, b) for a, b in zip(_leaves(p_sur), _leaves(p_none)))
  logits = model.apply({"params": params}, batch["inputs"], positions=batch["positions"],
                       segment_ids=batch["segment_ids"])
  dense = token_stats(logits.astype(jnp.float32), batch["targets"], with_rank=True, with_expected_rank=True,
                      expected_rank="sort")
  want = np.exp(np.asarray(loss_weights.ranktuner_log_scale(dense, "exact")))
  on = host["loss_mask"] > 0
  np.testing.assert_allclose(np.asarray(b_sur["weight"])[on], want[on], rtol=1e-4)


def test_sharded_update_equals_single_device(setup):
  """8 CPU devices (rows over data x fsdp = 4 x 2) vs one device: the behaviour statistics, the loss and the
  gradient (one SGD step at learning rate 1) agree within float32 reduction-order noise (1e-5, gradients 1e-4 of
  their largest element; Adam would divide that noise by near-zero gradients)."""
  config, model, params, prompts, samples = setup
  _, batch = _batch(prompts, samples)
  adv = jnp.asarray(np.random.default_rng(2).normal(size=16), jnp.float32)
  b1, p1, m1 = _update(config, model, params, batch, adv, sgd=True)
  mesh = models.make_mesh(4, 2, 1)
  rows = NamedSharding(mesh, P(("data", "fsdp")))
  sharded = {k: jax.device_put(v, NamedSharding(mesh, P(("data", "fsdp"), None))) for k, v in batch.items()}
  b8, p8, m8 = _update(with_overrides(config, {"mesh.data": 4, "mesh.fsdp": 2}), model, params, sharded,
                       jax.device_put(adv, rows), mesh, sgd=True)
  np.testing.assert_allclose(np.asarray(b8["log_prob"]), np.asarray(b1["log_prob"]), atol=1e-5)
  np.testing.assert_allclose(float(m8["loss"]), float(m1["loss"]), rtol=1e-5, atol=1e-7)
  for a, b, p in zip(_leaves(p8), _leaves(p1), _leaves(params)):
    np.testing.assert_allclose(p - a, p - b, rtol=0, atol=1e-4 * np.abs(p - b).max() + 1e-9)


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean", "constant"])
def test_accumulation_equals_one_step(setup, aggregation):
  """The update over 4 micro-batches (the whole batch's token and sequence counts as normalisers) equals the update
  in one (SGD at learning rate 1: the gradient itself), with entropy_top's global threshold and a KL term."""
  config, model, params, prompts, samples = setup
  config = with_overrides(config, {"rl.aggregation": aggregation, "rl.token_weight": "entropy_top", "rl.beta": 0.1})
  _, batch = _batch(prompts, samples)
  adv = jnp.asarray(np.random.default_rng(3).normal(size=16), jnp.float32)
  b1, p1, m1 = _update(config, model, params, batch, adv, sgd=True)
  b4, p4, m4 = _update(with_overrides(config, {"grad_accum_steps": 4}), model, params, batch, adv, sgd=True)
  for key in b1:
    np.testing.assert_allclose(np.asarray(b4[key]), np.asarray(b1[key]), atol=1e-5, err_msg=key)
  for key in ("loss", "kl", "clip_fraction", "ratio/min", "ratio/max"):
    np.testing.assert_allclose(float(m4[key]), float(m1[key]), rtol=1e-5, atol=1e-7, err_msg=key)
  for a, b, p in zip(_leaves(p4), _leaves(p1), _leaves(params)):
    np.testing.assert_allclose(p - a, p - b, rtol=0, atol=1e-4 * np.abs(p - b).max() + 1e-9)


def _length_parity(completions, golds, pool):
  """A reward that needs no grading and varies within groups: 1 for an even number of characters."""
  del golds, pool
  return [float(len(c) % 2 == 0) for c in completions]


def _params(workdir):
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_names=("params",))
  return manager.restore(manager.latest_step(), args=ocp.args.Composite(params=ocp.args.StandardRestore()))["params"]


def test_sigterm_then_relaunch_equals_uninterrupted(tmp_path):
  """3 steps straight vs a SIGTERM during step 2 (sent by the reward function while it grades) and a relaunch: the
  interrupted run stops after step 2 with its checkpoint (`Preempted`; `python -m rankjax.main` exits 75), the
  relaunch runs step 3 only, with the same prompts and samples (keys are functions of the step), metrics and
  parameters; the rollout dump names prompts, completions and weights."""
  import signal  # noqa: PLC0415

  from rankjax.train import preemption  # noqa: PLC0415
  calls = []

  def terminating(completions, golds, pool):
    calls.append(len(completions))
    if len(calls) == 2:
      os.kill(os.getpid(), signal.SIGTERM)
    return _length_parity(completions, golds, pool)

  rewards.register("length_parity", _length_parity)
  rewards.register("terminating", terminating)
  try:
    config = _config(**{"rl.rewards": "length_parity", "rl.token_weight": "ranktuner", "rl.dump_every": 3,
                        "total_steps": 3, "checkpoint_every": 10, "log_every": 1, "rl.updates_per_batch": 2,
                        "rl.beta": 0.05})
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    rl_loop.train_rl(config, straight)
    stopping = with_overrides(config, {"rl.rewards": "terminating"})
    with pytest.raises(preemption.Preempted, match="stopped after step 2, checkpoint of step 2 saved"):
      rl_loop.train_rl(stopping, resumed)
    assert sorted(os.listdir(os.path.join(resumed, "checkpoints"))) == ["4"]  # optimizer steps: 2 RL steps x mu 2
    rl_loop.train_rl(stopping, resumed)
  finally:
    rewards.REWARDS.pop("length_parity")
    rewards.REWARDS.pop("terminating")
  assert len(calls) == 3
  rows = [[json.loads(line) for line in open(os.path.join(d, "metrics.jsonl"))] for d in (straight, resumed)]
  assert [r["step"] for r in rows[1]] == [1, 2, 3]
  for a, b in zip(*rows):
    for key in ("reward/mean", "loss", "kl", "completion_length/mean", "token_weight/q50"):
      np.testing.assert_allclose(a[key], b[key], rtol=1e-5, err_msg=f"step {a['step']} {key}")
  assert rows[0][-1]["kl"] > 0 and 0 <= rows[0][-1]["clip_fraction"] <= 1
  for a, b in zip(_leaves(_params(straight)), _leaves(_params(resumed))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  dump = [json.loads(line) for line in open(os.path.join(straight, "rollouts", "step_3.jsonl"))]
  assert len(dump) == 16 and {"prompt", "completion", "reward", "advantage", "tokens"} <= set(dump[0])
  assert dump[0]["prompt"].startswith("Problem:") and len(dump[0]["tokens"][0]) == 3


@pytest.mark.parametrize("override,match", [
    ({"rl.advantage": "ppo"}, r"config.rl.advantage='ppo' is not one of \('grpo', 'drgrpo', 'rloo'\)"),
    ({"rl.token_weight": "rank"}, r"config.rl.token_weight='rank' is not one of"),
    ({"rl.num_generations": 1}, r"config.rl.advantage='grpo' needs config.rl.num_generations >= 2"),
    ({"rl.epsilon": 1.5}, r"config.rl.epsilon=1.5 must lie in \(0, 1\)"),
    ({"rl.rewards": "correct,lenght"}, r"unknown reward function 'lenght'"),
    ({"grad_accum_steps": 3}, r"config.grad_accum_steps=3 does not divide the 16 rollouts of a step"),
    ({"rl.max_new_tokens": 95}, r"config.data.seq_len=96 leaves no room for a prompt"),
])
def test_bad_rl_fields_are_named(override, match):
  with pytest.raises(ConfigError, match=match):
    rl_loop.validate(_config(**override))


@pytest.mark.parametrize("path", ["configs/grpo_synthetic.py", "configs/grpo_gsm8k.py", "configs/grpo_qwen25_math_7b.py"])
def test_rl_config_files_validate(path):
  from rankjax.train.config import load_config_file  # noqa: PLC0415
  config = load_config_file(path)
  rl_config.validate(config)
  assert config.rl.token_weight == "none" and config.total_steps > 0
