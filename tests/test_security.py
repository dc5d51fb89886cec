"""Security basics: checkpoints are read as safetensors and JSON only (never pickle); chat templates render in a
sandbox; preparing data never opens a network connection; paths from configs never reach a shell."""

from __future__ import annotations

import ast
import json
import os
import pathlib
import pickle
import shutil
import socket

import jax
import jax.numpy as jnp
import jinja2.sandbox
import numpy as np
import pytest

from rankjax import models
from rankjax.data import bpe, formatting, sources, stream
from rankjax.data.hf_tokenizer import compile_chat_template, load_hf_tokenizer
from rankjax.train import restore
from tests.helpers import tiny_run_config
from tests.shared_runs import three_steps

ROOT = pathlib.Path(__file__).resolve().parents[1]
PICKLE_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve"}


def _python_files(*folders: str) -> list[pathlib.Path]:
  files = [p for folder in folders for p in sorted((ROOT / folder).rglob("*.py"))]
  assert files, folders
  return files


def _dotted(node: ast.AST) -> str:
  """"os.system" for the expression `os.system`, "" for anything that is not a dotted name."""
  if isinstance(node, ast.Name):
    return node.id
  if isinstance(node, ast.Attribute):
    base = _dotted(node.value)
    return f"{base}.{node.attr}" if base else ""
  return ""


def _where(path: pathlib.Path, node: ast.AST) -> str:
  return f"{path.relative_to(ROOT)}:{node.lineno}"


def _file_sources(tmp_path, **overrides):
  """The tiny run config on a file source (the synthetic group back at its defaults)."""
  synthetic_defaults = {f"data.synthetic.{k}": v for k, v in sources.default_config().synthetic.items()}
  return tiny_run_config(**{**synthetic_defaults, "data.split": "train", "data.prefetch": 0,
                            "data.files.tfds_data_dir": str(tmp_path / "tfds"), **overrides})


def _first_batch(config, workdir) -> dict:
  _, pipe = stream.make_pipeline(config, str(workdir), config.model.vocab_size)
  try:
    return pipe.next_batch(1)
  finally:
    pipe.close()


def _jsonl(path: pathlib.Path, n: int = 24) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(json.dumps({"prompt": f"What is {i} plus {i}?", "response": f"It is {2 * i}."}) + "\n"
                          for i in range(n)))


# ------------------------------------------------------------------------------------------- 1. no pickle


def _refuse(what):
  def refuse(*args, **kwargs):
    raise AssertionError(f"{what} called on the checkpoint load path")
  return refuse


def test_checkpoints_load_without_pickle(tmp_path, monkeypatch):
  workdir = three_steps()  # read only
  hf_dir = tmp_path / "hf"
  model = models.build_model(tiny_run_config().model)
  shapes = jax.eval_shape(lambda: models.init_params(model, jax.random.PRNGKey(0)))
  rng = np.random.default_rng(0)
  saved = jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape), s.dtype), shapes)
  models.save_pretrained(model, saved, str(hf_dir), copy_files_from=str(workdir))  # + the run's tokenizer files

  for name in ("load", "loads"):
    monkeypatch.setattr(pickle, name, _refuse(f"pickle.{name}"))

  class NoUnpickler:
    def __init__(self, *args, **kwargs):
      raise AssertionError("pickle.Unpickler used on the checkpoint load path")
  monkeypatch.setattr(pickle, "Unpickler", NoUnpickler)
  real_np_load = np.load

  def np_load(*args, allow_pickle=False, **kwargs):
    if allow_pickle:
      raise AssertionError("numpy.load(allow_pickle=True) on the checkpoint load path")
    return real_np_load(*args, allow_pickle=False, **kwargs)
  monkeypatch.setattr(np, "load", np_load)

  hf_model = models.build_hf_model(str(hf_dir), jnp.float32)
  loaded = models.load_params(hf_model, str(hf_dir))
  jax.tree.map(np.testing.assert_array_equal, loaded, saved)
  assert restore.load_checkpoint(str(hf_dir)).tokenizer.vocab_size > 0  # HF weights + tokenizer (JSON)
  checkpoint = restore.load_checkpoint(str(workdir))  # Orbax params, the run's config.json and tokenizer
  assert checkpoint.describe["checkpoint_step"] == 3
  assert jax.tree.leaves(checkpoint.params)[0].shape[0] > 0


def test_no_pickle_in_the_library():
  found = []
  for path in _python_files("rankjax"):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
      if isinstance(node, ast.Import):
        found += [f"{_where(path, node)} import {a.name}" for a in node.names
                  if a.name.split(".")[0] in PICKLE_MODULES]
      elif isinstance(node, ast.ImportFrom):
        module = node.module or ""
        if module.split(".")[0] in PICKLE_MODULES:
          found.append(f"{_where(path, node)} from {module} import ...")
        if module == "torch" and any(a.name == "load" for a in node.names):
          found.append(f"{_where(path, node)} from torch import load")
      elif isinstance(node, ast.Call):
        name = _dotted(node.func)
        if name == "torch.load" or name.endswith(".torch.load"):
          found.append(f"{_where(path, node)} {name}(...)")
        if name.split(".")[-1] in ("__import__", "import_module") and node.args and isinstance(
            node.args[0], ast.Constant) and str(node.args[0].value).split(".")[0] in PICKLE_MODULES:
          found.append(f"{_where(path, node)} {name}({node.args[0].value!r})")
        for kw in node.keywords:
          if kw.arg == "allow_pickle" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
            found.append(f"{_where(path, node)} {name}(..., allow_pickle=...)")
  assert not found, "pickle-capable loading in rankjax/: " + "; ".join(found)


# ------------------------------------------------------------------------------------------- 2. sandboxed templates


@pytest.mark.parametrize("template", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.popen('touch PWNED').read() }}",
    "{{ joiner.__init__.__globals__.os.system('touch PWNED') }}",
    "{% for m in messages %}{{ m.__class__.__base__.__subclasses__() }}{% endfor %}",
    "{{ messages.append({'role': 'user', 'content': 'injected'}) }}",  # the sandbox is immutable too
], ids=["subclasses", "cycler_globals", "joiner_globals", "message_class", "mutation"])
def test_chat_template_renders_in_a_sandbox(tmp_path, monkeypatch, template):
  monkeypatch.chdir(tmp_path)
  tokenizer_dir = tmp_path / "tok"
  bpe.train_bpe([f"What is {i} plus {i}? It is {2 * i}." for i in range(24)], 300, tokenizer_dir)
  config_file = tokenizer_dir / "tokenizer_config.json"
  config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "chat_template": template}))
  tokenizer = load_hf_tokenizer(tokenizer_dir)
  assert isinstance(compile_chat_template(template).environment, jinja2.sandbox.ImmutableSandboxedEnvironment)
  with pytest.raises(jinja2.sandbox.SecurityError, match=f"the chat template of checkpoint {tokenizer_dir} tried"):
    tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
  formatter = formatting.Formatter(tokenizer, "chat")  # the data pipeline's path
  with pytest.raises(jinja2.sandbox.SecurityError):
    formatter({"prompt": "hi", "response": "hello", "messages": "", "error": ""})
  assert not list(tmp_path.rglob("PWNED*"))


# ------------------------------------------------------------------------------------------- 3. no network


@pytest.fixture
def no_network(monkeypatch):
  """Every way of opening a connection or resolving a name fails the test."""
  def refuse(*args, **kwargs):
    raise AssertionError(f"network access attempted: {args[:2]}")
  monkeypatch.setattr(socket.socket, "connect", refuse)
  monkeypatch.setattr(socket.socket, "connect_ex", refuse)
  monkeypatch.setattr(socket, "create_connection", refuse)
  monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_data_preparation_opens_no_socket(tmp_path, shared_data, no_network):
  synthetic = tiny_run_config(**{"data.prefetch": 0})
  assert _first_batch(synthetic, tmp_path / "synthetic")["inputs"].shape == (1, 8, 96)
  _jsonl(tmp_path / "files" / "train.jsonl")
  jsonl = _file_sources(tmp_path, **{"data.source": "jsonl", "data.files.manual_dir": str(tmp_path / "files")})
  assert _first_batch(jsonl, tmp_path / "jsonl")["loss_mask"].sum() > 0
  gsm8k_dir = tmp_path / "gsm8k"  # the GSM8K builder on the first 64 problems of the shared file (faster)
  gsm8k_dir.mkdir()
  with open(shared_data / "gsm8k" / "train.jsonl", encoding="utf-8") as f:
    (gsm8k_dir / "train.jsonl").write_text("".join(next(f) for _ in range(64)), encoding="utf-8")
  gsm8k = _file_sources(tmp_path, **{"data.source": "gsm8k", "data.files.manual_dir": str(gsm8k_dir),
                                     "data.seq_len": 512})
  assert _first_batch(gsm8k, tmp_path / "gsm8k_run")["loss_mask"].sum() > 0
  assert list((tmp_path / "tfds" / "gsm8k_local").rglob("dataset_info.json"))  # prepared here, not fetched


# ------------------------------------------------------------------------------------------- 4. no shell


SHELL_CALLS = {"os.system", "os.popen", "os.popen2", "os.popen3", "os.popen4", "commands.getoutput",
               "commands.getstatusoutput", "subprocess.getoutput", "subprocess.getstatusoutput",
               "asyncio.create_subprocess_shell", "pty.spawn"}


def test_no_shell_commands_in_the_code():
  found = []
  for path in _python_files("rankjax", "experiments", "benchmarks"):
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    imported = {}  # `from os import system` -> {"system": "os.system"}
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and node.module:
        imported.update({a.asname or a.name: f"{node.module}.{a.name}" for a in node.names})
    for node in ast.walk(tree):
      if not isinstance(node, ast.Call):
        continue
      name = _dotted(node.func)
      name = imported.get(name, name)
      if name in SHELL_CALLS:
        found.append(f"{_where(path, node)} {name}(...)")
      shell = [kw for kw in node.keywords if kw.arg == "shell"]
      if shell and not (isinstance(shell[0].value, ast.Constant) and shell[0].value.value is False):
        found.append(f"{_where(path, node)} {name}(..., shell=...)")
  assert not found, "shell commands in the code: " + "; ".join(found)


def test_paths_with_shell_metacharacters_are_only_paths(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  odd = tmp_path / "a;touch PWNED;b $(touch PWNED2) `touch PWNED3` |x& 'q\""
  _jsonl(odd / "data" / "train.jsonl")
  config = _file_sources(odd, **{"data.source": "jsonl", "data.files.manual_dir": str(odd / "data")})
  workdir = odd / "run $(touch PWNED4)"
  assert _first_batch(config, workdir)["loss_mask"].sum() > 0
  assert (workdir / "tokenizer.json").is_file() and (odd / "tfds").is_dir()
  assert not [p for p in tmp_path.rglob("PWNED*")], "a path was run as a shell command"
  assert not list(pathlib.Path("/").glob("PWNED*")) and not list(pathlib.Path(os.getcwd()).glob("PWNED*"))
  shutil.rmtree(odd)
