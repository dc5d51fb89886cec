"""One fine-tuning run on the synthetic arithmetic corpus (random init; RankTuner by default).

python -m rankjax.main --config=configs/synthetic_sft.py --workdir=/tmp/run --config.loss.name=dft

Its sweep (`get_sweep`, 3 seeds x 3 methods, each run in SWEEPDIR/<name> such as loss.name-dft_seed-1):

python -m rankjax.launch local --config=configs/synthetic_sft.py --workdir=workdirs/synthetic_sweep [--dry-run]
"""

from rankjax import sweeps
from rankjax.train.config import base_config


def get_config():
  config = base_config()
  config.optimizer.learning_rate = 1e-3
  config.total_steps = 200
  config.log_every = 10
  config.checkpoint_every = 50
  config.lock()
  return config


def get_sweep():
  return sweeps.product(seed=[0, 1, 2], **{"loss.name": ["sft", "dft", "ranktuner"]})
