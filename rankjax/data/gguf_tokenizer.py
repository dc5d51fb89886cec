"""The tokenizer a GGUF file describes in its metadata, as an `HFTokenizer` (HF `tokenizers`, no transformers).

A GGUF file has no tokenizer.json: it stores the vocabulary (`tokenizer.ggml.tokens`), the token types, the BPE merges,
the special token ids, the pre-tokenizer's name (`tokenizer.ggml.pre`) and the chat template. Supported: byte-level
BPE vocabularies (`tokenizer.ggml.model = gpt2`: SmolLM2, Llama 3, Qwen, ...) with a pre-tokenizer named in
`PRE_TOKENIZERS`; anything else raises `GGUFError` naming the field. `save_hf_tokenizer` writes it as HF files.
"""

from __future__ import annotations

import functools
import json
import os

import tokenizers
from tokenizers import decoders, models, pre_tokenizers

from rankjax.data.hf_tokenizer import TOKENIZER_CONFIG_FILE, TOKENIZER_FILE, HFTokenizer
from rankjax.models.errors import DataFileNotFoundError
from rankjax.models.gguf_checkpoint import GGUFError

_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _regex_then_bytes(pattern: str) -> pre_tokenizers.PreTokenizer:
  return pre_tokenizers.Sequence([pre_tokenizers.Split(tokenizers.Regex(pattern), behavior="isolated"),
                                  pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


# tokenizer.ggml.pre -> the pre-tokenizer its merges were learned with (llama.cpp's llama-vocab.cpp names them).
PRE_TOKENIZERS = {
    "default": lambda: pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    "gpt2": lambda: pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    # SmolLM: each digit alone, then GPT-2's split.
    "smollm": lambda: pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                               pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]),
    "llama-bpe": lambda: _regex_then_bytes(_LLAMA3_SPLIT),
    "llama3": lambda: _regex_then_bytes(_LLAMA3_SPLIT),
    "qwen2": lambda: _regex_then_bytes(_QWEN2_SPLIT),
}
CONTROL, USER_DEFINED = 3, 4  # tokenizer.ggml.token_type values (llama.cpp's llama_token_type)
SPECIAL_IDS = {"bos_token": "tokenizer.ggml.bos_token_id", "eos_token": "tokenizer.ggml.eos_token_id",
               "unk_token": "tokenizer.ggml.unknown_token_id", "pad_token": "tokenizer.ggml.padding_token_id"}


@functools.lru_cache(maxsize=1)
def _byte_alphabet() -> dict[int, str]:
  """GPT-2's byte -> printable character table (the spelling of a byte-level vocabulary)."""
  printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
  table, extra = {}, 0
  for byte in range(256):
    if byte in printable:
      table[byte] = chr(byte)
    else:
      table[byte] = chr(256 + extra)
      extra += 1
  return table


def _fields(path: str) -> dict:
  """Returns the tokenizer.* metadata of GGUF file `path` (arrays as lists)."""
  import gguf  # noqa: PLC0415

  if not os.path.isfile(path):
    raise DataFileNotFoundError(f"no GGUF file at {path}")
  try:
    reader = gguf.GGUFReader(path, "r")
  except (ValueError, OSError) as e:
    raise GGUFError(f"{path}: not a readable GGUF file ({e})") from e
  return {key: field.contents() for key, field in reader.fields.items() if key.startswith("tokenizer.")}


def build_tokenizer(meta: dict, source: str = "GGUF metadata") -> tokenizers.Tokenizer:
  """Returns the `tokenizers.Tokenizer` that GGUF tokenizer metadata `meta` describes (byte-level BPE, its
  pre-tokenizer, control tokens as special added tokens); GGUFError naming `source` and the field otherwise."""
  kind = meta.get("tokenizer.ggml.model")
  if kind != "gpt2":
    raise GGUFError(f"{source}: tokenizer.ggml.model={kind!r} is not supported (rankjax builds byte-level BPE "
                    "tokenizers, tokenizer.ggml.model='gpt2')")
  pre = meta.get("tokenizer.ggml.pre", "default")
  if pre not in PRE_TOKENIZERS:
    raise GGUFError(f"{source}: tokenizer.ggml.pre={pre!r} is not supported (supported: {sorted(PRE_TOKENIZERS)})")
  if "tokenizer.ggml.merges" not in meta:
    raise GGUFError(f"{source}: a byte-level BPE vocabulary without tokenizer.ggml.merges")
  spelling = _byte_alphabet()
  alphabet = set(spelling.values())
  tokens = list(meta["tokenizer.ggml.tokens"])
  vocab = {}
  for index, token in enumerate(tokens):
    spelled = token if set(token) <= alphabet else "".join(spelling[b] for b in token.encode("utf-8"))
    vocab.setdefault(spelled, index)
  merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
  tokenizer = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
  tokenizer.pre_tokenizer = PRE_TOKENIZERS[pre]()
  tokenizer.decoder = decoders.ByteLevel()
  types = list(meta.get("tokenizer.ggml.token_type") or [])
  # A control token spelled outside the byte alphabet cannot be a real token of a byte-level vocabulary.
  special = [tokenizers.AddedToken(t, normalized=False, special=True)
             for t, kind_ in zip(tokens, types) if kind_ == CONTROL and set(t) <= alphabet]
  tokenizer.add_special_tokens(special)
  tokenizer.add_tokens([tokenizers.AddedToken(t, normalized=False, special=False)
                        for t, kind_ in zip(tokens, types) if kind_ == USER_DEFINED])
  return tokenizer


def load_gguf_tokenizer(path: str) -> HFTokenizer:
  """Returns the tokenizer of GGUF file `path` with its special tokens, end-of-turn id and chat template."""
  meta = _fields(path)
  tokenizer = build_tokenizer(meta, path)
  tokens = meta["tokenizer.ggml.tokens"]
  special = {name: tokens[int(meta[key])] for name, key in SPECIAL_IDS.items() if key in meta}
  eos = [int(meta["tokenizer.ggml.eos_token_id"])] if "tokenizer.ggml.eos_token_id" in meta else []
  return HFTokenizer(tokenizer, special_tokens=special, chat_template=meta.get("tokenizer.chat_template"),
                     add_bos_token=bool(meta.get("tokenizer.ggml.add_bos_token", False)), generation_eos_ids=eos,
                     path=path)


def save_hf_tokenizer(tokenizer: HFTokenizer, folder: str) -> None:
  """Writes `tokenizer` to `folder` as tokenizer.json and tokenizer_config.json (special tokens, chat template),
  which transformers' AutoTokenizer and `rankjax.data.tokenizer.load_tokenizer` read."""
  os.makedirs(folder, exist_ok=True)
  tokenizer.tokenizer.save(os.path.join(folder, TOKENIZER_FILE))
  config = {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": tokenizer.add_bos_token,
            "clean_up_tokenization_spaces": False, **tokenizer.special_tokens}
  if tokenizer.chat_template:
    config["chat_template"] = tokenizer.chat_template
  with open(os.path.join(folder, TOKENIZER_CONFIG_FILE), "w", encoding="utf-8") as f:
    json.dump(config, f, indent=2, ensure_ascii=False)
