"""One training run from a config: data, model, state, resume, jitted steps, logging, checkpoints."""

from __future__ import annotations

import os
import sys
import time

import jax
import numpy as np
import tqdm
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rankjax import models
from rankjax.data import sources
from rankjax.data.sft_batches import BatchSchedule, tokenize_examples
from rankjax.train import checkpointing
from rankjax.train import config as run_config
from rankjax.train.metrics_writer import MetricsWriter
from rankjax.train.optimizer import learning_rate_schedule, make_optimizer
from rankjax.train.train_step import make_train_step


def write_config(config, workdir: str) -> None:
  """Writes the resolved config to WORKDIR/config.json."""
  with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def prepare_data(config, workdir: str):
  """Returns (tokenizer, BatchSchedule over config.data.split, skipped-example counts)."""
  splits = sources.load_splits(config.data)
  if config.data.split not in splits:
    raise ValueError(f"config.data.split={config.data.split!r} is not one of {sorted(splits)}")
  tokenizer = sources.get_tokenizer(config.data, workdir, splits, config.model.vocab_size)
  if tokenizer.get_vocab_size() > config.model.vocab_size:
    raise ValueError(f"tokenizer has {tokenizer.get_vocab_size()} tokens but config.model.vocab_size="
                     f"{config.model.vocab_size}: targets would fall outside the vocabulary")
  data = tokenize_examples(splits[config.data.split], tokenizer, config.data.seq_len, config.data.loss_on,
                           config.data.truncation, config.data.strict)
  schedule = BatchSchedule(data, config.data.batch_size, config.grad_accum_steps, config.data.shuffle_seed)
  return tokenizer, schedule, data.skipped


def create_state(config, model) -> train_state.TrainState:
  """Fresh TrainState: params from config.seed (or config.init_from), AdamW state, step 0."""
  params = models.init_params(model, jax.random.PRNGKey(config.seed), config.data.seq_len)
  if config.init_from:
    params = checkpointing.restore_params(config.init_from, params)
  return train_state.TrainState.create(apply_fn=model.apply, params=params,
                                       tx=make_optimizer(config.optimizer, config.total_steps))


def data_mesh() -> Mesh:
  """A 1-D mesh over every device, axis "data" (batch parallelism; params replicated)."""
  return Mesh(np.asarray(jax.devices()), ("data",))


def _batch_sharding(mesh: Mesh, micro_batch: int) -> NamedSharding:
  if micro_batch % mesh.size:
    return NamedSharding(mesh, P())
  return NamedSharding(mesh, P(None, "data"))


def train(config, workdir: str) -> dict:
  """Trains `config.total_steps` optimizer steps in `workdir`, resuming from its latest checkpoint.

  Writes WORKDIR/config.json, metrics.jsonl (one row per logged step, `step` = completed
  optimizer steps), tensorboard/ and checkpoints/. Returns the last logged metrics row
  (empty if the run was already complete).
  """
  run_config.validate(config)
  os.makedirs(workdir, exist_ok=True)
  write_config(config, workdir)
  _, schedule, skipped = prepare_data(config, workdir)
  model = models.build_model(config.model)
  state = create_state(config, model)
  manager = checkpointing.make_manager(workdir, config.keep_checkpoints)
  state, meta = checkpointing.restore_latest(manager, state)
  start = int(state.step)
  if start >= config.total_steps:
    return {}

  mesh = data_mesh()
  state = jax.device_put(state, NamedSharding(mesh, P()))
  batch_sharding = _batch_sharding(mesh, schedule.batch_size // schedule.accum_steps)
  lr_schedule = learning_rate_schedule(config.optimizer, config.total_steps)
  step_fn = jax.jit(make_train_step(model, config.loss, lr_schedule), donate_argnums=0)
  writer = MetricsWriter(workdir, resume_step=start)
  if skipped:
    print(f"[rankjax] {workdir}: skipped examples by reason: {skipped}", flush=True)

  bar = tqdm.tqdm(total=config.total_steps, initial=start, disable=not config.progress, dynamic_ncols=True,
                  desc=os.path.basename(os.path.normpath(workdir)),
                  mininterval=0.5 if sys.stderr.isatty() else 30.0)  # sparse lines in log files
  row, tokens_since, t_last = {}, 0, time.perf_counter()
  try:
    for step in range(start, config.total_steps):
      batch = jax.device_put(schedule.batch(step), batch_sharding)
      state, metrics = step_fn(state, batch)
      done = step + 1
      tokens_since += int(np.prod(batch["inputs"].shape))
      if float(metrics["nonfinite"]) > 0:
        last = manager.latest_step()
        raise FloatingPointError(
            f"step {done}: the loss or gradient is not finite (loss={float(metrics['loss'])}, grad_norm="
            f"{float(metrics['grad_norm'])}); the update was not applied. The last good checkpoint "
            f"(step {last}) is kept in {workdir}/checkpoints. Lower optimizer.learning_rate or check the data.")
      if done % config.log_every == 0 or done == config.total_steps:
        metrics = jax.device_get(metrics)
        elapsed = time.perf_counter() - t_last
        metrics["tokens_per_second"] = tokens_since / max(elapsed, 1e-9)
        row = writer.write(done, metrics)
        bar.set_postfix(loss=f"{row['loss']:.4f}", tok_s=f"{row['tokens_per_second']:.0f}", refresh=False)
        tokens_since, t_last = 0, time.perf_counter()
      if done % config.checkpoint_every == 0 or done == config.total_steps:
        checkpointing.save(manager, state)
      bar.update(1)
  finally:
    bar.close()
    writer.close()
    manager.close()
  return row
