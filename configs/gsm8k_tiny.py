"""RankTuner on GSM8K (local files) with a tiny random-init model: a CPU smoke run of the real-data path.

python -m rankjax.main --config=configs/gsm8k_tiny.py --workdir=/tmp/gsm8k_tiny
python -m rankjax.main --config=configs/gsm8k_tiny.py --workdir=/tmp/gsm8k_tiny --config.total_steps=40  # resumes
python -m rankjax.data.preview --config=configs/gsm8k_tiny.py -n 3   # look at the masks first

The data come from ../shared/data/gsm8k (train.jsonl), prepared once as a TFDS ArrayRecord
dataset, tokenised with a BPE trained on the training split (WORKDIR/tokenizer.json), packed
into 512-token rows; the loss covers each answer and its EOS.
"""

import os

from rankjax.train.config import base_config

SHARED_GSM8K = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "gsm8k")


def get_config():
  config = base_config()
  config.model.vocab_size = 2048
  config.model.hidden_size = 128
  config.model.num_layers = 4
  config.model.num_heads = 4
  config.model.num_kv_heads = 2
  config.model.mlp_dim = 384
  config.data.source = "gsm8k"
  config.data.split = "train"
  config.data.files.manual_dir = os.path.normpath(SHARED_GSM8K)
  config.data.seq_len = 512
  config.data.batch_size = 8
  config.data.prompt_format = "plain"
  config.data.plain_template = "Question: {prompt}\nAnswer: "
  config.loss.name = "ranktuner"
  config.optimizer.learning_rate = 1e-3
  config.total_steps = 20
  config.log_every = 5
  config.checkpoint_every = 10
  config.lock()
  return config
