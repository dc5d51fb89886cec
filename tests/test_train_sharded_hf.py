"""Training on a (data, fsdp, tensor) mesh equals one device; runs start from and export to HF checkpoints."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rankjax import models
from rankjax.data import bpe, sources
from rankjax.train import loop
from rankjax.train.metrics_writer import read_metrics
from rankjax.train.optimizer import learning_rate_schedule
from rankjax.train.train_step import make_train_step
from rankjax.train.config import with_overrides
from tests.helpers import tiny_run_config
from tests.test_hf_tokenizer import qwen_dir  # noqa: F401 (fixture)
from tests.test_train_file_source import load_config_file
from tests.test_train import _assert_trees_close, _batch

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("mesh_shape", [(2, 2, 2)])
def test_fsdp_tensor_mesh_equals_single_device(mesh_shape):
  config = tiny_run_config(**{"loss.name": "ranktuner", "loss.diagnostics": True})
  model = models.build_model(config.model)
  step = jax.jit(make_train_step(model, config.loss, learning_rate_schedule(config.optimizer, 10)))
  batch = _batch(np.random.default_rng(1), 2, 8, 16, config.model.vocab_size)
  results = []
  for mesh in (models.make_mesh(1, 1, 1, devices=jax.devices()[:1]), models.make_mesh(*mesh_shape)):
    state = loop.create_state(config, model, mesh)
    placed = jax.device_put(batch, loop._batch_sharding(mesh, 8))
    for _ in range(2):
      state, metrics = step(state, placed)
    results.append((state, metrics))
  (single, m1), (sharded, m2) = results
  q = sharded.params["layer_0"]["attn"]["q"]
  assert len(q.sharding.device_set) == 8 and q.sharding.spec[0] == ("fsdp" if mesh_shape[1] > 1 else None)
  np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-5)
  _assert_trees_close(single.params, sharded.params, rtol=1e-4, atol=1e-6)
  _assert_trees_close(single.opt_state, sharded.opt_state, rtol=1e-4, atol=1e-8)


def test_run_from_hf_checkpoint_on_mesh_and_export(tmp_path):
  hf_dir = str(tmp_path / "qwen2")
  torch.manual_seed(0)
  hf_config = transformers.Qwen2Config(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
  transformers.AutoModelForCausalLM.from_config(hf_config).save_pretrained(hf_dir)
  # The run reads the synthetic corpus with the checkpoint's tokenizer (here a small BPE); it travels with the export.
  texts = (r["prompt"] + r["response"] for r in sources.load_records(tiny_run_config().data))
  bpe.train_bpe(texts, 400, hf_dir)

  workdir = str(tmp_path / "run")
  # 3 steps: the first (warmup from learning rate 0) moves nothing, the next two do.
  config = tiny_run_config(**{"init_from": hf_dir, "export_hf": True, "mesh.fsdp": 2, "mesh.tensor": 2,
                              "model.param_dtype": "bfloat16", "optimizer.learning_rate": 1e-2, "total_steps": 3})
  loop.train(config, workdir)
  rows = read_metrics(workdir)
  assert [r["step"] for r in rows] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in rows)

  export = os.path.join(workdir, "hf")
  assert os.path.isfile(os.path.join(export, "tokenizer.json"))
  assert not os.path.exists(os.path.join(workdir, "tokenizer.json"))  # no BPE of its own: the checkpoint's is used
  model, params = models.from_pretrained(export, dtype=jnp.float32, param_dtype=jnp.bfloat16)
  assert model.config.architecture == "qwen2" and model.config.tie_embeddings
  _, initial = models.from_pretrained(hf_dir, dtype=jnp.float32, param_dtype=jnp.bfloat16)
  moved = [float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))))
           for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(initial))]
  assert max(moved) > 0  # the export holds the trained weights, not the initial ones

  hf = transformers.AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32).eval()
  ids = np.random.default_rng(0).integers(0, 512, size=(2, 10))
  with torch.no_grad():
    expected = hf(torch.from_numpy(ids)).logits.numpy()
  got = np.asarray(model.apply({"params": params}, jnp.asarray(ids, jnp.int32)))
  np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3)


def test_paper_config_runs_on_a_tiny_checkpoint(qwen_dir, tmp_path):  # noqa: F811
  """configs/qwen25_math_7b.py end to end, with a tiny Qwen2 checkpoint and NuminaMath-format data."""
  ckpt = tmp_path / "ckpt"
  shutil.copytree(qwen_dir, ckpt)
  torch.manual_seed(0)
  hf_config = transformers.Qwen2Config(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
  transformers.AutoModelForCausalLM.from_config(hf_config).save_pretrained(str(ckpt))
  data = tmp_path / "numina"
  data.mkdir()
  with open(data / "train.jsonl", "w") as f:
    for i in range(40):
      f.write(json.dumps({"problem": f"What is {i} plus {i}?", "solution": f"We add: {i}+{i}={2 * i}. "
                          f"The answer is \\boxed{{{2 * i}}}.", "source": "synthetic"}) + "\n")
  config = with_overrides(load_config_file("configs/qwen25_math_7b.py"), {
      "init_from": str(ckpt), "data.files.manual_dir": str(data), "data.files.tfds_data_dir": str(tmp_path / "tfds"),
      "data.split": "train[:30]", "data.seq_len": 128, "data.batch_size": 4, "grad_accum_steps": 2,
      "total_steps": 2, "checkpoint_every": 2, "progress": False, "loss.token_chunk": 128})
  workdir = str(tmp_path / "run")
  loop.train(config, workdir)
  rows = read_metrics(workdir)
  assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["loss"]) for r in rows)
  recorded = json.load(open(os.path.join(workdir, "config.json")))["model"]  # the checkpoint's architecture
  assert (recorded["architecture"], recorded["vocab_size"], recorded["hidden_size"], recorded["num_layers"],
          recorded["qkv_bias"], recorded["dtype"]) == ("qwen2", 512, 32, 2, True, "bfloat16")
  export = os.path.join(workdir, "hf")
  assert {"tokenizer.json", "tokenizer_config.json", "config.json", "model.safetensors"} <= set(os.listdir(export))
  hf = transformers.AutoModelForCausalLM.from_pretrained(export).eval()
  assert hf.config.model_type == "qwen2" and str(hf.dtype) == "torch.bfloat16"


def test_chat_format_without_a_checkpoint_is_a_clear_error(tmp_path):
  config = with_overrides(load_config_file("configs/qwen25_math_7b.py"), {"data.files.manual_dir": str(tmp_path)})
  with pytest.raises(ValueError, match="init_from"):
    loop.train(config, str(tmp_path / "run"))
