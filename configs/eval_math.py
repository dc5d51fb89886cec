"""The paper's math evaluation: n = 16 samples per problem, temperature 1.0, top-p 1.0, up to 4096 new tokens,
the Qwen2.5-Math CoT prompt, Pass@1 and Pass@16 on MATH500, Minerva Math, OlympiadBench, AIME24 and AMC23.

python -m rankjax.evaluate --config=configs/eval_math.py --workdir=/tmp/eval --config.checkpoint=PATH
python -m rankjax.evaluate --config=configs/eval_math.py --workdir=/tmp/eval_small --config.checkpoint=PATH \
    --config.benchmarks=gsm8k,aime24 --config.num_problems=20 --config.num_samples=4 --config.pass_k='(1,4)'

PATH: a Hugging Face checkpoint directory or a rankjax workdir. The sets are read from ../shared/data
(MATH500 is not there: put its test.jsonl, with `problem` and `answer` fields, in math_eval/math500/, or
drop it with --config.benchmarks). A relaunch with the same workdir resumes.
"""

import os

import ml_collections

from rankjax.eval import settings

SHARED_DATA = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data"))


def get_config():
  config = settings.default_config()
  config.checkpoint = ""  # an HF checkpoint directory or a rankjax workdir
  config.dtype = ""  # compute dtype; "": bfloat16 for HF checkpoints, the run's own for rankjax workdirs
  config.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})  # samples split over data*fsdp
  config.data.gsm8k_dir = os.path.join(SHARED_DATA, "gsm8k")
  config.data.math_eval_dir = os.path.join(SHARED_DATA, "math_eval")
  config.lock()
  return config
