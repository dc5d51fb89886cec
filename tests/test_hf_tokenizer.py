"""Tests of the Hugging Face checkpoint tokenizer and chat templates (rankjax.data.hf_tokenizer) against transformers."""

from __future__ import annotations

import datetime
import json
import pathlib

import jinja2
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from rankjax.data import hf_tokenizer as hf

CORPUS = [
  "Please reason step by step, and put your final answer within \\boxed{}.",
  "What is 12 + 30? The answer is 42, so the final answer is \\boxed{42}.",
  "You are a helpful assistant. Hello! How are you today? I am fine, thank you.",
  "Let x be the number of apples. Then 3x + 5 = 20, so x = 5.",
  "The reason is simple: reasoning step by step gives the right answer.",
  "Summe von Zahlen, café, naïve, 数学 and emoji 🙂 are text too.",
] * 3

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
LLAMA_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]

# Qwen2.5-style ChatML: a default system message, <|im_start|>role\ncontent<|im_end|>\n turns, tools as JSON.
QWEN_TEMPLATE = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are a helpful assistant.' }}
    {%- endif %}
    {{- '\\n\\n# Tools\\n<tools>' }}
    {%- for tool in tools %}
        {{- '\\n' }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- '\\n</tools><|im_end|>\\n' }}
{%- elif messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- else %}
    {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role != 'system' or not loop.first %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

# Llama-3-style: BOS, header-delimited turns ending in <|eot_id|>; written with plain {% %} tags and line breaks,
# so trim_blocks / lstrip_blocks decide the whitespace.
LLAMA_TEMPLATE = """{{ bos_token }}
{%- if date_string is not defined %}
  {% set date_string = "26 Jul 2024" %}
{% endif %}
{% if messages[0]['role'] == 'system' %}
  {% set system_message = messages[0]['content'] | trim %}
  {% set loop_messages = messages[1:] %}
{% else %}
  {% set system_message = "" %}
  {% set loop_messages = messages %}
{% endif %}
<|start_header_id|>system<|end_header_id|>

Today Date: {{ date_string }}

{{ system_message }}<|eot_id|>{% for message in loop_messages %}
  {% if message['role'] not in ['user', 'assistant'] %}
    {{ raise_exception('Only user and assistant roles are supported after the system message!') }}
  {% endif %}
<|start_header_id|>{{ message['role'] }}<|end_header_id|>

{{ message['content'] | trim }}<|eot_id|>{% endfor %}
{% if add_generation_prompt %}
<|start_header_id|>assistant<|end_header_id|>

{% endif %}
"""

CONVERSATIONS = [
  [{"role": "user", "content": "Hello!"}],
  [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 12 + 30?"}],
  [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 12 + 30?"},
   {"role": "assistant", "content": "42"}],
  [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How are you?"},
   {"role": "user", "content": "  Fine,\n\nthanks: café 数学 🙂 <b>&</b>  "}],
  hf.math_cot_messages("Let x be a number with 3x + 5 = 20. Find x."),
  hf.math_cot_messages("Let x be a number with 3x + 5 = 20. Find x.", "3x = 15, so x = \\boxed{5}."),
]


def train_tokenizer(special_tokens: list[str], bos: str | None = None) -> Tokenizer:
  """Returns a tiny byte-level BPE tokenizer trained on CORPUS; with `bos`, its post-processor prepends it."""
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=special_tokens, show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(CORPUS, trainer=trainer)
  if bos is None:
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
  else:
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                       special_tokens=[(bos, tok.token_to_id(bos))])
  return tok


def write_json(path: pathlib.Path, obj) -> None:
  path.write_text(json.dumps(obj, indent=2), encoding="utf-8")


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory) -> pathlib.Path:
  """A Qwen2.5-style checkpoint directory: ChatML template in tokenizer_config.json, two stop ids."""
  d = tmp_path_factory.mktemp("qwen")
  tok = train_tokenizer(QWEN_SPECIALS)
  tok.save(str(d / "tokenizer.json"))
  write_json(d / "tokenizer_config.json", {
    "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": None, "eos_token": "<|im_end|>",
    "pad_token": "<|endoftext|>", "add_bos_token": False, "chat_template": QWEN_TEMPLATE})
  write_json(d / "generation_config.json", {
    "eos_token_id": [tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")]})
  return d


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> pathlib.Path:
  """A Llama-3-style checkpoint directory: BOS post-processor, dict-form tokens, template in chat_template.jinja."""
  d = tmp_path_factory.mktemp("llama")
  tok = train_tokenizer(LLAMA_SPECIALS, bos="<|begin_of_text|>")
  tok.save(str(d / "tokenizer.json"))
  added = {"__type": "AddedToken", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
  write_json(d / "tokenizer_config.json", {
    "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": {"content": "<|begin_of_text|>", **added},
    "eos_token": {"content": "<|eot_id|>", **added},
    "chat_template": "{{ 'this stale template is overridden by chat_template.jinja' }}"})
  (d / "chat_template.jinja").write_text(LLAMA_TEMPLATE, encoding="utf-8")
  write_json(d / "generation_config.json", {
    "eos_token_id": [tok.token_to_id("<|end_of_text|>"), tok.token_to_id("<|eot_id|>")]})
  return d


@pytest.fixture(scope="module", params=["qwen", "llama"])
def checkpoint(request, qwen_dir, llama_dir) -> pathlib.Path:
  return {"qwen": qwen_dir, "llama": llama_dir}[request.param]


@pytest.fixture(scope="module")
def reference(checkpoint):
  """transformers' tokenizer of the same directory."""
  transformers = pytest.importorskip("transformers")
  return transformers.AutoTokenizer.from_pretrained(str(checkpoint))


@pytest.mark.parametrize("add_generation_prompt", [False, True])
@pytest.mark.parametrize("conversation", range(len(CONVERSATIONS)))
def test_chat_template_matches_transformers(checkpoint, reference, conversation, add_generation_prompt):
  tok = hf.load_hf_tokenizer(checkpoint)
  messages = CONVERSATIONS[conversation]
  text = tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
  assert text == reference.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                               tokenize=False)
  ids = tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True)
  assert ids == reference.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                              tokenize=True, return_dict=False)
  assert tok.decode(ids) == text


def test_qwen_template_with_tools_matches_transformers(qwen_dir):
  transformers = pytest.importorskip("transformers")
  reference = transformers.AutoTokenizer.from_pretrained(str(qwen_dir))
  tools = [{"type": "function", "function": {"name": "add", "description": "Adds <a> & <b>: café",
                                             "parameters": {"type": "object", "properties": {}}}}]
  messages = CONVERSATIONS[1]
  text = hf.load_hf_tokenizer(qwen_dir).apply_chat_template(messages, add_generation_prompt=True, tools=tools)
  assert text == reference.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, tools=tools)
  assert '"description": "Adds <a> & <b>: café"' in text  # transformers' tojson: no HTML or ASCII escaping


def test_rendered_text(qwen_dir, llama_dir):
  messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
  qwen = hf.load_hf_tokenizer(qwen_dir).apply_chat_template(messages, add_generation_prompt=False)
  assert qwen == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                  "<|im_start|>assistant\nHello<|im_end|>\n")
  llama = hf.load_hf_tokenizer(llama_dir).apply_chat_template(messages[:1], add_generation_prompt=True)
  assert llama == ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nToday Date: 26 Jul 2024\n\n"
                   "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                   "<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_math_cot_messages():
  assert hf.MATH_COT_SYSTEM == r"Please reason step by step, and put your final answer within \boxed{}."
  assert hf.math_cot_messages("1+1?") == [{"role": "system", "content": hf.MATH_COT_SYSTEM},
                                          {"role": "user", "content": "1+1?"}]
  assert hf.math_cot_messages("1+1?", "2")[2] == {"role": "assistant", "content": "2"}


def test_encode_decode_round_trip(checkpoint, reference):
  tok = hf.load_hf_tokenizer(checkpoint)
  for text in ["", "What is 12 + 30?", "  café 数学 🙂\n\ttabs\r\n", CORPUS[0]]:
    ids = tok.encode(text)
    assert all(isinstance(i, int) for i in ids)
    assert ids == reference.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert tok.encode(text, add_special_tokens=True) == reference.encode(text, add_special_tokens=True)


def test_special_tokens_in_text_and_skip(qwen_dir):
  tok = hf.load_hf_tokenizer(qwen_dir)
  ids = tok.encode("<|im_start|>user\nHi<|im_end|>")
  assert ids[0] == tok.token_to_id("<|im_start|>") and ids[-1] == tok.eos_id
  assert tok.decode(ids, skip_special_tokens=True) == "user\nHi"


def test_special_ids(qwen_dir, llama_dir):
  qwen = hf.load_hf_tokenizer(qwen_dir)
  assert qwen.bos_id is None and qwen.bos_token is None
  assert qwen.eos_id == qwen.token_to_id("<|im_end|>")
  assert qwen.pad_id == qwen.token_to_id("<|endoftext|>")
  assert qwen.stop_ids == (qwen.token_to_id("<|im_end|>"), qwen.token_to_id("<|endoftext|>"))
  assert qwen.vocab_size == 400 and qwen.token_to_id("no such token") is None
  assert qwen.encode("Hi", add_special_tokens=True) == qwen.encode("Hi")  # ByteLevel post-processor adds nothing

  llama = hf.load_hf_tokenizer(llama_dir)
  assert llama.bos_id == llama.token_to_id("<|begin_of_text|>")
  assert llama.eos_id == llama.pad_id == llama.token_to_id("<|eot_id|>")  # no pad token: pad falls back to eos
  assert llama.stop_ids == (llama.token_to_id("<|eot_id|>"), llama.token_to_id("<|end_of_text|>"))
  assert llama.encode("Hi", add_special_tokens=True) == [llama.bos_id, *llama.encode("Hi")]


def test_stop_ids_from_int_and_without_generation_config(tmp_path, qwen_dir):
  (tmp_path / "tokenizer.json").write_bytes((qwen_dir / "tokenizer.json").read_bytes())
  write_json(tmp_path / "tokenizer_config.json", {"eos_token": "<|im_end|>"})
  tok = hf.load_hf_tokenizer(tmp_path)
  assert tok.stop_ids == (tok.eos_id,) and tok.pad_id == tok.eos_id
  write_json(tmp_path / "generation_config.json", {"eos_token_id": tok.token_to_id("<|endoftext|>")})
  assert hf.load_hf_tokenizer(tmp_path).stop_ids == (tok.eos_id, tok.token_to_id("<|endoftext|>"))
  write_json(tmp_path / "generation_config.json", {"eos_token_id": tok.eos_id})
  assert hf.load_hf_tokenizer(tmp_path).stop_ids == (tok.eos_id,)


def test_missing_tokenizer_file(tmp_path):
  with pytest.raises(FileNotFoundError, match=str(tmp_path / "tokenizer.json")):
    hf.load_hf_tokenizer(tmp_path)


def test_missing_chat_template(tmp_path, qwen_dir):
  (tmp_path / "tokenizer.json").write_bytes((qwen_dir / "tokenizer.json").read_bytes())
  tok = hf.load_hf_tokenizer(tmp_path)  # no tokenizer_config.json at all
  assert tok.eos_id is None and tok.stop_ids == () and tok.chat_template is None
  with pytest.raises(ValueError, match=f"{tmp_path}.*no chat template"):
    tok.apply_chat_template([{"role": "user", "content": "Hi"}])


def test_special_token_not_in_vocabulary(tmp_path, qwen_dir):
  (tmp_path / "tokenizer.json").write_bytes((qwen_dir / "tokenizer.json").read_bytes())
  write_json(tmp_path / "tokenizer_config.json", {"eos_token": "</s>"})
  with pytest.raises(ValueError, match="eos_token '</s>' is not in the vocabulary"):
    hf.load_hf_tokenizer(tmp_path)


def test_template_globals(qwen_dir):
  base = Tokenizer.from_file(str(qwen_dir / "tokenizer.json"))
  tok = hf.HFTokenizer(base, chat_template=(
    "{% if messages|length > 1 %}{{ raise_exception('one message only') }}{% endif %}"
    "{{ strftime_now('%Y') }}|{{ messages[0] | tojson }}|{{ extra }}|{% generation %}{{ eos_token }}{% endgeneration %}"),
    special_tokens={"eos_token": "<|im_end|>"})
  year = str(datetime.datetime.now().year)
  text = tok.apply_chat_template([{"role": "user", "content": "<é>", "name": None}], extra=7)
  assert text in (f'{year}|{{"role": "user", "content": "<é>"}}|7|<|im_end|>',
                  f'{int(year) + 1}|{{"role": "user", "content": "<é>"}}|7|<|im_end|>')  # new year's eve
  with pytest.raises(jinja2.TemplateError, match="one message only"):
    tok.apply_chat_template([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


def test_llama_template_raise_exception(llama_dir):
  with pytest.raises(jinja2.TemplateError, match="Only user and assistant roles"):
    hf.load_hf_tokenizer(llama_dir).apply_chat_template([{"role": "tool", "content": "x"}])


@pytest.mark.parametrize("name,end_of_turn", [("qwen", "<|im_end|>\n"), ("llama", "<|eot_id|>")])
def test_prompt_and_response_ids(qwen_dir, llama_dir, name, end_of_turn):
  tok = hf.load_hf_tokenizer({"qwen": qwen_dir, "llama": llama_dir}[name])
  response = "3x = 15, so x = \\boxed{5}."
  messages = hf.math_cot_messages("Let x be a number with 3x + 5 = 20. Find x.")
  prompt_ids, response_ids = hf.prompt_and_response_ids(tok, messages, response)
  assert prompt_ids == tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
  assert prompt_ids + response_ids == tok.apply_chat_template(hf.math_cot_messages(messages[1]["content"], response),
                                                              tokenize=True)
  assert tok.decode(response_ids) == response + end_of_turn
  assert tok.eos_id in response_ids


def test_prompt_and_response_ids_errors(qwen_dir):
  base = Tokenizer.from_file(str(qwen_dir / "tokenizer.json"))
  messages = [{"role": "user", "content": "The reas"}]
  # The generation prompt is not the start of the full rendering.
  tok = hf.HFTokenizer(base, chat_template=(
    "{% for m in messages %}{{ m.content }}{% endfor %}{% if add_generation_prompt %}<|im_start|>{% endif %}"))
  with pytest.raises(ValueError, match="renders the prompt"):
    hf.prompt_and_response_ids(tok, messages, "on")
  # Text is a prefix, but "reas" + "on" tokenizes differently from "reason".
  tok = hf.HFTokenizer(base, chat_template="{% for m in messages %}{{ m.content }}{% endfor %}")
  assert tok.encode("The reason") != tok.encode("The reas") + tok.encode("on")
  with pytest.raises(ValueError, match="not a prefix"):
    hf.prompt_and_response_ids(tok, messages, "on")
