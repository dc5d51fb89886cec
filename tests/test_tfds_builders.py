"""TFDS builders over local files: canonical records, bad records kept with reason codes, random access."""

from __future__ import annotations

import json
import pickle
import socket
import time

import grain
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rankjax.data import tfds_builders as tb


def _jsonl(path, lines: list) -> None:
  """Writes `lines` (dicts are JSON-encoded, strings written as is) one per line."""
  path.write_text("".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines))


def _read_jsonl(path) -> list[dict]:
  """Returns the records of a JSONL file."""
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


@pytest.fixture
def no_network(monkeypatch):
  """Makes any socket connection fail, so a test proves preparing never reaches the network."""
  def refuse(*args, **kwargs):
    raise AssertionError(f"network access attempted: {args}")
  monkeypatch.setattr(socket.socket, "connect", refuse)
  monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def gsm8k_cache(tmp_path_factory) -> dict:
  """A module-wide data dir where GSM8K is prepared once."""
  return {"data_dir": tmp_path_factory.mktemp("tfds_gsm8k")}


@pytest.fixture
def gsm8k(shared_data, gsm8k_cache):
  """(manual dir, data dir, seconds the first prepare took) of GSM8K, prepared once per module."""
  manual_dir, data_dir = shared_data / "gsm8k", gsm8k_cache["data_dir"]
  if "prepare_s" not in gsm8k_cache:
    start = time.perf_counter()
    tb.load_source("gsm8k_local", "train", str(manual_dir), str(data_dir))
    gsm8k_cache["prepare_s"] = time.perf_counter() - start
  return manual_dir, data_dir, gsm8k_cache["prepare_s"]


def test_gsm8k_records_equal_the_jsonl(gsm8k):
  manual_dir, data_dir, _ = gsm8k
  for split, n in (("train", 7473), ("test", 1319)):
    src = tb.load_source("gsm8k_local", split, str(manual_dir), str(data_dir))
    rows = _read_jsonl(manual_dir / f"{split}.jsonl")
    assert len(src) == len(rows) == n
    for i in (0, 1, n // 2, n - 1):
      r = src[i]
      assert r["prompt"] == rows[i]["question"]
      assert r["response"] == rows[i]["answer"]  # the full chain of thought, "#### n" line included
      assert r["answer"] == rows[i]["answer"].split("####")[-1].strip().replace(",", "")
      assert (r["source_file"], r["source_index"], r["error"], r["messages"]) == (f"{split}.jsonl", i, "", "")
      assert all(isinstance(r[k], str) for k in tb.TEXT_FIELDS) and type(r["source_index"]) is int
  test = tb.load_source("gsm8k_local", "test", str(manual_dir), str(data_dir))
  assert test[146]["response"].endswith("#### 2,125") and test[146]["answer"] == "2125"


def test_reload_reuses_the_prepared_dataset(gsm8k):
  manual_dir, data_dir, prepare_s = gsm8k
  info = data_dir / "gsm8k_local" / "1.1.0" / "dataset_info.json"
  mtime = info.stat().st_mtime_ns
  start = time.perf_counter()
  src = tb.load_source("gsm8k_local", "train", str(manual_dir), str(data_dir))
  reload_s = time.perf_counter() - start
  assert info.stat().st_mtime_ns == mtime  # not prepared again
  assert reload_s < max(1.0, prepare_s), (reload_s, prepare_s)
  assert len(src) == 7473 and src[7472]["source_index"] == 7472


def test_grain_source_pickle_and_split_slices(gsm8k):
  manual_dir, data_dir, _ = gsm8k
  src = tb.load_source("gsm8k_local", "train", str(manual_dir), str(data_dir))
  ds = grain.MapDataset.source(src)
  assert len(ds) == 7473 and ds[0] == src[0] and ds[7472] == src[-1]
  assert ds.map(lambda r: r["answer"])[0] == "72"
  clone = pickle.loads(pickle.dumps(src))
  assert len(pickle.dumps(src)) < 1000 and clone[10] == src[10]
  head = tb.load_source("gsm8k_local", "test[:10]", str(manual_dir), str(data_dir))
  assert len(head) == 10 and [r["source_index"] for r in head] == list(range(10))
  assert src[3:6] == [src[3], src[4], src[5]]
  with pytest.raises(IndexError):
    src[7473]


@pytest.mark.parametrize("name, n, index, answer", [
    ("aime24", 30, 0, "204"),
    ("amc23", 40, 0, "27"),  # 27.0 in the file
    ("minerva_math", 272, 1, "4.5e33"),  # the last \boxed{} of the solution
    ("olympiadbench", 675, 13, "69,84"),  # ["$69$,$84$"]: dollar signs stripped
])
def test_math_eval_sets(shared_data, tmp_path, name, n, index, answer):
  src = tb.load_source(f"math_eval/{name}", "test", str(shared_data / "math_eval"), str(tmp_path))
  rows = _read_jsonl(shared_data / "math_eval" / name / "test.jsonl")
  assert len(src) == len(rows) == n
  assert all(r["error"] == "" and r["answer"] and r["prompt"] for r in src)
  r = src[index]
  assert r["answer"] == answer and r["source_index"] == index
  assert r["prompt"] == rows[index].get("problem", rows[index].get("question"))
  if name == "olympiadbench":
    assert r["response"] == "\n\n".join(rows[index]["solution"])
    assert r["answer_type"] == rows[index]["answer_type"]
    assert src[137]["unit"] == "minute" and src[0]["unit"] == ""
    assert src[1]["answer"] == "\\frac{1}{2 n+2}"
  else:
    assert r["response"] == rows[index].get("solution", "")


def test_jsonl_field_mapping_keeps_bad_records_with_reasons(tmp_path, no_network):
  manual = tmp_path / "files"
  manual.mkdir()
  _jsonl(manual / "train.jsonl", [
      {"q": "1+1?", "a": "2", "gold": 2.0},
      {"q": "no answer field"},
      {"q": 7, "a": "seven"},
      {"q": "blank", "a": "  \n"},
      "{not json",
      "",  # blank lines are not records
      "[1, 2]",  # valid JSON, but not an object
      {"q": "2+2?", "a": "4", "gold": "4"},
  ])
  src = tb.load_source("sft_jsonl", "train", str(manual), str(tmp_path / "data"),
                       prompt_field="q", response_field="a", answer_field="gold")
  got = [(r["source_index"], r["error"], r["prompt"], r["response"], r["answer"]) for r in src]
  assert got == [
      (0, "", "1+1?", "2", "2"),
      (1, "missing_field:a", "no answer field", "", ""),
      (2, "non_string:q", "", "seven", ""),
      (3, "empty_response", "blank", "  \n", ""),
      (4, "invalid_json", "", "", ""),
      (6, "invalid_json", "", "", ""),
      (7, "", "2+2?", "4", "4"),
  ]
  assert {r["source_file"] for r in src} == {"train.jsonl"}
  # another mapping of the same files is a different prepared dataset
  swapped = tb.load_source("sft_jsonl", "train", str(manual), str(tmp_path / "data"),
                           prompt_field="a", response_field="q")
  assert swapped[0]["prompt"] == "2" and swapped[0]["response"] == "1+1?"


def test_jsonl_messages_field(tmp_path):
  manual = tmp_path / "chat"
  manual.mkdir()
  good = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
          {"role": "assistant", "content": "Hello.", "weight": 1}]
  _jsonl(manual / "train.jsonl", [
      {"conv": good},
      {"conv": json.dumps(good[1:])},  # a JSON string of the list is accepted
      {"conv": good[:2]},
      {"conv": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]},
      {"conv": "[oops"},
      {"conv": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}]},
      {"other": 1},
  ])
  src = tb.load_source("sft_jsonl", "train", str(manual), str(tmp_path / "data"), messages_field="conv")
  assert [r["error"] for r in src] == ["", "", "no_assistant_turn", "invalid_messages", "invalid_json",
                                      "empty_response", "missing_field:conv"]
  assert json.loads(src[0]["messages"]) == [{k: m[k] for k in ("role", "content")} for m in good]
  assert (src[0]["prompt"], src[0]["response"]) == ("Hi?", "Hello.")
  assert json.loads(src[1]["messages"]) == good[1:2] + [{"role": "assistant", "content": "Hello."}]
  assert src[2]["messages"] == ""


def test_numina_jsonl_and_parquet(tmp_path):
  manual = tmp_path / "numina"
  manual.mkdir()
  solution = r"So $x = \frac{1}{2}$ and then $\boxed{\frac{1}{\sqrt{2}}}$."
  _jsonl(manual / "train.jsonl", [
      {"problem": "P0", "solution": solution, "messages": [{"role": "user", "content": "P0"},
                                                            {"role": "assistant", "content": solution}]},
      {"messages": [{"role": "user", "content": "P1"}, {"role": "assistant", "content": r"\boxed{1} \boxed{2}"}]},
      {"problem": "P2", "solution": "no boxed answer"},
      {"problem": "P3", "solution": ""},
  ])
  table = pa.table({
      "problem": ["Q0", "Q1", None],
      "solution": [r"\boxed{7}", r"ans \boxed{a{b}c}", "lost problem"],
      "messages": [[{"role": "user", "content": "Q0"}, {"role": "assistant", "content": r"\boxed{7}"}]] * 3,
  })
  pq.write_table(table, manual / "test.parquet")
  data_dir = str(tmp_path / "data")
  train = tb.load_source("numina_math_cot", "train", str(manual), data_dir)
  assert [(r["prompt"], r["answer"], r["error"]) for r in train] == [
      ("P0", r"\frac{1}{\sqrt{2}}", ""), ("P1", "2", ""), ("P2", "", ""), ("P3", "", "empty_response")]
  assert train[0]["response"] == solution and train[0]["messages"] == ""
  assert json.loads(train[1]["messages"])[-1]["content"] == r"\boxed{1} \boxed{2}"
  test = tb.load_source("numina_math_cot", "test", str(manual), data_dir)
  assert [(r["source_file"], r["source_index"], r["prompt"], r["answer"], r["error"]) for r in test] == [
      ("test.parquet", 0, "Q0", "7", ""), ("test.parquet", 1, "Q1", "a{b}c", ""),
      ("test.parquet", 2, "", "", "missing_field:problem")]


def test_changed_source_files_are_prepared_again(tmp_path):
  manual = tmp_path / "files"
  manual.mkdir()
  _jsonl(manual / "train.jsonl", [{"prompt": "a", "response": "b"}])
  data_dir = str(tmp_path / "data")
  assert len(tb.load_source("sft_jsonl", "train", str(manual), data_dir, name="mine")) == 1
  _jsonl(manual / "train.jsonl", [{"prompt": "a", "response": "b"}, {"prompt": "c", "response": "d"}])
  src = tb.load_source("sft_jsonl", "train", str(manual), data_dir, name="mine")
  assert [r["prompt"] for r in src] == ["a", "c"]


def test_missing_files_raise_file_not_found_naming_the_path(tmp_path):
  missing = tmp_path / "nowhere"
  with pytest.raises(FileNotFoundError, match=str(missing)):
    tb.load_source("gsm8k_local", "train", str(missing), str(tmp_path / "data"))
  manual = tmp_path / "files"
  manual.mkdir()
  with pytest.raises(FileNotFoundError, match=r"no data files in .*files.*<split>\.jsonl"):
    tb.load_source("gsm8k_local", "train", str(manual), str(tmp_path / "data"))
  _jsonl(manual / "train.jsonl", [{"question": "q", "answer": "a #### 1"}])
  with pytest.raises(FileNotFoundError, match=r"no split 'test' in .*files.*test\.jsonl"):
    tb.load_source("gsm8k_local", "test", str(manual), str(tmp_path / "data"))
  with pytest.raises(FileNotFoundError, match=r"aime24/test\.jsonl"):
    tb.load_source("math_eval/aime24", "test", str(manual), str(tmp_path / "data"))


def test_builder_names_and_configs(tmp_path):
  assert tb.known_builders() == ("gsm8k_local", "math_eval", "numina_math_cot", "sft_jsonl")
  with pytest.raises(ValueError, match="unknown builder"):
    tb.load_source("gsm8k", "train", str(tmp_path), str(tmp_path))
  with pytest.raises(ValueError, match="needs a config"):
    tb.load_source("math_eval", "test", str(tmp_path), str(tmp_path))
  with pytest.raises(ValueError, match="messages_field"):
    tb.load_source("sft_jsonl", "train", str(tmp_path), str(tmp_path), prompt_field="")


@pytest.mark.parametrize("text, want", [
    (r"so \boxed{5}.", "5"),
    (r"\boxed{1} then \boxed{\frac{a}{b}}", r"\frac{a}{b}"),
    (r"\boxed{1} then \boxed{unbalanced", "1"),
    (r"The answer is \boxed 42$.", "42"),
    ("steps\n#### 1,234 ", "1234"),
    ("no answer", ""),
])
def test_gold_answer(text, want):
  assert tb.gold_answer(text) == want


def test_number_text():
  assert (tb.number_text(27.0), tb.number_text(0.5), tb.number_text(-1)) == ("27", "0.5", "-1")


def test_builders_register_from_their_package_modules():
  """The builders live in rankjax.data.tfds_builders.builders: TFDS still registers them by name and finds their
  code (through importlib_resources), and the package keeps the old import path working."""
  import importlib_resources
  import tensorflow_datasets as tfds

  from rankjax.data.tfds_builders import builders
  registered = set(tfds.list_builders(with_community_datasets=False))
  assert {"sft_jsonl", "gsm8k_local", "numina_math_cot", "math_eval"} <= registered
  assert tfds.builder_cls("gsm8k_local") is builders.Gsm8kLocal is tb.Gsm8kLocal
  assert builders.Gsm8kLocal.code_path.name == "builders.py" and builders.Gsm8kLocal.code_path.exists()
  assert importlib_resources.files("rankjax.data.tfds_builders").joinpath("builders.py").is_file()
