"""The paper's noise diagnostic (its Table 1): do the token weightings amplify noise tokens?

python -m rankjax.diagnostics.noise --config=configs/noise_diagnostic.py --workdir=DIR --config.checkpoint=PATH

PATH: an HF checkpoint directory or a rankjax workdir. Noise tokens are injected into a copy of the SFT
responses (`noise_injection`: rate, insert / replace, vocabulary / corpus pool, positions recorded); every
supervised token of the noisy data is scored by the model (teacher forcing, LM head fused); each weighting
family's score (`families`) is ranked over the whole pool and its top 10% is checked for noise
(`noise_metrics`: token precision, token recall, sequence hit rate; lower is better). Writes DIR/results.json,
DIR/results.md, DIR/weights.png and DIR/tokens.npz (`noise_report`).
"""

from __future__ import annotations

import os
import time

import jax
import ml_collections
from absl import app, flags, logging
from ml_collections import config_dict, config_flags

from rankjax import cli, losses, models
from rankjax.data import sources
from rankjax.diagnostics import families, noise_data, noise_injection, noise_metrics, noise_report, token_scores
from rankjax.models.errors import ConfigError
from rankjax.train.restore import load_checkpoint

_FLAGS = {}


def default_config() -> ml_collections.ConfigDict:
  """Returns the diagnostic's config (unlocked): 2000 examples, 0.8% inserted vocabulary noise, top 10%."""
  c = ml_collections.ConfigDict()
  c.checkpoint = ""  # an HF checkpoint directory or a rankjax workdir
  c.dtype = ""  # compute dtype; "": bfloat16 for HF checkpoints, the run's own for rankjax workdirs
  # The corpus (see rankjax.diagnostics.noise_data for how it combines with a rankjax workdir's own).
  c.data = sources.default_config()
  c.data.split = config_dict.placeholder(str)  # None: "finetune" (synthetic) / "train" (file sources)
  c.data.seq_len = 1024  # clean examples longer than this (+1) are left out; rows are only as long as needed
  c.data_from_checkpoint = True  # a rankjax workdir's corpus and prompt format unless config.data changes them
  c.num_examples = 2000  # the first usable examples of the split, in source order
  c.noise = ml_collections.ConfigDict({
      "rate": 0.008,  # the noise share of the scored pool, in (0, 0.5]
      "mode": "insert",  # "insert" new tokens, or "replace" existing ones
      "pool": "vocabulary",  # "vocabulary": uniform over ordinary ids; "corpus": the responses' own tokens
      "seed": 0})
  c.top_fraction = 0.1  # the top set: this share of the whole pool of supervised tokens
  c.tie_seed = 0  # random tie-breaking in the ranking (sft's constant weight)
  # E[R_t] method, EAFT's K and alpha, TALR's floor, the bound form's floor, the fused head's chunks; the
  # families set name / form / base themselves, so those three fields are not read.
  c.loss = losses.default_config()
  c.batch_size = 32  # rows per forward pass (rounded up to a multiple of the mesh's data * fsdp ways)
  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})  # examples split over data * fsdp
  c.progress = True  # tqdm bar over batches
  return c


def validate_config(config) -> None:
  """Raises ConfigError naming the field (FileNotFoundError for a checkpoint path that does not exist)."""
  if not config.checkpoint:
    raise ConfigError("config.checkpoint is empty; set --config.checkpoint=PATH (an HF checkpoint directory or a "
                      "rankjax workdir)")
  if not os.path.exists(os.path.expanduser(config.checkpoint)):
    raise FileNotFoundError(f"config.checkpoint={config.checkpoint!r} does not exist")
  noise_injection.validate_noise_config(config.noise)
  if not 0.0 < float(config.top_fraction) < 1.0:
    raise ConfigError(f"config.top_fraction={config.top_fraction} must be in (0, 1)")
  if int(config.num_examples) < 1:
    raise ConfigError(f"config.num_examples={config.num_examples} must be >= 1")
  if int(config.batch_size) < 1:
    raise ConfigError(f"config.batch_size={config.batch_size} must be >= 1")
  losses.validate_config(config.loss)


def run_noise_diagnostic(config, workdir: str) -> dict:
  """Runs the diagnostic of `config` (see `default_config`) into `workdir`; returns the results written to
  results.json: per family its ranked quantity, precision / recall / hit rate (shares in [0, 1]) and mean
  score on noise and clean tokens, plus the pool's counts, the noise positions and the settings."""
  start = time.time()
  validate_config(config)
  if jax.process_count() > 1:
    raise NotImplementedError("the noise diagnostic runs in one process (its mesh may span that host's devices)")
  mesh = models.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
  ckpt = load_checkpoint(config.checkpoint, mesh, config.dtype)
  data_config = noise_data.resolve_data_config(config.data, ckpt.data_config, config.data_from_checkpoint)
  examples, counts = noise_data.load_examples(data_config, ckpt.tokenizer, int(config.num_examples))
  n = config.noise
  noisy = noise_injection.inject_noise(examples, float(n.rate), n.mode, n.pool, int(n.seed),
                                       noise_injection.special_token_ids(ckpt.tokenizer), ckpt.tokenizer.vocab_size)
  scoring_start = time.time()
  tokens = token_scores.score_examples(ckpt.model, ckpt.params, noisy, config.loss, mesh, int(config.batch_size),
                                       bool(config.progress))
  scoring_time = time.time() - scoring_start
  scores, talr = families.family_scores(tokens, config.loss, int(ckpt.model.config.vocab_size))
  keys = noise_metrics.tie_keys(tokens["is_noise"].size, int(config.tie_seed))
  ranked = families.family_table(config.loss, int(config.tie_seed))
  table, tops = {}, {}
  for name in families.FAMILIES:
    table[name] = {"ranked": ranked[name], **noise_metrics.detection_metrics(
        scores[name], tokens["is_noise"], tokens["example"], float(config.top_fraction), keys)}
    tops[name] = noise_metrics.top_set(scores[name], float(config.top_fraction), keys)
  is_noise = tokens["is_noise"]
  results = {
      **ckpt.describe,
      "data": {"source": data_config.source, "split": data_config.split, "prompt_format": data_config.prompt_format,
               "seq_len": int(data_config.seq_len), "records": counts},
      "noise": {**n.to_dict(), "positions": {str(i): list(e.positions) for i, e in enumerate(noisy) if e.positions}},
      "top_fraction": float(config.top_fraction), "tie_seed": int(config.tie_seed),
      "pool": {"examples": len(noisy), "tokens": int(is_noise.size), "noise_tokens": int(is_noise.sum()),
               "base_rate": float(is_noise.mean()), "noisy_sequences": int(sum(bool(e.positions) for e in noisy)),
               "top_count": noise_metrics.top_count(is_noise.size, float(config.top_fraction))},
      "talr": talr, "families": table, "loss": config.loss.to_dict(), "devices": int(mesh.size),
      "scoring_time_s": scoring_time, "wall_time_s": time.time() - start,
  }
  noise_report.write(workdir, results, tokens, scores, tops)
  return results


def define_flags(flag_values: flags.FlagValues) -> None:
  """Defines the command's flags in `flag_values`; only when run as a command (`cli.run`), so that importing this
  module (tests, notebooks, other tools with their own --config flag) defines none."""
  _FLAGS["config"] = config_flags.DEFINE_config_file(
      "config", None, "Path to a noise diagnostic config file (configs/noise_diagnostic.py).", lock_config=True,
      flag_values=flag_values)
  _FLAGS["workdir"] = flags.DEFINE_string("workdir", None, "Directory for results.json, results.md, weights.png, "
                                          "tokens.npz.", flag_values=flag_values)
  flags.mark_flags_as_required(["config", "workdir"], flag_values=flag_values)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  run_noise_diagnostic(_FLAGS["config"].value, _FLAGS["workdir"].value)
  with open(os.path.join(_FLAGS["workdir"].value, "results.md"), encoding="utf-8") as f:
    print(f.read(), flush=True)


if __name__ == "__main__":
  cli.run(main, define_flags)
