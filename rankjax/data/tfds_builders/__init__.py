"""TFDS builders over local SFT / math files, all emitting one canonical record, and a random-access loader.

Three modules, one job each: `records` reads raw records from the files (and finds a split's files),
`builders` holds the TFDS builders that turn them into canonical examples, `store` prepares a builder into a
data dir and reads a prepared split back (`load_source`, `RecordSource`). This package re-exports their
public names, so `from rankjax.data import tfds_builders; tfds_builders.load_source(...)` keeps working.

Every builder is a `tfds.core.GeneratorBasedBuilder` prepared from files in a manual dir (nothing is ever
downloaded) into `array_record` files, read back without TensorFlow by `load_source` (random access, for
`grain.MapDataset.source`). Each record has the canonical features

  prompt, response   Text   the question and the reference answer text
  messages           Text   JSON list of {"role", "content"}; "" when the source has plain prompt/response
  answer             Text   gold final answer ("" when none)
  source_file        Text   basename of the file the record came from
  source_index       int64  0-based record index in that file (JSONL: line number; Parquet: row number)
  error              Text   "" for a good record, else a reason code (below)

and `math_eval` adds `answer_type` and `unit` (olympiadbench; "" elsewhere). Records keep the file order.

Bad records are kept, with `error` set and "" in the broken fields, so the pipeline can count them per
reason (or raise naming `source_file` / `source_index` in strict mode). Reason codes:

  invalid_json             a JSONL line that does not parse (or is not a JSON object), or a messages string
                           that does not parse
  invalid_utf8             a JSONL line whose bytes are not UTF-8
  missing_field:<name>     the field is absent or null
  non_string:<name>        the field is not a string (a number where a number is expected is fine)
  empty_response           the response (or final assistant turn) is empty or whitespace
  invalid_messages         messages is not a non-empty list of {"role": str, "content": str}
  no_assistant_turn        the last message is not the assistant's
  no_answer                (math_eval only) no gold answer could be found

Preparing logs a warning naming the file and line (JSONL; row for Parquet) of the first bad records of each
reason, and a file with no record at all is an error naming it. Over-length is decided later by the tokenizer
pipeline. Builders:

  sft_jsonl         generic `<split>.jsonl` / `<split>.parquet` files (or shards `<split>-*.jsonl|parquet`)
                    with a field mapping (`SftConfig`: prompt_field / response_field, or messages_field);
  gsm8k_local       GSM8K `{train,test}.jsonl`: question -> prompt, answer text -> response, the number after
                    "####" -> answer (thousands commas removed);
  numina_math_cot   NuminaMath-CoT style problem/solution or messages records, JSONL or Parquet; answer = the
                    last \\boxed{...} of the solution (else its "####" line, else "the answer is x");
  math_eval         eval sets, one config each: aime24, amc23, math500 (MATH-500: problem / answer fields; the user
                    brings its file), minerva_math, olympiadbench
                    (`<set>/test.jsonl` or `test.jsonl` in the manual dir); single split "test".

Gold answers cut from a solution (gsm8k_local, numina_math_cot, minerva_math) come from
`rankjax.data.answers.extract_answer`, the extractor that grading applies to model completions.

A prepared dataset records a fingerprint of its source files (names, sizes, SHA-256) and field mapping;
`load_source` reuses it when they match and prepares it again when they changed.
"""

from rankjax.data.tfds_builders.builders import (MATH_EVAL_SETS, TEXT_FIELDS, Gsm8kLocal, LocalFilesBuilder, MathEval,
                                                 MathEvalConfig, NuminaMathCot, SftConfig, SftJsonl,
                                                 canonical_features, gold_answer, known_builders)
from rankjax.data.tfds_builders.records import (FORMATS, BadRecord, check_messages, expected_names, find_split_files,
                                                has_records, number_text, read_records)
from rankjax.data.tfds_builders.store import RecordSource, load_source, make_builder, make_sft_builder, prepare

__all__ = [
    "FORMATS", "MATH_EVAL_SETS", "TEXT_FIELDS", "BadRecord", "Gsm8kLocal", "LocalFilesBuilder", "MathEval",
    "MathEvalConfig", "NuminaMathCot", "RecordSource", "SftConfig", "SftJsonl", "canonical_features",
    "check_messages", "expected_names", "find_split_files", "gold_answer", "has_records", "known_builders",
    "load_source", "make_builder", "make_sft_builder", "number_text", "prepare", "read_records"]
