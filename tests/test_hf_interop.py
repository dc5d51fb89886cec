"""Hugging Face interop: Llama 3.x / Qwen2 / Qwen3 checkpoints load with transformers' logits, shard, and export back."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rankjax import models
from rankjax.models import safetensors_io

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.xdist_group("hf_interop")  # one worker builds the checkpoints once

_SIZES = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, rms_norm_eps=1e-6)
FAMILIES = {
    # Llama 3.1: untied head, llama3 RoPE scaling (original context short enough that the ramp matters at T=24).
    "llama3": lambda: transformers.LlamaConfig(
        **_SIZES, tie_word_embeddings=False, rope_theta=500000.0, max_position_embeddings=256,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 16}, bos_token_id=1, eos_token_id=[2, 3]),
    # Llama 3.2 small sizes: tied embeddings; attention_bias on (q/k/v and o biases).
    "llama_tied_bias": lambda: transformers.LlamaConfig(**_SIZES, tie_word_embeddings=True, attention_bias=True),
    "qwen2_tied": lambda: transformers.Qwen2Config(**_SIZES, tie_word_embeddings=True, rope_theta=10000.0),
    "qwen2": lambda: transformers.Qwen2Config(**_SIZES, tie_word_embeddings=False, rope_theta=1000000.0),
    # Qwen3: q/k RMSNorm and head_dim (16) != hidden / heads (8).
    "qwen3": lambda: transformers.Qwen3Config(**_SIZES, head_dim=16, tie_word_embeddings=False),
    "qwen3_tied": lambda: transformers.Qwen3Config(**_SIZES, head_dim=16, tie_word_embeddings=True),
}


def _make_checkpoint(family: str, directory: str):
  torch.manual_seed(sorted(FAMILIES).index(family))
  config = FAMILIES[family]()
  config._attn_implementation = "eager"
  hf = transformers.AutoModelForCausalLM.from_config(config).eval()
  with torch.no_grad():
    for p in hf.parameters():  # every weight random (HF initialises norms to 1 and biases to 0)
      p.copy_(torch.randn_like(p) * (0.3 if p.ndim > 1 else 0.5) + (1.0 if p.ndim == 1 else 0.0))
  hf.save_pretrained(directory)
  return hf


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  """family -> (directory, transformers model) of tiny random checkpoints saved with save_pretrained."""
  root = tmp_path_factory.mktemp("hf")
  return {f: (str(root / f), _make_checkpoint(f, str(root / f))) for f in FAMILIES}


def _inputs(vocab: int, left_pad: bool):
  rng = np.random.default_rng(0)
  ids = rng.integers(0, vocab, size=(3, 24)).astype(np.int64)
  mask = np.ones_like(ids)
  if left_pad:
    mask[0, :5], mask[2, :11] = 0, 0
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
  return ids, mask, positions


def _hf_logits(hf, ids, mask, positions):
  with torch.no_grad():
    return hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
              position_ids=torch.from_numpy(positions)).logits.numpy()


def _our_logits(model, params, ids, mask, positions):
  return np.asarray(model.apply({"params": params}, jnp.asarray(ids, jnp.int32), positions=jnp.asarray(positions),
                                segment_ids=jnp.asarray(mask, jnp.int32)))


# Left-padded inputs only: their row 1 is unpadded (the same ids and positions as without padding), so one batch
# checks both the plain and the padded case (it was two parametrizations, one model load and forward each).
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_logits_match_transformers(checkpoints, family):
  path, hf = checkpoints[family]
  model, params = models.from_pretrained(path, dtype=jnp.float32)
  ids, mask, positions = _inputs(model.config.vocab_size, left_pad=True)
  assert mask[1].all() and not mask[0].all() and not mask[2].all()
  expected, got = _hf_logits(hf, ids, mask, positions), _our_logits(model, params, ids, mask, positions)
  real = mask.astype(bool)
  for rows, what in (([1], "unpadded"), ([0, 2], "left-padded")):
    diff = float(np.max(np.abs(got[rows][real[rows]] - expected[rows][real[rows]])))
    print(f"{family} {what}: max |logit diff| = {diff:.2e}")
    assert diff < 1e-4, (family, what, diff)


def test_config_fields_per_family(checkpoints):
  cfg = {f: models.read_hf_config(checkpoints[f][0]) for f in FAMILIES}
  assert cfg["llama3"].rope_scaling == "llama3" and cfg["llama3"].eos_token_ids == (2, 3)
  assert not cfg["llama3"].tie_embeddings and cfg["qwen2_tied"].tie_embeddings
  assert cfg["llama_tied_bias"].qkv_bias and cfg["llama_tied_bias"].out_bias
  assert cfg["qwen2"].qkv_bias and not cfg["qwen2"].out_bias and not cfg["qwen2"].qk_norm
  assert cfg["qwen3"].qk_norm and models.config.head_dim(cfg["qwen3"]) == 16


def test_sharded_load_equals_unsharded(checkpoints):
  path, _ = checkpoints["qwen3"]
  mesh = models.make_mesh(data=2, fsdp=2, tensor=2)
  model, sharded = models.from_pretrained(path, dtype=jnp.float32, mesh=mesh)
  _, plain = models.from_pretrained(path, dtype=jnp.float32)
  q = sharded["layer_0"]["attn"]["q"]
  assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None), q.sharding
  assert sharded["embed"]["embedding"].sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
  for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(plain)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  ids, mask, positions = _inputs(model.config.vocab_size, True)
  np.testing.assert_allclose(_our_logits(model, sharded, ids, mask, positions),
                             _our_logits(model, plain, ids, mask, positions), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["llama3", "qwen2_tied", "qwen3"])
def test_export_loads_in_transformers_with_same_logits(checkpoints, family, tmp_path):
  path, _ = checkpoints[family]
  model, params = models.from_pretrained(path, dtype=jnp.float32)
  params = jax.tree.map(lambda x: x * 1.01, params)  # "fine-tuned" weights
  out = str(tmp_path / "export")
  models.save_pretrained(model, params, out)
  hf = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
  ids, mask, positions = _inputs(model.config.vocab_size, True)
  real = mask.astype(bool)
  np.testing.assert_allclose(_hf_logits(hf, ids, mask, positions)[real],
                             _our_logits(model, params, ids, mask, positions)[real], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_round_trip_is_exact_and_shards(checkpoints, tmp_path, dtype):
  path, _ = checkpoints["llama3"]
  model, params = models.from_pretrained(path, dtype=dtype)
  out = str(tmp_path / "export")
  models.save_pretrained(model, params, out, max_shard_bytes=20_000, copy_files_from=path)
  index = json.load(open(os.path.join(out, safetensors_io.INDEX_FILE)))
  assert len(set(index["weight_map"].values())) > 2
  original, exported = safetensors_io.CheckpointReader(path), safetensors_io.CheckpointReader(out)
  assert original.names() == exported.names()
  for name in original.names():
    a = np.asarray(original.array(name)).astype(jnp.dtype(dtype))
    np.testing.assert_array_equal(np.asarray(exported.array(name)), a, err_msg=name)
  _, again = models.from_pretrained(out, dtype=dtype)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert models.read_hf_config(out).to_dict() == models.read_hf_config(path).to_dict()
  assert os.path.isfile(os.path.join(out, "generation_config.json"))


# qwen3: q/k norms before the cache and a head_dim that is not hidden / heads; qwen2_tied: q/k/v biases. llama3's
# switches (RoPE scaling, untied head) act on positions and the head alone, which the cache does not touch; its
# cached decoding is checked against transformers by test_greedy_generation_equals_transformers_generate[llama3].
@pytest.mark.parametrize("family", ["qwen2_tied", "qwen3"])
def test_kv_cache_decoding_equals_full_forward(checkpoints, family):
  path, _ = checkpoints[family]
  model, params = models.from_pretrained(path, dtype=jnp.float32)
  ids = jnp.asarray(np.random.default_rng(1).integers(0, model.config.vocab_size, (2, 12)), jnp.int32)
  full = model.apply({"params": params}, ids)
  # Jitted: two programs (prefill, one-token step) compile faster than the decode loop runs op by op.
  apply = jax.jit(lambda ids, positions, cache: model.apply({"params": params}, ids, positions=positions, cache=cache))
  cache = models.init_cache(model.config, 2, 12)
  logits, cache = apply(ids[:, :7], jnp.broadcast_to(jnp.arange(7, dtype=jnp.int32), (2, 7)), cache)
  steps = [logits]
  for t in range(7, 12):
    step_logits, cache = apply(ids[:, t:t + 1], jnp.full((2, 1), t, jnp.int32), cache)
    steps.append(step_logits)
  np.testing.assert_allclose(np.concatenate(steps, axis=1), full, rtol=1e-4, atol=1e-4)


def _edit_config(path, tmp_path, **changes):
  out = tmp_path / "edited"
  out.mkdir()
  cfg = json.load(open(os.path.join(path, "config.json")))
  cfg.update(changes)
  (out / "config.json").write_text(json.dumps(cfg))
  os.symlink(os.path.join(path, "model.safetensors"), out / "model.safetensors")
  return str(out)


@pytest.mark.parametrize("change,match", [
    ({"some_new_field": 3}, "unknown field 'some_new_field'"),
    ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
    ({"use_sliding_window": True}, "use_sliding_window"),
    ({"model_type": "mistral"}, "model_type='mistral'"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}}, "rope type 'yarn'"),
])
def test_unsupported_config_fields_are_named(checkpoints, tmp_path, change, match):
  path = _edit_config(checkpoints["qwen2"][0], tmp_path, **change)
  with pytest.raises(models.HFConfigError, match=match):
    models.from_pretrained(path, dtype=jnp.float32)


def test_checkpoint_mismatches_are_named(checkpoints, tmp_path):
  path = checkpoints["qwen2"][0]
  with pytest.raises(ValueError, match="gate_proj.weight. has shape .48, 32., but the config implies .40, 32."):
    models.from_pretrained(_edit_config(path, tmp_path, intermediate_size=40), dtype=jnp.float32)
  (tmp_path / "edited" / "config.json").unlink()
  (tmp_path / "edited").rename(tmp_path / "old")
  with pytest.raises(ValueError, match="lacks 12 tensor.*layers.2.input_layernorm"):  # 3 layers configured, 2 stored
    models.from_pretrained(_edit_config(path, tmp_path, num_hidden_layers=3), dtype=jnp.float32)
  (tmp_path / "edited").rename(tmp_path / "old2")
  with pytest.raises(ValueError, match="does not use.*layers.1"):
    models.from_pretrained(_edit_config(path, tmp_path, num_hidden_layers=1), dtype=jnp.float32)


def test_corrupt_and_missing_files_are_named(checkpoints, tmp_path):
  src = checkpoints["qwen3"][0]
  broken = tmp_path / "broken"
  broken.mkdir()
  (broken / "config.json").write_text(open(os.path.join(src, "config.json")).read())
  data = open(os.path.join(src, "model.safetensors"), "rb").read()
  (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
  with pytest.raises(ValueError, match="model.safetensors.*truncated or corrupt"):
    models.from_pretrained(str(broken), dtype=jnp.float32)
  (broken / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
  with pytest.raises(ValueError, match="corrupt safetensors header"):
    models.from_pretrained(str(broken), dtype=jnp.float32)
  with pytest.raises(FileNotFoundError, match="config"):
    models.from_pretrained(str(tmp_path / "nowhere"), dtype=jnp.float32)


@pytest.mark.parametrize("family", ["llama3", "qwen2_tied", "qwen3"])
def test_greedy_generation_equals_transformers_generate(checkpoints, family):
  from rankjax.sampling.config import SamplingConfig  # noqa: PLC0415
  from rankjax.sampling.generation import generate  # noqa: PLC0415
  path, hf = checkpoints[family]
  model, params = models.from_pretrained(path, dtype=jnp.float32)
  rng = np.random.default_rng(2)
  prompts = [rng.integers(3, model.config.vocab_size, size=n).tolist() for n in (9, 5, 7)]
  ours = generate(model, params, prompts, SamplingConfig(max_new_tokens=10))
  width = max(map(len, prompts))
  ids = np.zeros((len(prompts), width), np.int64)
  mask = np.zeros_like(ids)
  for r, p in enumerate(prompts):  # left padding, as for batched generation in transformers
    ids[r, width - len(p):], mask[r, width - len(p):] = p, 1
  with torch.no_grad():
    out = hf.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), do_sample=False,
                      max_new_tokens=10, min_new_tokens=10, pad_token_id=0, eos_token_id=None)
  assert ours == out[:, width:].numpy().tolist()
