"""The paper's second backbone: RankTuner (bound form) fine-tuning of Qwen3-8B on the first 10,000 NuminaMath-CoT
examples; everything else as configs/qwen25_math_7b.py (AdamW 5e-5, cosine with 10% warmup, betas 0.9 / 0.95,
weight decay 0.01, clipping 1.0, global batch 256 x 2048, one epoch, bf16).

python -m rankjax.main --config=configs/qwen3_8b.py --workdir=/runs/qwen3_8b_ranktuner \\
    --config.init_from=/ckpt/Qwen3-8B --config.data.files.manual_dir=/data/NuminaMath-CoT

Qwen3's q/k RMSNorm and head_dim come from the checkpoint's config.json. Its chat template is rendered with the
Qwen2.5-Math CoT system prompt, as the paper's evaluation prompt.

Planned, not yet measured on a chip (`python -m rankjax.plan --config=configs/qwen3_8b.py --topology=v5p-8
--config.init_from=configs/architectures/Qwen3-8B`, JAX 0.10.2, libtpu 0.0.42.1): the step fits a TPU v5p-8 at
44.2 GiB per chip of 95 (parameters 3.8, Adam moments 15.3, temporaries 25.0) with the default 16 sequences per
micro-step; on a v4-8 (32 GiB) it needs 8 (--config.grad_accum_steps=32). Other slices: the README's fit table.
"""

import os

from rankjax.train.config import load_config_file


def get_config():
  config = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "qwen25_math_7b.py"))
  config.init_from = ""  # required: --config.init_from=/path/to/Qwen3-8B
  return config
