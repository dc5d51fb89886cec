"""The multi-seed scheme comparison (experiments/compare_schemes.py) in the paper's regime: a competent base.

python experiments/compare_schemes.py --config=configs/compare_schemes.py --workdir=workdirs/compare

The model, data and optimizer of the demo (configs/demo.py); the base is pretrained with 25% fine-tuning-format
problems so that it already solves part of the held-out task. Every method of rankjax.train.methods is
fine-tuned from it for each seed, on clean data and on data with noise words in the responses.
"""

import ml_collections

from rankjax.train.config import load_config_file


def get_config():
  config = load_config_file("configs/demo.py")
  config.progress = False
  config.loss.diagnostics = False  # the schemes' own statistics only (bound forms need no E[R])
  config.total_steps = 60  # each fine-tuning run
  config.log_every = 10
  config.checkpoint_every = 60
  with config.unlocked():
    config.compare = ml_collections.ConfigDict({
        "methods": ("sft,dft,talr,eaft,ranktuner,ranktuner_uniform,ranktuner_bound,ranktuner_bound_uniform,prob_power,"
                    "asft,psft"),
        "seeds": (0, 1, 2),
        "noise_rate": 0.05,  # noisy condition: a corpus word after each response word with this probability
        "pretrain_steps": 500,
        "pretrain_learning_rate": 2e-3,
        "eval_samples": 4,  # samples per held-out problem (T = 1.0) for Pass@1
        "max_new_tokens": 40})
  return config
