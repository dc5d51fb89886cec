"""A canonical SFT record -> (prompt ids, response ids), by a chat template or a plain text template.

Records (from `rankjax.data.tfds_builders` or the synthetic corpus) are dicts with str fields
`prompt`, `response`, `messages` (a JSON list of {role, content}, or ""), `answer`,
`source_file`, `error` ("" for a good record, else a reason code) and int `source_index`.
The response ids are what the loss supervises: the response text plus the end-of-turn
token(s) the format puts after it (EOS for "plain"; the template's, e.g. `<|im_end|>\\n`,
for "chat").
"""

from __future__ import annotations

import json

from rankjax.data.hf_tokenizer import HFTokenizer, prompt_and_response_ids
from rankjax.models.errors import ConfigError, DataError

PROMPT_FORMATS = ("plain", "chat")


def record_location(record: dict) -> str:
  """Returns where a record comes from, for messages: "train.jsonl line 4" (a JSONL file's `source_index` is the
  0-based line number), "train.parquet row 3", "synthetic/finetune record 5"."""
  source_file, index = str(record.get("source_file", "?")), record.get("source_index", "?")
  if isinstance(index, int) and source_file.endswith(".jsonl"):
    return f"{source_file} line {index + 1}"
  if source_file.endswith(".parquet"):
    return f"{source_file} row {index}"
  return f"{source_file} record {index}"


class SkipExample(Exception):
  """A record that cannot become a training example; `reason` is the counted reason code."""

  def __init__(self, reason: str):
    super().__init__(reason)
    self.reason = reason


def record_context(record: dict, system_prompt: str = "") -> list[dict]:
  """The messages a model answers for `record`: its conversation before the final assistant turn (with
  `system_prompt` added when it has no system turn), or [system?, user(prompt)] for prompt records.

  A record without a response (an evaluation problem) has a context too.
  """
  if record.get("messages"):
    try:
      messages = json.loads(record["messages"])
    except json.JSONDecodeError as e:
      raise SkipExample("invalid_json") from e
    if not messages:
      raise SkipExample("no_assistant_turn")
    context = list(messages[:-1]) if messages[-1].get("role") == "assistant" else list(messages)
    if system_prompt and context and context[0].get("role") != "system":
      context.insert(0, {"role": "system", "content": system_prompt})
  else:
    context = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": record.get("prompt")}]
  for turn in context:
    if not isinstance(turn.get("content"), str):
      raise SkipExample("non_string:prompt")
  return context


def record_messages(record: dict, system_prompt: str = "") -> tuple[list[dict], str]:
  """(messages before the final assistant turn, that turn's text) of a record.

  Plain prompt/response records become [system?, user(prompt)] and the response.
  """
  if record.get("messages"):
    try:
      messages = json.loads(record["messages"])
    except json.JSONDecodeError as e:
      raise SkipExample("invalid_json") from e
    if not messages or messages[-1].get("role") != "assistant":
      raise SkipExample("no_assistant_turn")
    response = messages[-1].get("content")
  else:
    response = record.get("response")
  context = record_context(record, system_prompt)
  if not isinstance(response, str):
    raise SkipExample("non_string:response")
  if not response.strip():
    raise SkipExample("empty_response")
  return context, response


class Formatter:
  """Turns records into (prompt_ids, response_ids) with `tokenizer`.

  format "plain": [BOS] + encode(template.format(prompt=...)) and encode(response) + [EOS].
  format "chat": the tokenizer's chat template (with `system_prompt` as the system turn when
  the record has none), split by `prompt_and_response_ids`. Raises SkipExample for bad records.
  """

  def __init__(self, tokenizer: HFTokenizer, prompt_format: str = "plain",
               plain_template: str = "{prompt}", system_prompt: str = ""):
    if prompt_format not in PROMPT_FORMATS:
      raise ConfigError(f"data config: prompt_format={prompt_format!r} is not one of {PROMPT_FORMATS}")
    if prompt_format == "plain" and tokenizer.eos_id is None:
      raise DataError("data: the plain prompt format needs a tokenizer with an EOS token")
    if prompt_format == "chat" and not tokenizer.chat_template:
      where = tokenizer.path if tokenizer.path is not None else "the tokenizer"
      raise DataError(f"data: prompt_format='chat' needs a tokenizer with a chat template, and {where} has none "
                       "(no chat_template in tokenizer_config.json and no chat_template.jinja); use "
                       "data.prompt_format='plain' or a tokenizer that has one (data.tokenizer_path / init_from)")
    if prompt_format == "plain" and "{prompt}" not in plain_template:
      raise ConfigError(f"data config: plain_template={plain_template!r} has no {{prompt}} field")
    self.tokenizer, self.prompt_format = tokenizer, prompt_format
    self.plain_template, self.system_prompt = plain_template, system_prompt

  def __call__(self, record: dict, char_limit: int | None = None,
               cut: bool = False) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids) of `record`. With `char_limit`, a text too long to tokenize is never tokenized
    whole: a prompt of more characters raises SkipExample("too_long"), and so does a longer prompt + response
    unless `cut`, which keeps the response's first `char_limit` characters (the caller truncates the ids)."""
    if record.get("error"):
      raise SkipExample(record["error"])
    context, response = record_messages(record, self.system_prompt)
    if char_limit is not None:
      prompt_chars = sum(len(turn["content"]) for turn in context)
      if prompt_chars > char_limit or (prompt_chars + len(response) > char_limit and not cut):
        raise SkipExample("too_long")
      response = response[:char_limit]
    if self.prompt_format == "chat":
      return prompt_and_response_ids(self.tokenizer, context, response)
    return self._plain_prompt(context), self.tokenizer.encode(response) + [self.tokenizer.eos_id]

  def prompt_ids(self, record: dict) -> list[int]:
    """Returns the ids a model is given to answer `record`: what `__call__` returns as the prompt, but the
    record needs no response (an evaluation problem). Raises SkipExample for a bad record."""
    if record.get("error"):
      raise SkipExample(record["error"])
    context = record_context(record, self.system_prompt)
    if self.prompt_format == "chat":
      return self.tokenizer.encode(self.tokenizer.apply_chat_template(context, add_generation_prompt=True))
    return self._plain_prompt(context)

  def _plain_prompt(self, context: list[dict]) -> list[int]:
    prompt_text = "\n\n".join(t["content"] for t in context if t.get("role") != "system")
    bos = [] if self.tokenizer.bos_id is None else [self.tokenizer.bos_id]
    return bos + self.tokenizer.encode(self.plain_template.format(prompt=prompt_text))
