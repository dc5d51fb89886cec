"""A Hugging Face checkpoint's tokenizer and chat template, with `tokenizers` and jinja2 (no `transformers`).

`load_hf_tokenizer(dir)` reads the files a checkpoint directory holds:

- tokenizer.json (required): the `tokenizers.Tokenizer`;
- tokenizer_config.json (optional): named special tokens (strings or {"content": ...} dicts), `add_bos_token`
  and `chat_template`;
- chat_template.jinja (optional): the chat template as newer `transformers` saves it; it wins over the
  tokenizer_config.json entry, as in `transformers`;
- generation_config.json (optional): `eos_token_id` (an int or a list), the extra stop ids for generation.

`HFTokenizer.apply_chat_template` renders the template as `transformers` does (sandboxed jinja2 with
trim_blocks / lstrip_blocks, `raise_exception`, `strftime_now`, its `tojson`, the named special tokens as
variables), so prompts match what the checkpoint was trained on. `prompt_and_response_ids` splits a rendered
conversation into prompt ids and supervised response ids.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import tokenizers
from rankjax.models.errors import DataError, DataFileNotFoundError

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
GENERATION_CONFIG_FILE = "generation_config.json"

# The named special tokens `transformers` passes to chat templates (its SPECIAL_TOKENS_ATTRIBUTES).
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")

# System prompt of the Qwen2.5-Math chain-of-thought evaluation.
MATH_COT_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


def _read_json(path: pathlib.Path) -> dict[str, Any]:
  """Returns the JSON object in `path`, or {} when there is no such file."""
  if not path.is_file():
    return {}
  with open(path, encoding="utf-8-sig") as f:  # -sig: a leading byte-order mark is not JSON
    return json.load(f)


def _token_content(token: Any) -> str | None:
  """Returns a special token's text: tokenizer_config.json writes it as a string or an {"content": ...} dict."""
  if token is None or isinstance(token, str):
    return token
  if isinstance(token, Mapping) and isinstance(token.get("content"), str):
    return token["content"]
  raise ValueError(f"cannot read a special token from {token!r}")


def _as_template_dict(chat_template: Any) -> dict[str, str]:
  """Returns {name: template}: a single template is "default"; a list of {"name", "template"} is keyed by name."""
  if chat_template is None:
    return {}
  if isinstance(chat_template, str):
    return {"default": chat_template}
  if isinstance(chat_template, Mapping):
    return dict(chat_template)
  return {entry["name"]: entry["template"] for entry in chat_template}


@functools.lru_cache(maxsize=16)
def compile_chat_template(template: str):
  """Returns the compiled jinja2 template, in the sandboxed environment `transformers` renders chat templates in."""
  try:
    import jinja2
    import jinja2.ext
    import jinja2.nodes
    from jinja2.sandbox import ImmutableSandboxedEnvironment
  except ImportError as e:  # pragma: no cover - jinja2 comes with the test and transformers installs
    raise ImportError("chat templates need jinja2 (pip install 'jinja2>=3.1.6')") from e

  class GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` (marks assistant text for transformers' masks): renders the body."""
    tags = frozenset({"generation"})

    def parse(self, parser):
      lineno = next(parser.stream).lineno
      body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
      return jinja2.nodes.CallBlock(self.call_method("_render_body"), [], [], body).set_lineno(lineno)

    def _render_body(self, caller):
      return caller()

  def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)

  def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # As transformers': no HTML escaping (jinja's own filter escapes <, >, &, ') and non-ASCII is kept.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

  def strftime_now(format):
    return datetime.now().strftime(format)

  env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                      extensions=[GenerationTag, jinja2.ext.loopcontrols])
  env.filters["tojson"] = tojson
  env.globals["raise_exception"] = raise_exception
  env.globals["strftime_now"] = strftime_now
  return env.from_string(template)


class HFTokenizer:
  """A `tokenizers.Tokenizer` with the checkpoint's special tokens, stop ids and chat template."""

  def __init__(self, tokenizer: tokenizers.Tokenizer, *, special_tokens: Mapping[str, str | None] | None = None,
               chat_template: str | Mapping[str, str] | None = None, add_bos_token: bool = False,
               generation_eos_ids: Sequence[int] = (), path: str | os.PathLike | None = None):
    self.tokenizer = tokenizer
    self.path = None if path is None else pathlib.Path(path)
    self.special_tokens = {k: v for k, v in (special_tokens or {}).items() if v is not None}
    self.chat_templates = _as_template_dict(chat_template)
    self.add_bos_token = bool(add_bos_token)
    for name, token in self.special_tokens.items():
      if tokenizer.token_to_id(token) is None:
        raise DataError(f"{name} {token!r} is not in the vocabulary of {self._where()}")
    self.bos_id = self._special_id("bos_token")
    eos_id = self._special_id("eos_token")
    generation_eos_ids = tuple(int(i) for i in generation_eos_ids)
    self.eos_id = eos_id if eos_id is not None else (generation_eos_ids[0] if generation_eos_ids else None)
    pad_id = self._special_id("pad_token")
    self.pad_id = pad_id if pad_id is not None else self.eos_id
    eos = () if self.eos_id is None else (self.eos_id,)
    self.stop_ids = tuple(dict.fromkeys(eos + generation_eos_ids))

  def _where(self) -> str:
    """Returns a description of where the tokenizer came from, for error messages."""
    return f"checkpoint {self.path}" if self.path is not None else "this tokenizer"

  def _special_id(self, name: str) -> int | None:
    """Returns the id of the named special token, or None when the checkpoint has none."""
    token = self.special_tokens.get(name)
    return None if token is None else self.tokenizer.token_to_id(token)

  @property
  def vocab_size(self) -> int:
    """Returns the number of token ids, added tokens included (a model's embedding table may be larger)."""
    return self.tokenizer.get_vocab_size(with_added_tokens=True)

  @functools.cached_property
  def max_token_chars(self) -> int:
    """Returns the length of the longest vocabulary entry (added tokens included), in the characters of its stored
    form: no token covers more characters of a text (a byte-level entry has one character per byte), so a text of
    n characters has at least n / max_token_chars tokens."""
    return max((len(token) for token in self.tokenizer.get_vocab(with_added_tokens=True)), default=1) or 1

  @property
  def bos_token(self) -> str | None:
    return self.special_tokens.get("bos_token")

  @property
  def eos_token(self) -> str | None:
    return self.special_tokens.get("eos_token")

  @property
  def chat_template(self) -> str | None:
    """Returns the default chat template, or None."""
    return self.chat_templates.get("default")

  def token_to_id(self, token: str) -> int | None:
    """Returns the id of `token` (a whole vocabulary entry), or None when it is not in the vocabulary."""
    return self.tokenizer.token_to_id(token)

  def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
    """Returns the ids of `text`; special-token strings in it become their ids.

    With add_special_tokens, tokenizer.json's post-processor adds what it adds (e.g. Llama 3's BOS); when
    tokenizer.json has no post-processor and tokenizer_config.json sets add_bos_token, BOS is prepended.
    """
    ids = self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids
    if (add_special_tokens and self.add_bos_token and self.bos_id is not None
        and self.tokenizer.post_processor is None):
      ids = [self.bos_id, *ids]
    return ids

  def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
    """Returns the text of `ids` (any iterable of ints, e.g. a NumPy row)."""
    return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

  def _template(self, tools: Any) -> str:
    """Returns the chat template to render: "tool_use" when there are tools and one is named so, else "default"."""
    if not self.chat_templates:
      raise DataError(f"{self._where()} has no chat template (no {CHAT_TEMPLATE_FILE} and no chat_template in "
                       f"{TOKENIZER_CONFIG_FILE})")
    if tools is not None and "tool_use" in self.chat_templates:
      return self.chat_templates["tool_use"]
    if "default" not in self.chat_templates:
      raise DataError(f"{self._where()} has chat templates {sorted(self.chat_templates)} but none named 'default'")
    return self.chat_templates["default"]

  def apply_chat_template(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = False,
                          tokenize: bool = False, tools: list[dict] | None = None,
                          documents: list[dict] | None = None, **kwargs) -> str | list[int]:
    """Returns the conversation rendered with the checkpoint's chat template, as `transformers` renders it.

    The template sees `messages` (keys whose value is None dropped), `tools`, `documents`,
    `add_generation_prompt`, the named special tokens (bos_token, eos_token, ...) and `kwargs` (which override
    them). With tokenize=True returns the ids, encoded without adding special tokens (the template writes them).
    """
    if not messages:
      raise ValueError("cannot apply a chat template to an empty conversation")
    messages = [{k: v for k, v in dict(m).items() if v is not None} for m in messages]
    variables = {**self.special_tokens, **kwargs}
    import jinja2.sandbox  # compile_chat_template imported it already
    try:
      text = compile_chat_template(self._template(tools)).render(
        messages=messages, tools=tools, documents=documents, add_generation_prompt=add_generation_prompt, **variables)
    except jinja2.sandbox.SecurityError as e:  # the sandbox refused an attribute or call: name the template's source
      raise jinja2.sandbox.SecurityError(f"the chat template of {self._where()} tried an operation its sandbox refuses "
                                         f"({e}); templates render in jinja2's ImmutableSandboxedEnvironment") from e
    return self.encode(text) if tokenize else text


def load_hf_tokenizer(path: str | os.PathLike) -> HFTokenizer:
  """Returns the tokenizer of the Hugging Face checkpoint directory `path`; FileNotFoundError without tokenizer.json."""
  path = pathlib.Path(path)
  tokenizer_file = path / TOKENIZER_FILE
  if not tokenizer_file.is_file():
    raise DataFileNotFoundError(f"no {TOKENIZER_FILE} at {tokenizer_file}")
  tokenizer = tokenizers.Tokenizer.from_str(tokenizer_file.read_text(encoding="utf-8-sig"))
  config = _read_json(path / TOKENIZER_CONFIG_FILE)
  special_tokens = {name: _token_content(config.get(name)) for name in SPECIAL_TOKEN_NAMES}
  chat_template = config.get("chat_template")
  if (path / CHAT_TEMPLATE_FILE).is_file():
    chat_template = (path / CHAT_TEMPLATE_FILE).read_text(encoding="utf-8-sig")
  eos_ids = _read_json(path / GENERATION_CONFIG_FILE).get("eos_token_id")
  if eos_ids is None:
    eos_ids = []
  elif isinstance(eos_ids, int):
    eos_ids = [eos_ids]
  return HFTokenizer(tokenizer, special_tokens=special_tokens, chat_template=chat_template,
                     add_bos_token=bool(config.get("add_bos_token", False)), generation_eos_ids=eos_ids, path=path)


def math_cot_messages(problem: str, response: str | None = None) -> list[dict[str, str]]:
  """Returns the Qwen2.5-Math CoT conversation: system (MATH_COT_SYSTEM), user (`problem`), and the assistant
  turn (`response`) when given."""
  messages = [{"role": "system", "content": MATH_COT_SYSTEM}, {"role": "user", "content": problem}]
  if response is not None:
    messages.append({"role": "assistant", "content": response})
  return messages


def prompt_and_response_ids(tokenizer: HFTokenizer, messages: Sequence[Mapping[str, Any]],
                            response: str) -> tuple[list[int], list[int]]:
  """Returns (prompt_ids, response_ids) for `messages` (no assistant turn yet) answered by `response`.

  prompt_ids are the conversation rendered with the generation prompt (what the model sees at inference);
  response_ids are the tokens of the full conversation (with the assistant turn) that follow them: the
  response and everything the template writes after it, so the end-of-turn token is included (Qwen's
  "<|im_end|>\\n", Llama 3's "<|eot_id|>"), and a loss on response_ids supervises the response and the stop.
  prompt_ids + response_ids == the full conversation's ids. ValueError when the prompt is not a prefix of the
  full rendering (a template that rewrites earlier turns) or its tokens are not a prefix of the full tokens.
  """
  prompt_text = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
  full_text = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": response}])
  if not full_text.startswith(prompt_text):
    raise DataError("the chat template renders the prompt (with add_generation_prompt=True) differently from the "
                     f"start of the full conversation:\nprompt: {prompt_text!r}\nfull:   {full_text!r}")
  prompt_ids = tokenizer.encode(prompt_text)
  full_ids = tokenizer.encode(full_text)
  if full_ids[:len(prompt_ids)] != prompt_ids:
    raise DataError("the prompt's tokens are not a prefix of the full conversation's tokens (the response merges "
                     f"with the end of the prompt):\nprompt: {prompt_text!r}\nresponse: {response!r}")
  return prompt_ids, full_ids[len(prompt_ids):]
