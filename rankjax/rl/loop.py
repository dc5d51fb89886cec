"""GRPO-style training from verifiable rewards: `train_rl(config, workdir)`, what `python -m rankjax.main` runs for
a config with an `rl` group.

Each step: prompts_per_step prompts (`rollout.step_prompt_indices`) -> num_generations completions each from the
sampling engine at the current parameters -> rewards (`rewards.compute_rewards`, graded on process 0 and broadcast)
-> advantages per group -> the behaviour policy's statistics and token weights (one forward pass) ->
updates_per_batch optimizer steps on the clipped surrogate (+ beta k3 KL). The workdir is laid out as an SFT run's
(config.json, metrics.jsonl, tensorboard/, checkpoints/, eval/), plus rollouts/step_N.jsonl dumps; relaunching
resumes (the prompts and sampling keys are functions of the step, so a resumed run continues exactly).
"""

from __future__ import annotations

import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from rankjax import models, sampling
from rankjax.data import sources, stream
from rankjax.eval.grading import GradingPool
from rankjax.losses import policy_gradient as pg
from rankjax.models import lora, quantized
from rankjax.models.errors import ConfigError
from rankjax.models.sharding import BATCH_AXES
from rankjax.rl import config as rl_config
from rankjax.rl import rewards as rl_rewards
from rankjax.rl import rollout
from rankjax.rl.step import make_behaviour_fn, make_update_fn
from rankjax.rundir import atomic
from rankjax.train import checkpointing, preemption
from rankjax.train import config as run_config
from rankjax.train import state as train_state_layout
from rankjax.train.loop import (_NoWriter, build_run_model, check_lora_base, check_resumed_lora_rank,
                                is_lead_process, make_run_mesh, write_config)
from rankjax.train.metrics_writer import MetricsWriter
from rankjax.train.periodic_eval import PeriodicEval

ROLLOUTS_DIR = "rollouts"


def validate(config) -> None:
  """The rl group's checks, then run_config.validate (ConfigError naming the field). data.batch_size is not read
  by RL (a step's rows are rl.prompts_per_step x rl.num_generations): it is checked as those rows."""
  rl_config.validate(config)
  rows = int(config.rl.prompts_per_step) * int(config.rl.num_generations)
  run_config.validate(run_config.with_overrides(config, {"data.batch_size": rows}))
  if int(config.data.seq_len) <= int(config.rl.max_new_tokens) + 1:
    raise ConfigError(f"config.data.seq_len={config.data.seq_len} leaves no room for a prompt before "
                      f"config.rl.max_new_tokens={config.rl.max_new_tokens} completion tokens")


def train_rl(config, workdir: str) -> dict:
  """Runs config.total_steps RL steps in `workdir`, resuming from its latest checkpoint; returns the last logged
  metrics row. SIGTERM/SIGINT stop after the current step with a checkpoint (`preemption.Preempted`)."""
  with preemption.PreemptionWatch() as watch:
    validate(config)
    init = models.resolve_init_from(config.init_from)
    model = build_run_model(config, init)
    models.check_init_from_workdir(workdir, model.config, resuming=True)
    check_resumed_lora_rank(config, workdir)
    os.makedirs(workdir, exist_ok=True)
    write_config(run_config.with_model(config, model.config), workdir)
    tokenizer = stream.run_tokenizer(config, workdir, model.config.vocab_size, init.pretrained)
    formatter = stream.make_formatter(config.data, tokenizer)
    prompts = rollout.load_prompts(sources.load_records(config.data), formatter,
                                   int(config.data.seq_len) - int(config.rl.max_new_tokens) - 1)
    return _train(config, workdir, model, init, tokenizer, prompts, watch)


def _optimizer_config(config):
  """The run config whose schedule counts optimizer steps: total_steps x updates_per_batch."""
  mu = int(config.rl.updates_per_batch)
  return run_config.with_overrides(config, {"total_steps": int(config.total_steps) * mu}) if mu > 1 else config


def _global_array(value: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """A global array from the same full numpy value on every process."""
  return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def _train(config, workdir, model, init, tokenizer, prompts: rollout.Prompts, watch) -> dict:
  rl = config.rl
  lead = is_lead_process()
  mesh = make_run_mesh(config)
  mu = int(rl.updates_per_batch)
  state = train_state_layout.create_state(_optimizer_config(config), model, mesh, init)
  shardings = train_state_layout.state_shardings(model, state.tx, mesh)
  frozen, fingerprint = (train_state_layout.load_frozen(config, model, mesh, init) if model.lora is not None
                         else (None, None))
  ref_params = jax.tree.map(jnp.copy, state.params) if float(rl.beta) > 0 and frozen is None else None
  extra_meta = None if frozen is None else {"lora_base": {"init_from": config.init_from, "fingerprint": fingerprint}}
  manager = checkpointing.make_manager(workdir, config.keep_checkpoints, config.checkpoint_async)
  checkpointing.check_writable(manager)
  state, meta = checkpointing.restore_latest(manager, state)
  if frozen is not None and meta is not None:
    check_lora_base(meta, extra_meta["lora_base"], workdir)
  state = jax.device_put(state, shardings)
  start = int(state.step) // mu
  if start >= config.total_steps:
    manager.close()
    return {}

  n_rows = int(rl.prompts_per_step) * int(rl.num_generations)
  ways = int(np.prod([mesh.shape[a] for a in BATCH_AXES]))
  rows_spec = BATCH_AXES if n_rows % ways == 0 else None  # rollout rows over the batch axes, else replicated
  row_sharding, adv_sharding = NamedSharding(mesh, P(rows_spec, None)), NamedSharding(mesh, P(rows_spec))
  replicated = NamedSharding(mesh, P())
  behaviour_fn = jax.jit(make_behaviour_fn(model, config))
  update_fn = jax.jit(make_update_fn(model, config), donate_argnums=0, out_shardings=(shardings, replicated))
  sampling_config = sampling.SamplingConfig(max_new_tokens=int(rl.max_new_tokens), temperature=float(rl.temperature),
                                            top_p=float(rl.top_p), stop_ids=tuple(tokenizer.stop_ids))
  engine_model = model if model.lora is None else model.clone(lora=None)
  max_len = sampling.bucket_length(int(config.data.seq_len) - int(rl.max_new_tokens)) + int(rl.max_new_tokens)
  engine = sampling.Engine(engine_model, None, slots=n_rows, max_len=max_len, mesh=mesh,
                           pad_id=int(tokenizer.pad_id or 0))
  param_dtype = models.config.resolve_dtype(model.config.param_dtype)
  base = None if frozen is None else quantized.dequantize_tree(frozen, param_dtype)

  merge = jax.jit(lambda b, a: lora.merged(b, a, model.lora))

  def policy_params(state_params):
    return state_params if frozen is None else merge(base, state_params)

  writer = MetricsWriter(workdir, resume_step=start) if lead else _NoWriter()
  evaluator = PeriodicEval(config, workdir, engine_model, tokenizer, mesh, lead)  # on the merged weights too
  pool = GradingPool(int(rl.grading_workers) or None, float(rl.grading_timeout_s)) if lead else None
  bar = tqdm.tqdm(total=config.total_steps, initial=start, disable=not (config.progress and lead),
                  dynamic_ncols=True, desc=os.path.basename(os.path.normpath(workdir)),
                  mininterval=0.5 if sys.stderr.isatty() else 30.0)
  row, finished = {}, False
  try:
    for step in range(start, config.total_steps):
      done = step + 1
      t0 = time.perf_counter()
      chosen = rollout.step_prompt_indices(len(prompts.ids), step, int(rl.prompts_per_step), int(config.seed))
      prompt_ids = [prompts.ids[i] for i in chosen]
      engine.params = policy_params(state.params)
      samples = engine.run(rollout.requests(prompt_ids, step, int(rl.num_generations), sampling_config,
                                            int(config.seed)))
      t_rollout = time.perf_counter() - t0
      texts = [tokenizer.decode(s.tokens) for group in samples for s in group]
      golds = [prompts.golds[i] for i in chosen for _ in range(int(rl.num_generations))]
      lost_before = pool.lost if pool is not None else 0
      if lead:
        reward, parts = rl_rewards.compute_rewards(rl.rewards, texts, golds, pool)
      else:
        reward = np.zeros(len(texts), np.float32)
        parts = {name: np.zeros(len(texts), np.float32) for name, _ in rl_rewards.parse(rl.rewards)}
      if jax.process_count() > 1:
        reward, parts = multihost_utils.broadcast_one_to_all((reward, parts))
      reward = np.asarray(reward, np.float32)
      advantages = np.asarray(pg.group_advantages(reward.reshape(len(chosen), -1), rl.advantage)).reshape(-1)
      host = rollout.completion_batch(prompt_ids, samples, tokenizer.eos_id, int(config.data.seq_len))
      batch = {k: _global_array(host[k], row_sharding) for k in ("inputs", "targets", "loss_mask", "segment_ids",
                                                                   "positions")}
      adv = _global_array(advantages.astype(np.float32), adv_sharding)
      t1 = time.perf_counter()
      behaviour = behaviour_fn(state.params, frozen, batch, ref_params)
      metrics = {}
      for _ in range(mu):
        state, metrics = update_fn(state, frozen, batch, behaviour, adv)
      metrics = jax.device_get(metrics)
      if int(metrics["nonfinite"]):
        raise FloatingPointError(
            f"RL step {done}: the loss or gradient is not finite, and that update was not applied (loss="
            f"{float(metrics['loss'])}, grad_norm={float(metrics['grad_norm'])}). The last good checkpoint (step "
            f"{manager.latest_step()}) is kept in {workdir}/checkpoints. Lower optimizer.learning_rate.")
      t_update = time.perf_counter() - t1
      host_behaviour = {k: _to_host(v) for k, v in behaviour.items()}
      row_metrics = _step_metrics(metrics, reward, parts, advantages, host, host_behaviour,
                                  (pool.lost - lost_before) if pool is not None else 0)
      row_metrics.update(rollout_seconds=t_rollout, update_seconds=t_update,
                         prompt_epochs=(done * int(rl.prompts_per_step)) / len(prompts.ids))
      if lead and int(rl.dump_every) and done % int(rl.dump_every) == 0:
        _dump(workdir, done, tokenizer, [prompts.records[i] for i in chosen], prompt_ids, samples, texts, reward,
              parts, advantages, host, host_behaviour)
      if evaluator.due(done):
        row_metrics.update(evaluator(policy_params(state.params), done))
      save = done % config.checkpoint_every == 0 or done == config.total_steps
      stop = watch.should_stop(done)
      if done % config.log_every == 0 or done == config.total_steps or evaluator.due(done):
        row = writer.write(done, row_metrics)
        bar.set_postfix(reward=f"{row['reward/mean']:.3f}", refresh=False)
      if save or stop:
        checkpointing.save(manager, state, extra_meta)
      bar.update(1)
      if stop:
        checkpointing.wait(manager)
        raise preemption.Preempted(done, watch.reason, checkpointing.directory(manager))
    checkpointing.wait(manager)
    finished = True
  finally:
    bar.close()
    writer.close()
    evaluator.close()
    if pool is not None:
      pool.close()
    checkpointing.close(manager, raise_errors=finished)
  return row


def _to_host(x: jax.Array) -> np.ndarray:
  """The whole global array on this host (multi-host: gathered from every process)."""
  if jax.process_count() > 1:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


def _quantiles(values: np.ndarray, prefix: str) -> dict:
  if values.size == 0:
    return {}
  q = np.quantile(values, [0.1, 0.5, 0.9])
  return {f"{prefix}/q10": float(q[0]), f"{prefix}/q50": float(q[1]), f"{prefix}/q90": float(q[2])}


def _step_metrics(update: dict, reward, parts, advantages, host: dict, behaviour: dict, lost: int) -> dict:
  """metrics.jsonl's row of one RL step (floats): rewards, pass rate, lengths, the update's statistics, entropy
  (bits) and token-weight quantiles over completion tokens."""
  on = host["loss_mask"] > 0
  out = {k: float(v) for k, v in update.items()}
  out.update({"reward/mean": float(reward.mean()), "reward/std": float(reward.std()),
              "advantage/abs_mean": float(np.abs(advantages).mean()),
              "completion_length/mean": float(host["lengths"].mean()),
              "completion_length/max": float(host["lengths"].max()),
              "truncation_rate": float(host["truncated"].mean()), "grading_lost": float(lost),
              "entropy_bits/mean": float(behaviour["entropy_bits"][on].mean()) if on.any() else 0.0,
              "tokens": float(on.sum())})
  for name, values in parts.items():
    out[f"reward/{name}/mean"] = float(np.mean(values))
  if "correct" in parts:
    out["pass_rate"] = float(np.mean(parts["correct"]))
  out.update(_quantiles(behaviour["weight"][on], "token_weight"))
  return out


def _dump(workdir, step, tokenizer, records, prompt_ids, samples, texts, reward, parts, advantages, host, behaviour):
  """WORKDIR/rollouts/step_<N>.jsonl: per completion its prompt, text, rewards, advantage and per-token
  (token, weight, log p) of the completion."""
  rows, r = [], 0
  for record, prompt, group in zip(records, prompt_ids, samples):
    for _ in group:
      on = np.nonzero(host["loss_mask"][r] > 0)[0]
      tokens = host["targets"][r][on]
      rows.append({"step": step, "prompt": record.get("prompt", ""), "answer": record.get("answer", ""),
                   "completion": texts[r], "reward": float(reward[r]),
                   "rewards": {k: float(v[r]) for k, v in parts.items()}, "advantage": float(advantages[r]),
                   "truncated": bool(host["truncated"][r]),
                   "tokens": [[tokenizer.decode([int(t)]), round(float(behaviour["weight"][r][i]), 5),
                               round(float(behaviour["log_prob"][r][i]), 5)] for t, i in zip(tokens, on)]})
      r += 1
  path = os.path.join(workdir, ROLLOUTS_DIR, f"step_{step}.jsonl")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  atomic.write_text(path, "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in rows))
