"""samples.jsonl after a kill mid-write: the rows read back before a relaunch are exactly the rows the file holds
after the relaunch's repair, whatever byte the write was cut at (review findings of issue 23)."""

import json
import os

import pytest

from rankjax.eval import samples_file


def _row(sample: int, completion: str = "x") -> dict:
  return {k: 0 for k in samples_file.SAMPLE_FIELDS} | {"benchmark": "b", "sample": sample, "completion": completion}


def _line(sample: int, completion: str = "x") -> bytes:
  return (json.dumps(_row(sample, completion), ensure_ascii=False) + "\n").encode("utf-8")


def _relaunch(d: str) -> tuple[set, set]:
  """The keys read before the writer's repair, and those the file holds after it."""
  before = set(samples_file.read_samples(d))
  samples_file.SamplesWriter(d).close()
  return before, set(samples_file.read_samples(d))


def test_a_cut_inside_a_multibyte_character_drops_the_torn_line(tmp_path):
  d = str(tmp_path)
  torn = _line(1, "so x = √2")
  cut = torn.index("√".encode()) + 1  # inside the three bytes of √
  with open(os.path.join(d, samples_file.SAMPLES_FILE), "wb") as f:
    f.write(_line(0, "√√") + torn[:cut])
  before, after = _relaunch(d)
  assert before == after == {("b", 0, 0)}
  writer = samples_file.SamplesWriter(d)
  writer.write([_row(1, "√2")])
  writer.close()
  assert samples_file.read_samples(d)[("b", 0, 1)]["completion"] == "√2"


def test_a_complete_row_without_its_newline_is_not_counted(tmp_path):
  d = str(tmp_path)
  with open(os.path.join(d, samples_file.SAMPLES_FILE), "wb") as f:
    f.write(_line(0) + _line(1)[:-1])  # the row parses, but the write did not finish
  before, after = _relaunch(d)
  assert before == after == {("b", 0, 0)}


@pytest.mark.parametrize("tail", ["ascii", "multibyte"])
def test_read_equals_repaired_at_every_cut(tmp_path, tail):
  text = "a" * 5 if tail == "ascii" else "√π€"
  whole = _line(0) + _line(1, text)
  for cut in range(len(_line(0)), len(whole) + 1):
    d = tmp_path / str(cut)
    d.mkdir()
    (d / samples_file.SAMPLES_FILE).write_bytes(whole[:cut])
    before, after = _relaunch(str(d))
    assert before == after == ({("b", 0, 0), ("b", 0, 1)} if cut == len(whole) else {("b", 0, 0)}), cut


def test_a_bad_line_before_the_end_is_an_error_naming_it(tmp_path):
  d = str(tmp_path)
  (tmp_path / samples_file.SAMPLES_FILE).write_bytes(_line(0) + b"not json\n" + _line(1))
  with pytest.raises(ValueError, match=r"samples.jsonl: line 2 is not a sample row"):
    samples_file.read_samples(d)
