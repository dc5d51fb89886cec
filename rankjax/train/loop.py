"""One training run from a config: data, model, state, resume, jitted steps, logging, checkpoints."""

from __future__ import annotations

import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rankjax import models
from rankjax.models import lora, peft_adapter, quantized
from rankjax.models.errors import ConfigError
from rankjax.models import flops
from rankjax.data import stream
from rankjax.data.gguf_tokenizer import save_hf_tokenizer
from rankjax.rundir import atomic, layout
from rankjax.train import checkpointing
from rankjax.train import config as run_config
from rankjax.train import preemption
from rankjax.train import token_dump
from rankjax.losses import token_histograms
from rankjax.train.metrics_writer import MetricsWriter
from rankjax.train import state as train_state_layout
from rankjax.train.periodic_eval import PeriodicEval
from rankjax.train.state import batch_sharding as _batch_sharding, create_state, watch_nonfinite  # noqa: F401 (API)


def is_lead_process() -> bool:
  """True on the process that writes the run's files (config, metrics, TensorBoard) and shows progress."""
  return jax.process_index() == 0


def write_config(config, workdir: str) -> None:
  """Writes `config` to WORKDIR/config.json (process 0 only; a temporary file renamed into place, so a kill
  never leaves half a file)."""
  if is_lead_process():
    atomic.write_text(layout.config_path(workdir), config.to_json_best_effort(indent=2, sort_keys=True))


HF_RUNTIME_FIELDS = ("dtype", "param_dtype", "remat", "attention_impl")


def build_run_model(config, init: models.InitFrom):
  """The run's model: config.model, or the architecture of the HF checkpoint `init` points at, with
  config.model's runtime fields (dtype, param_dtype, remat, attention_impl); with config.lora's adapters when its
  rank is positive (ConfigError for a `targets` regex that matches no projection of this model)."""
  if not init.pretrained:
    model = models.build_model(config.model)
  else:
    runtime = {k: config.model[k] for k in HF_RUNTIME_FIELDS}
    model = models.build_hf_model(init.path, runtime.pop("dtype"), runtime.pop("param_dtype"), **runtime)
  lora.validate(config.lora, model.config)
  spec = lora.spec_from_config(config)
  return model if spec is None else model.clone(lora=spec)


def make_run_mesh(config) -> Mesh:
  """The ("data", "fsdp", "tensor") mesh of config.mesh."""
  return models.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)


def train(config, workdir: str) -> dict:
  """Trains `config.total_steps` optimizer steps in `workdir`, resuming from its latest checkpoint.

  Writes (process 0) WORKDIR/config.json with the resolved model config, metrics.jsonl (one row per logged
  step, `step` = completed optimizer steps), tensorboard/ and, on every process, checkpoints/. Returns the
  last logged metrics row (empty if the run was already complete).

  SIGTERM or SIGINT (received by the main thread) stops the run after the current step with a checkpoint of
  that step and raises `preemption.Preempted`; relaunching resumes there.
  """
  with preemption.PreemptionWatch() as watch:
    return _train_watched(config, workdir, watch)


def _train_watched(config, workdir: str, watch: preemption.PreemptionWatch) -> dict:
  run_config.validate(config)
  init = models.resolve_init_from(config.init_from)
  model = build_run_model(config, init)
  models.check_init_from_workdir(workdir, model.config, resuming=True)  # before config.json is replaced
  check_resumed_lora_rank(config, workdir)
  os.makedirs(workdir, exist_ok=True)
  write_config(run_config.with_model(config, model.config), workdir)
  tokenizer, data = stream.make_pipeline(config, workdir, model.config.vocab_size, init.pretrained)
  try:
    return _train(config, workdir, model, data, init, tokenizer, watch)
  finally:
    data.close()


def tokenizer_files_dir(config, workdir: str, init: models.InitFrom) -> str:
  """Where the run's tokenizer files are (copied into an HF export): data.tokenizer_path (its folder when it
  names a file), else the HF checkpoint of init_from, else WORKDIR (a BPE trained by the run); "" when init_from is
  a GGUF file (its tokenizer is written from its metadata)."""
  path = config.data.tokenizer_path
  if path:
    return os.path.dirname(path) if os.path.isfile(path) else path
  if init.kind == "gguf":
    return ""
  return init.hf_dir or workdir


def check_resumed_lora_rank(config, workdir: str) -> None:
  """Raises ConfigError when `workdir` holds checkpoints of a run with another config.lora.rank (its adapters, or
  its full parameters, would not fit this run's state)."""
  path = layout.config_path(workdir)
  if not (layout.has_checkpoints_dir(workdir) and os.path.isfile(path)):
    return
  try:
    with open(path, encoding="utf-8") as f:
      before = int(((json.load(f).get("lora") or {}).get("rank", 0)) or 0)
  except (OSError, ValueError, AttributeError, TypeError):
    return
  if before != int(config.lora.rank) and checkpointing.latest_step(workdir) is not None:
    raise ConfigError(f"workdir {workdir} holds checkpoints of a run with lora.rank={before}, and this run "
                      f"has lora.rank={config.lora.rank}: resume with --config.lora.rank={before}, or use a "
                      "new --workdir")


def _check_fingerprint(meta: dict, key: str, current: dict, workdir: str, absent: str, saved_as: str,
                       loaded_as: str) -> None:
  """Raises ValueError when `meta[key]` (a checkpoint's {"init_from", "fingerprint"} of frozen weights) is missing
  (`absent` says what that means) or differs from `current`, the weights loaded now; `saved_as` and `loaded_as` name
  the two sides in the message, each followed by its init_from."""
  saved = meta.get(key)
  if saved is None:
    raise ValueError(f"{workdir}: its checkpoint (step {meta.get('step')}) {absent}, or use a new workdir")
  differ = lora.fingerprint_differences(saved["fingerprint"], current["fingerprint"])
  if differ:
    raise ValueError(f"{workdir}: {saved_as.format(step=meta.get('step'))} init_from={saved['init_from']!r}, and "
                     f"{loaded_as} (init_from={current['init_from']!r}): {len(differ)} of "
                     f"{len(current['fingerprint'])} tensors differ, e.g. {differ[0]}. Resume with the original "
                     "init_from, or use a new workdir.")


def check_lora_base(meta: dict, current: dict, workdir: str) -> None:
  """Raises ValueError when the checkpoint in `workdir` (its `meta`) was trained on another frozen base than the one
  loaded now (`current`: {"init_from", "fingerprint"})."""
  _check_fingerprint(meta, "lora_base", current, workdir,
                     "holds no LoRA base fingerprint, so it was not written by a LoRA run; resume it with "
                     "config.lora.rank=0", "its adapters (step {step}) were trained on the base",
                     "the base loaded now")


def check_anchor(meta: dict, current: dict, workdir: str) -> None:
  """Raises ValueError when the checkpoint in `workdir` (its `meta`) was trained against another anchor (asft's
  initial parameters) than the one loaded now (`current`: {"init_from", "fingerprint"})."""
  _check_fingerprint(meta, "anchor", current, workdir,
                     "holds no anchor fingerprint, so it was not written by an asft run; resume it with its own "
                     "loss.name", "its asft run (step {step}) anchored on", "the initial parameters loaded now")


def export(config, workdir: str, model, params, frozen, init: models.InitFrom, tokenizer) -> None:
  """WORKDIR/hf: the trained model as an HF checkpoint (with LoRA: the base with the adapters merged in, in the
  base's dtype) and its tokenizer files; with LoRA also WORKDIR/peft_adapter, the adapters as a PEFT adapter."""
  files = tokenizer_files_dir(config, workdir, init)
  base_model = model.clone(lora=None)
  # QLoRA: merged into the dequantised base, the function the adapters were trained with
  param_dtype = models.config.resolve_dtype(model.config.param_dtype)
  weights = params if frozen is None else lora.merged(quantized.dequantize_tree(frozen, param_dtype), params,
                                                      model.lora)
  models.save_pretrained(base_model, weights, layout.hf_export_dir(workdir), copy_files_from=files or None)
  if not files and jax.process_index() == 0:
    save_hf_tokenizer(tokenizer, layout.hf_export_dir(workdir))
  if frozen is not None:
    peft_adapter.save_peft_adapter(model, params, layout.peft_adapter_dir(workdir),
                                   os.path.abspath(init.path) if init.path else "")


def _record_metrics(data) -> dict:
  """metrics.jsonl's data/<reason> (records, each counted once) and data/epochs (passes over them read)."""
  return {**{f"data/{reason}": float(n) for reason, n in sorted(data.record_counts().items())},
          "data/epochs": float(data.epochs_read())}


def _records_line(data) -> str:
  """The log line's account of the data: records by reason, each once, and the epochs read."""
  share = f" (process {jax.process_index()}'s share)" if jax.process_count() > 1 else ""
  return (f"data records{share} by reason, each record once (used, skipped by reason, truncated): "
          f"{data.record_counts()}; {data.epochs_read():.2f} epochs read")


class _NoWriter:
  """Stands in for MetricsWriter on processes other than 0."""

  def write_histograms(self, step: int, histograms: dict) -> None:
    pass

  def write(self, step: int, metrics: dict) -> dict:
    return {"step": int(step), **{k: float(v) for k, v in metrics.items()}}

  def close(self) -> None:
    pass


def _train(config, workdir: str, model, data, init: models.InitFrom, tokenizer, watch) -> dict:
  lead = is_lead_process()
  mesh = make_run_mesh(config)
  state = create_state(config, model, mesh, init)
  state_shardings = train_state_layout.state_shardings(model, state.tx, mesh, train_state_layout.has_snapshot(config))
  frozen, fingerprint = (train_state_layout.load_frozen(config, model, mesh, init) if model.lora is not None
                         else (None, None))
  extra_meta = {} if frozen is None else {"lora_base": {"init_from": config.init_from, "fingerprint": fingerprint}}
  # asft without LoRA: the initial parameters, a second frozen copy next to the trained ones (on resume create_state
  # has read init_from again; the copy is checked against the fingerprint the checkpoint holds).
  anchor = None
  if train_state_layout.needs_initial_anchor(config, model):  # the fresh state's params, before any restore
    anchor = train_state_layout.copy_params(state.params, state_shardings.params)
    extra_meta["anchor"] = {"init_from": config.init_from, "fingerprint": lora.fingerprint(anchor)}
  extra_meta = extra_meta or None
  manager = checkpointing.make_manager(workdir, config.keep_checkpoints, config.checkpoint_async)
  checkpointing.check_writable(manager)
  state, meta = checkpointing.restore_latest(manager, state, data.iterator)
  if frozen is not None and meta is not None:
    check_lora_base(meta, extra_meta["lora_base"], workdir)
  if anchor is not None and meta is not None:
    check_anchor(meta, extra_meta["anchor"], workdir)
  state = jax.device_put(state, state_shardings)
  start = int(state.step)
  if start >= config.total_steps:
    manager.close()
    return {}
  if watch.requested and jax.process_count() == 1:  # a signal during start-up: no new step to save
    manager.close()
    raise preemption.Preempted(start, watch.reason, checkpointing.directory(manager), during_startup=True)

  batch_sharding = train_state_layout.batch_sharding(mesh, config.data.batch_size // config.grad_accum_steps)
  replicated = NamedSharding(mesh, P())
  step_fn = train_state_layout.jit_train_step(config, model, state_shardings, mesh)
  writer = MetricsWriter(workdir, resume_step=start) if lead else _NoWriter()
  model_flops = flops.flops_per_token(model.config, config.data.seq_len)
  peak = flops.peak_flops_per_device(jax.devices()[0], model.config.dtype)
  if lead and data.record_counts() and set(data.record_counts()) != {"used"}:
    print(f"[rankjax] {workdir}: so far, {_records_line(data)}", flush=True)

  bar = tqdm.tqdm(total=config.total_steps, initial=start, disable=not (config.progress and lead),
                  dynamic_ncols=True, desc=os.path.basename(os.path.normpath(workdir)),
                  mininterval=0.5 if sys.stderr.isatty() else 30.0)  # sparse lines in log files
  evaluator = PeriodicEval(config, workdir, model, tokenizer, mesh, lead)
  row, tokens_since, t_last = {}, 0, time.perf_counter()
  first_bad = jax.device_put(jnp.zeros((), jnp.int32), replicated)
  param_dtype = models.config.resolve_dtype(model.config.param_dtype)
  dump_every = int(config.loss.dump_tokens)
  finished = False
  try:
    for step in range(start, config.total_steps):
      local = data.next_batch(config.grad_accum_steps)
      batch = {k: jax.make_array_from_process_local_data(batch_sharding, v) for k, v in local.items()}
      done = step + 1
      evaluate = evaluator.due(done)
      log = done % config.log_every == 0 or done == config.total_steps or evaluate
      dump_due = bool(dump_every) and done % dump_every == 0
      # Diagnostics and histograms only on the steps whose metrics are read.
      state, metrics, first_bad = step_fn(state, batch, first_bad, np.int32(done), np.bool_(log or dump_due), frozen,
                                        anchor)
      tokens_since += int(np.prod(batch["inputs"].shape))
      save = done % config.checkpoint_every == 0 or done == config.total_steps
      stop = watch.should_stop(done)
      if (log or save or stop) and int(first_bad):  # the only host syncs: on log and checkpoint steps
        bad = int(first_bad)
        raise FloatingPointError(
            f"step {bad}: the loss or gradient is not finite, and that step's update was not applied "
            f"(at step {done}: loss={float(metrics['loss'])}, grad_norm={float(metrics['grad_norm'])}). The last "
            f"good checkpoint (step {manager.latest_step()}) is kept in {workdir}/checkpoints. Lower "
            "optimizer.learning_rate or check the data (a target id outside the vocabulary makes the loss NaN).")
      if log or dump_due:
        metrics, dump = token_dump.split_dump(metrics)
        if dump_due and lead:
          token_dump.write_token_dump(workdir, done, jax.device_get(dump), tokenizer.decode)
      if log:
        metrics, histograms = token_histograms.split_histograms(jax.device_get(metrics))
        writer.write_histograms(done, histograms)
        elapsed = time.perf_counter() - t_last
        metrics.update(_record_metrics(data))
        if evaluate:  # after `elapsed`: its time is not counted in tokens_per_second
          metrics.update(evaluator(state.params if frozen is None else
                                   lora.combine(quantized.dequantize_tree(frozen, param_dtype), state.params), done))
        metrics["tokens_per_second"] = tokens_since / max(elapsed, 1e-9)
        metrics["model_tflops_per_device"] = metrics["tokens_per_second"] * model_flops / jax.device_count() / 1e12
        if peak:  # accelerators with a known peak; the first interval includes compilation
          metrics["mfu"] = flops.mfu(metrics["tokens_per_second"] / jax.device_count(), model_flops, peak)
        row = writer.write(done, metrics)
        bar.set_postfix(loss=f"{row['loss']:.4f}", tok_s=f"{row['tokens_per_second']:.0f}", refresh=False)
        tokens_since, t_last = 0, time.perf_counter()
      if save or stop:
        checkpointing.save(manager, state, extra_meta, data_iterator=data.iterator)
      bar.update(1)
      if stop:
        checkpointing.wait(manager)
        raise preemption.Preempted(done, watch.reason, checkpointing.directory(manager))
    if lead and data.record_counts():
      print(f"[rankjax] {workdir}: {_records_line(data)}", flush=True)
    checkpointing.wait(manager)
    if config.export_hf:
      export(config, workdir, model, state.params, frozen, init, tokenizer)
    finished = True
  finally:
    bar.close()
    writer.close()
    evaluator.close()
    checkpointing.close(manager, raise_errors=finished)
  return row
