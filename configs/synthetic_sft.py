"""One fine-tuning run on the synthetic arithmetic corpus (random init; RankTuner by default).

python -m rankjax.main --config=configs/synthetic_sft.py --workdir=/tmp/run --config.loss.name=dft
"""

from rankjax.train.config import base_config


def get_config():
  config = base_config()
  config.optimizer.learning_rate = 1e-3
  config.total_steps = 200
  config.log_every = 10
  config.checkpoint_every = 50
  config.lock()
  return config
