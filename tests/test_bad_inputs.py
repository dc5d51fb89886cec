"""The catalogue of bad inputs (docs/bad_inputs.md): one test per row. Each checks the message a user sees (what is
wrong and where: the config field, the file and line) and what is left behind. None trains: a bad config fails in
`validate` before the workdir exists, bad data fails in the data pipeline (`stream.make_pipeline`) before any
compile."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
from flax.training import train_state

from rankjax import losses, models
from rankjax.data import bpe, sources, stream
from rankjax.train import checkpointing, loop
from rankjax.train import config as run_config
from rankjax.train.optimizer import make_optimizer
from tests.conftest import FAST_COMPILE_FLAGS
from tests.helpers import tiny_run_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOOD = [{"prompt": f"What is {i} plus {i}?", "response": f"It is {2 * i}."} for i in range(40)]


# ----------------------------------------------------------------------------------------------- helpers


def _write_jsonl(path, lines) -> None:
  """Writes `lines` to `path` (a .jsonl file): dicts as JSON, bytes as they are, one per line."""
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(b"".join((x if isinstance(x, bytes) else json.dumps(x).encode()) + b"\n" for x in lines))


def _jsonl_config(tmp_path, manual_dir=None, **overrides):
  """The tiny run config reading `<manual_dir>/train.jsonl` (default tmp_path/files) through the jsonl source."""
  synthetic_defaults = {f"data.synthetic.{k}": v for k, v in sources.default_config().synthetic.items()}
  return tiny_run_config(**{
      **synthetic_defaults, "data.source": "jsonl", "data.split": "train",
      "data.files.manual_dir": str(manual_dir or tmp_path / "files"),
      "data.files.tfds_data_dir": str(tmp_path / "tfds"), "data.prefetch": 0, "data.num_epochs": 1, **overrides})


def _drain(config, workdir) -> dict:
  """Reads one epoch of the run's data pipeline; returns the record counts by reason."""
  _, pipe = stream.make_pipeline(config, str(workdir), config.model.vocab_size)
  try:
    while True:
      pipe.next_batch(config.grad_accum_steps)
  except StopIteration:
    return pipe.record_counts()
  finally:
    pipe.close()


def _train_fails(config, workdir, error, match):
  """loop.train(config, workdir) raises `error` matching `match` (before any compile); returns the workdir's files
  afterwards (None when it was not created)."""
  with pytest.raises(error, match=match):
    loop.train(config, str(workdir))
  return sorted(os.listdir(workdir)) if os.path.exists(workdir) else None


def _tiny_model_config(**fields):
  c = models.default_config()
  c.update(dict(vocab_size=64, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1, mlp_dim=32, **fields))
  return c


def _quick_params(model):
  """Random parameters of `model`'s shapes, without running its (slow, eager) initialiser."""
  rng = np.random.default_rng(0)
  shapes = jax.eval_shape(lambda: models.init_params(model, jax.random.PRNGKey(0)))
  return jax.tree.map(lambda s: jnp.asarray(0.02 * rng.standard_normal(s.shape), s.dtype), shapes)


def _tiny_hf_checkpoint(path) -> str:
  """Writes a tiny Llama-style HF checkpoint (config.json + model.safetensors) to `path`; returns it."""
  model = models.build_model(_tiny_model_config())
  models.save_pretrained(model, _quick_params(model), str(path))
  return str(path)


# ----------------------------------------------------------------------------------------------- config


def test_unknown_field_with_overrides(tmp_path):  # row 1
  with pytest.raises(KeyError, match="config has no field 'totl_steps'"):
    run_config.with_overrides(tiny_run_config(), {"totl_steps": 3})
  with pytest.raises(KeyError, match="config has no field 'optimizer.learning_rat'"):
    run_config.with_overrides(tiny_run_config(), {"optimizer.learning_rat": 1e-3})


def test_wrong_type_with_overrides():  # row 3
  with pytest.raises(TypeError, match="Could not override field 'total_steps'.*ten.*cannot be casted to type <class 'int'>"):
    run_config.with_overrides(tiny_run_config(), {"total_steps": "ten"})


@pytest.mark.multiprocess  # starts `python -m rankjax.main`; absl refuses the flag before any JAX work
@pytest.mark.parametrize("flag,needles", [
    ("--config.totl_steps=3", ["totl_steps", 'Did you mean "total_steps"']),  # row 2
    ("--config.total_steps=ten", ["flag --config.total_steps=ten: invalid literal for int()"]),  # row 4
], ids=["unknown_field", "wrong_type"])
def test_bad_config_flag(tmp_path, timeouts, flag, needles):
  workdir = tmp_path / "run"
  limit = timeouts.calibrated(floor_s=120, calibrations=10)
  env = dict(os.environ, XLA_FLAGS=FAST_COMPILE_FLAGS)
  try:
    out = subprocess.run([sys.executable, "-m", "rankjax.main", "--config=configs/synthetic_sft.py",
                          f"--workdir={workdir}", flag], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=limit.seconds, check=False)
  except subprocess.TimeoutExpired:
    pytest.fail(limit.message(f"rankjax.main {flag}"))
  assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]  # one line (rankjax.cli)
  assert len(out.stderr.strip().splitlines()) == 1, out.stderr[-3000:]
  for needle in needles:
    assert needle in out.stderr, out.stderr[-3000:]
  assert not workdir.exists()


@pytest.mark.parametrize("mesh,match", [
    ({"mesh.data": 3}, r"config\.mesh: data\*fsdp\*tensor = 3 but this run has 8 devices \(config\.mesh\.data=3, "),
    ({"mesh.data": 2, "mesh.fsdp": 2}, r"config\.mesh: data\*fsdp\*tensor = 4 but this run has 8 devices"),
    ({"mesh.fsdp": 3}, r"config\.mesh: the fixed axes multiply to 3, which does not divide the 8 devices"),
    ({"mesh.fsdp": -1}, r"config\.mesh: at most one of data/fsdp/tensor may be -1"),
    ({"mesh.tensor": 0}, r"config\.mesh\.tensor=0 must be a positive size, or -1"),
], ids=["data3", "product4", "rest_not_divisible", "two_rest", "zero"])
def test_impossible_mesh(tmp_path, mesh, match):  # row 5
  assert _train_fails(tiny_run_config(**mesh), tmp_path / "run", ValueError, match) is None


def test_batch_not_divisible_by_grad_accum(tmp_path):  # row 6
  config = tiny_run_config(grad_accum_steps=3)
  match = r"config\.data\.batch_size=8 is not divisible by config\.grad_accum_steps=3"
  assert _train_fails(config, tmp_path / "run", ValueError, match) is None


def test_batch_not_divisible_across_hosts(monkeypatch, capsys):  # row 7
  mesh = models.make_mesh(-1, 1, 1)  # data = 8
  loop._batch_sharding(mesh, 6)  # one host: a note, and every device computes the whole micro-batch
  assert "micro-batch 6 is not divisible by the data*fsdp mesh size 8" in capsys.readouterr().out
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  with pytest.raises(ValueError, match=r"multi-host: the batch is split over data\*fsdp = 8 ways, which must be a "
                                       r"multiple of the 2 processes and divide the micro-batch of 6; change "
                                       r"config\.mesh or config\.data\.batch_size"):
    loop._batch_sharding(mesh, 6)
  with pytest.raises(ValueError, match=r"config\.data\.batch_size=7 is not divisible by the 2 processes"):
    stream.pipeline_options(tiny_run_config(**{"data.batch_size": 7}))


@pytest.mark.parametrize("lr", [0.0, -1e-3, float("nan")])
def test_learning_rate_not_positive(tmp_path, lr):  # row 8
  config = tiny_run_config(**{"optimizer.learning_rate": lr})
  match = r"config\.optimizer\.learning_rate=\S+ must be a positive number"
  assert _train_fails(config, tmp_path / "run", ValueError, match) is None


def test_total_steps_zero(tmp_path):  # row 9
  assert _train_fails(tiny_run_config(total_steps=0), tmp_path / "run", ValueError,
                      r"config\.total_steps=0 must be positive") is None


@pytest.mark.parametrize("override,match", [
    ({"loss.name": "focal"}, r"loss config: name='focal' is not one of"),
    ({"data.source": "csv"}, r"config\.data\.source='csv' is not one of"),
    ({"data.truncation": "cut"}, r"config\.data\.truncation='cut' is not one of \('drop', 'truncate'\)"),
    ({"data.seq_len": 1}, r"config\.data\.seq_len=1 must be >= 2"),
    ({"model.dtype": "float8"}, r"model config: dtype 'float8' is not one of"),
    ({"optimizer.b2": 1.0}, r"config\.optimizer\.b2=1\.0 must lie in \[0, 1\)"),
], ids=["loss_name", "data_source", "truncation", "seq_len", "dtype", "beta2"])
def test_value_outside_its_choices(tmp_path, override, match):  # row 10
  assert _train_fails(tiny_run_config(**override), tmp_path / "run", ValueError, match) is None


def test_init_from_nowhere(tmp_path):  # row 11
  missing = tmp_path / "no_such_run"
  assert _train_fails(tiny_run_config(init_from=str(missing)), tmp_path / "run", FileNotFoundError,
                      f"init_from: {missing} is neither a Hugging Face checkpoint") is None


# ----------------------------------------------------------------------------------------------- data


def test_missing_data_file(tmp_path):  # row 12
  missing = tmp_path / "nowhere"
  files = _train_fails(_jsonl_config(tmp_path, missing), tmp_path / "run", FileNotFoundError,
                       f"sft_jsonl: manual dir {missing} does not exist; it should hold <split>.jsonl")
  assert files == ["config.json"]
  _write_jsonl(tmp_path / "files" / "test.jsonl", GOOD)  # a directory without the split's file
  with pytest.raises(FileNotFoundError, match=r"no split 'train' in .*files \(expected train\.jsonl, train\.parquet"):
    stream.make_pipeline(_jsonl_config(tmp_path), str(tmp_path / "run2"), 400)


@pytest.mark.parametrize("content", [b"", b"\n  \n\n"], ids=["empty", "blank_lines"])
def test_empty_dataset(tmp_path, content):  # row 13
  (tmp_path / "files").mkdir()
  (tmp_path / "files" / "train.jsonl").write_bytes(content)
  match = r"sft_jsonl: split 'train' has no records: .*files/train\.jsonl is empty .*nothing was prepared"
  assert _train_fails(_jsonl_config(tmp_path), tmp_path / "run", ValueError, match) == ["config.json"]
  assert not list((tmp_path / "tfds").rglob("*.array_record*"))  # no half-prepared dataset


def test_all_records_bad(tmp_path):  # row 14
  _write_jsonl(tmp_path / "files" / "train.jsonl", [{"prompt": r["prompt"]} for r in GOOD])  # no response field
  match = (r"data: no record yields a supervised token \(40 scanned; by reason: \{'missing_field:response': 40\}; "
           r"missing_field:response first at train\.jsonl line 1\)")
  files = _train_fails(_jsonl_config(tmp_path), tmp_path / "run", ValueError, match)
  assert files == ["config.json"]  # no checkpoint, and no tokenizer learnt from the bad records


def test_non_utf8_line(tmp_path, caplog):  # row 15
  bad = b'{"prompt": "caf\xe9?", "response": "x"}'  # Latin-1, not UTF-8
  _write_jsonl(tmp_path / "files" / "train.jsonl", [*GOOD[:3], bad, *GOOD[3:]])
  with pytest.raises(ValueError, match=r"data: record train\.jsonl:3 cannot be used: invalid_utf8 "
                                       r"\(train\.jsonl line 4; data\.strict=True"):
    _drain(_jsonl_config(tmp_path, **{"data.strict": True}), tmp_path / "strict")
  assert "train.jsonl line 4: bad record, invalid_utf8 (byte 0xe9 at column 16 is not UTF-8)" in caplog.text
  assert _drain(_jsonl_config(tmp_path), tmp_path / "run") == {"used": 40, "invalid_utf8": 1}


@pytest.mark.parametrize("truncation,counts", [("drop", {"used": 40, "too_long": 1}),
                                                ("truncate", {"used": 41, "truncated": 1})])
def test_ten_megabyte_record(tmp_path, truncation, counts):  # row 16
  _write_jsonl(tmp_path / "files" / "train.jsonl", [{"prompt": "Spell it.", "response": "x" * 10_000_000}, *GOOD])
  start = time.perf_counter()
  assert _drain(_jsonl_config(tmp_path, **{"data.truncation": truncation}), tmp_path / "run") == counts
  assert time.perf_counter() - start < 60  # it took hours before: BPE training and tokenizing 10 MB of one word
  assert os.path.getsize(tmp_path / "run" / "tokenizer.json") < 100_000


def test_wrong_field_mapping(tmp_path):  # row 17
  _write_jsonl(tmp_path / "files" / "train.jsonl", GOOD)
  config = _jsonl_config(tmp_path, **{"data.jsonl.prompt_field": "question"})
  match = (r"by reason: \{'missing_field:question': 40\}; missing_field:question first at train\.jsonl line 1\)\. "
           r"Check the field mapping \(data\.jsonl\.\*\)")
  with pytest.raises(ValueError, match=match):
    stream.make_pipeline(config, str(tmp_path / "run"), config.model.vocab_size)


@pytest.mark.parametrize("response", ["", "   \n"], ids=["empty", "whitespace"])
def test_empty_response(tmp_path, caplog, response):  # row 18
  _write_jsonl(tmp_path / "files" / "train.jsonl", [*GOOD[:2], {"prompt": "Say nothing.", "response": response},
                                                    *GOOD[2:]])
  with pytest.raises(ValueError, match=r"data: record train\.jsonl:2 cannot be used: empty_response "
                                       r"\(train\.jsonl line 3; data\.strict=True"):
    _drain(_jsonl_config(tmp_path, **{"data.strict": True}), tmp_path / "strict")
  assert "train.jsonl line 3: bad record, empty_response" in caplog.text
  assert _drain(_jsonl_config(tmp_path), tmp_path / "run") == {"used": 40, "empty_response": 1}


def test_invalid_json_line(tmp_path, caplog):  # row 19
  _write_jsonl(tmp_path / "files" / "train.jsonl", [*GOOD[:5], b'{"prompt": "q", "response": }', *GOOD[5:]])
  assert _drain(_jsonl_config(tmp_path), tmp_path / "run") == {"used": 40, "invalid_json": 1}
  assert "train.jsonl line 6: bad record, invalid_json (Expecting value at column 29)" in caplog.text


def test_every_record_longer_than_seq_len(tmp_path):  # row 20
  _write_jsonl(tmp_path / "files" / "train.jsonl", GOOD)
  config = _jsonl_config(tmp_path, **{"data.seq_len": 8})
  with pytest.raises(ValueError, match=r"no record yields a supervised token \(40 scanned; by reason: "
                                       r"\{'too_long': 40\}; too_long first at train\.jsonl line 1\)"):
    stream.make_pipeline(config, str(tmp_path / "run"), config.model.vocab_size)


# The issue-29 file, as Windows tools write it: a byte-order mark and CRLF line ends.
BOM_CRLF_FILE = '\ufeff{"prompt": "What is 2+2?", "response": "4"}\r\n{"prompt": "x", "response": "y"}\r\n'.encode()


def test_byte_order_mark_and_crlf_jsonl(tmp_path):  # row 47
  (tmp_path / "files").mkdir()
  (tmp_path / "files" / "train.jsonl").write_bytes(BOM_CRLF_FILE)
  assert _drain(_jsonl_config(tmp_path), tmp_path / "run") == {"used": 2}
  from rankjax.data import tfds_builders  # noqa: PLC0415
  src = tfds_builders.load_source("sft_jsonl", "train", str(tmp_path / "files"), str(tmp_path / "tfds"))
  assert [(r["prompt"], r["response"], r["error"]) for r in src] == [("What is 2+2?", "4", ""), ("x", "y", "")]


def test_record_counts_count_each_record_once(tmp_path, capsys):  # row 48
  """Over many epochs of a 2-record file: metrics.jsonl's data/used is 2, data/epochs says how often it was read;
  the log line says both. (Before issue 29 the counts grew with every epoch.)"""
  (tmp_path / "files").mkdir()
  (tmp_path / "files" / "train.jsonl").write_bytes(BOM_CRLF_FILE)
  config = _jsonl_config(tmp_path, **{"data.num_epochs": 0, "data.batch_size": 4, "total_steps": 2,
                                      "checkpoint_every": 100, "model.num_layers": 1})
  loop.train(config, str(tmp_path / "run"))
  last = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()][-1]
  assert last["data/used"] == 2 and "data/invalid_json" not in last and last["data/epochs"] >= 3, last
  out = capsys.readouterr().out
  assert "(used, skipped by reason, truncated): {'used': 2};" in out and " epochs read" in out, out


# ----------------------------------------------------------------------------------------------- tokenizer


def test_tokenizer_vocab_larger_than_the_model(tmp_path):  # row 21
  tokenizer_dir = tmp_path / "tok"
  bpe.train_bpe(sources.tokenizer_texts(tiny_run_config().data), 400, tokenizer_dir)
  config = tiny_run_config(**{"model.vocab_size": 300, "data.tokenizer_path": str(tokenizer_dir)})
  match = f"tokenizer {tokenizer_dir} has 400 tokens but the model's vocab_size is 300"
  assert _train_fails(config, tmp_path / "run", ValueError, match) == ["config.json"]


def test_chat_format_without_a_chat_template(tmp_path):  # row 22
  tokenizer_dir = tmp_path / "tok"
  bpe.train_bpe(sources.tokenizer_texts(tiny_run_config().data), 400, tokenizer_dir)
  config = tiny_run_config(**{"data.prompt_format": "chat", "data.tokenizer_path": str(tokenizer_dir)})
  match = f"data: prompt_format='chat' needs a tokenizer with a chat template, and {tokenizer_dir} has none"
  assert _train_fails(config, tmp_path / "run", ValueError, match) == ["config.json"]
  with pytest.raises(ValueError, match=r"config\.data\.prompt_format='chat' needs a tokenizer with a chat template"):
    run_config.validate(tiny_run_config(**{"data.prompt_format": "chat"}))  # no tokenizer named at all


def test_tokenizer_path_missing(tmp_path):  # row 23
  missing = tmp_path / "nope" / "tokenizer.json"
  config = tiny_run_config(**{"data.tokenizer_path": str(missing)})
  assert _train_fails(config, tmp_path / "run", FileNotFoundError,
                      f"data.tokenizer_path: no tokenizer at {missing}") == ["config.json"]


# ----------------------------------------------------------------------------------------------- checkpoints


def test_truncated_safetensors(tmp_path):  # row 25
  path = _tiny_hf_checkpoint(tmp_path / "hf")
  weights = pathlib.Path(path) / "model.safetensors"
  data = weights.read_bytes()
  weights.write_bytes(data[: len(data) // 2])
  model = models.build_hf_model(path, jnp.float32)
  with pytest.raises(ValueError, match=r"hf/model\.safetensors: tensor '.*' .* does not fit its byte range .*"
                                       r"the file is truncated or corrupt"):
    models.load_params(model, path)
  weights.write_bytes(data[:5])
  with pytest.raises(ValueError, match=r"model\.safetensors: not a safetensors file"):
    models.load_params(model, path)


def test_wrong_tensor_shape(tmp_path):  # row 26
  path = _tiny_hf_checkpoint(tmp_path / "hf")
  weights = os.path.join(path, "model.safetensors")
  tensors = safetensors.numpy.load_file(weights)
  name = "model.layers.0.mlp.gate_proj.weight"
  tensors[name] = np.zeros((40, 16), tensors[name].dtype)
  safetensors.numpy.save_file(tensors, weights)
  with pytest.raises(ValueError, match=rf"{path}: tensor '{name}' has shape \(40, 16\), but the config implies "
                                       r"\(32, 16\)"):
    models.from_pretrained(path, dtype=jnp.float32)


def test_init_from_a_workdir_of_another_model_size(tmp_path):  # row 27
  workdir = tmp_path / "trained"
  config = tiny_run_config()
  model = models.build_model(config.model)
  state = train_state.TrainState.create(apply_fn=model.apply, params=_quick_params(model),
                                        tx=make_optimizer(config.optimizer, 10))
  os.makedirs(workdir)
  loop.write_config(config, str(workdir))
  manager = checkpointing.make_manager(str(workdir), async_writes=False)
  checkpointing.save(manager, state)
  checkpointing.close(manager)
  bigger = tiny_run_config(**{"init_from": str(workdir), "model.hidden_size": 64, "model.mlp_dim": 128})
  match = (rf"init_from: {workdir} was trained with other parameter shapes \(model\.hidden_size=32 there, 64 here, "
           r"model\.head_dim=8 there, 16 here, model\.mlp_dim=64 there, 128 here; from .*config\.json\)")
  assert _train_fails(bigger, tmp_path / "run", ValueError, match) is None
  run_config.validate(tiny_run_config(init_from=str(workdir)))  # the same sizes pass


@pytest.mark.parametrize("change,match", [
    ({"model_type": "mistral"}, r"model_type='mistral' is not supported \(supported: \['llama', 'qwen2', 'qwen3'\]\)"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, r"rope type 'yarn' is not supported"),
    ({"use_sliding_window": True, "sliding_window": 4096}, r"use_sliding_window=True is not supported"),
    ({"layer_types": ["sliding_attention"]}, r"layer_types=\['sliding_attention'\]: rankjax implements full attention"),
    ({"hidden_act": "gelu"}, r"hidden_act='gelu' is not supported: rankjax implements a SwiGLU MLP"),
    ({"mlp_bias": True}, r"mlp_bias=True is not supported"),
    ({"some_new_field": 3}, r"unknown field 'some_new_field'=3"),
], ids=["model_type", "rope_yarn", "sliding_window", "layer_types", "hidden_act", "mlp_bias", "unknown_field"])
def test_unsupported_hf_config_field(tmp_path, change, match):  # row 28
  hf = models.config_to_hf(_tiny_model_config())
  hf.update(change)
  (tmp_path / "config.json").write_text(json.dumps(hf))
  with pytest.raises(models.HFConfigError, match=rf"{tmp_path}/config\.json: {match}"):
    models.read_hf_config(str(tmp_path))


def test_hf_config_not_json(tmp_path):  # row 29
  (tmp_path / "config.json").write_text('{"model_type": "llama",')
  with pytest.raises(models.HFConfigError, match=rf"{tmp_path}/config\.json: not valid JSON"):
    models.read_hf_config(str(tmp_path))


# ----------------------------------------------------------------------------------------------- runtime


def test_out_of_range_target_id():  # row 30
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.standard_normal((2, 5, 16)), jnp.float32)
  targets = jnp.asarray(rng.integers(0, 16, (2, 5)), jnp.int32).at[1, 3].set(16)
  mask = jnp.ones((2, 5), jnp.float32)
  with pytest.raises(ValueError, match=r"targets: token id 16 at index \(1, 3\) is outside \[0, 16\)"):
    losses.weighted_loss(logits, targets, mask, losses.default_config())
  with pytest.raises(ValueError, match=r"targets: token id -1 at index \(0, 0\) is outside \[0, 16\)"):
    losses.linear_weighted_loss(jnp.ones((2, 5, 4)), jnp.ones((4, 16)), targets.at[0, 0].set(-1), mask,
                                losses.default_config())
