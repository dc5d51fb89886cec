"""GRPO of Qwen2.5-Math-7B on the GSM8K train split with math-verify rewards, paper-style settings.

python -m rankjax.main --config=configs/grpo_qwen25_math_7b.py --workdir=/runs/grpo_qwen7b \
    --config.init_from=/ckpt/Qwen2.5-Math-7B --config.data.files.manual_dir=/data/gsm8k \
    [--config.rl.token_weight=ranktuner] [--config.lora.rank=64 --config.lora.alpha=128]

Each value and its source:
- learning rate 1e-6, constant: DeepSeekMath's GRPO (Shao et al. 2024, arXiv 2402.03300, section 4.1) and DAPO
  (Yu et al. 2025, arXiv 2503.14476) both train the policy at 1e-6.
- beta = 0.04 on the k3 KL to the initial policy: DeepSeekMath (section 4.1). With LoRA the base is that policy and
  costs nothing; with full fine-tuning the reference is a second bf16 copy (15.2 GB: 3.8 GB per chip of v5p-8).
- epsilon 0.2, epsilon_high 0.28 (clip-higher): DAPO.
- token_mean aggregation (every completion token of the batch counts once): DAPO's token-level loss.
- one update per rollout batch (mu = 1): DeepSeekMath's "single update following each exploration stage".
- 1,024 new tokens at most: DeepSeekMath's maximum length (1,024); T = 1.0, top_p = 1.0 (GRPO samples the policy).
- 8 completions per prompt and 64 prompts per step (512 completions): a v5p-8-sized batch, smaller than
  DeepSeekMath's 64 outputs x 16 questions (1,024); chosen for memory, not taken from a paper.
- Prompts in the model's chat template with the Qwen2.5-Math CoT system prompt (the evaluation's prompt).
Planned, not measured on a chip (`python -m rankjax.plan --config=configs/grpo_qwen25_math_7b.py --topology=v5p-8
--config.init_from=configs/architectures/Qwen2.5-Math-7B [--config.lora.rank=64 --config.lora.alpha=128]`, JAX 0.10.2,
libtpu 0.0.42.1): the step fits v5p-8 at 75.7 GiB per chip of 95 with full fine-tuning, 62.7 with LoRA r=64; the
rollout engine's prefill of all 512 prompts peaks (the update: 35.3 and 12.6).
"""

from rankjax.data.hf_tokenizer import MATH_COT_SYSTEM
from rankjax.rl import config as rl_config
from rankjax.train.config import load_config_file


def get_config():
  config = load_config_file("configs/qwen25_math_7b.py")
  with config.unlocked():
    config.rl = rl_config.default_config()
  config.data.source = "gsm8k"
  config.data.split = "train"
  config.data.files.manual_dir = ""  # required: --config.data.files.manual_dir=/path/to/gsm8k (train.jsonl)
  config.data.prompt_format = "chat"
  config.data.system_prompt = MATH_COT_SYSTEM
  config.data.seq_len = 1536  # the prompt (< 512 tokens) and 1,024 new tokens
  # 512 rollouts of up to 1,536 tokens per step: the update (and the behaviour pass) in micro-batches of 16 rollouts,
  # as the SFT config's micro-batches of 16 x 2,048 tokens.
  config.grad_accum_steps = 32
  config.rl.prompts_per_step = 64
  config.rl.num_generations = 8
  config.rl.max_new_tokens = 1024
  config.rl.temperature = 1.0
  config.rl.beta = 0.04
  config.rl.epsilon, config.rl.epsilon_high = 0.2, 0.28
  config.rl.aggregation = "token_mean"
  config.rl.updates_per_batch = 1
  config.optimizer.learning_rate = 1e-6
  config.optimizer.warmup_fraction = 0.0
  config.optimizer.end_lr_fraction = 1.0  # constant
  config.total_steps = 100
  config.checkpoint_every = 10
  config.export_hf = True
  config.eval.every_steps = 25
  config.eval.benchmarks = "gsm8k"
  config.eval.num_problems = 200
  config.eval.max_new_tokens = 1024
  return config
