"""The paper's recipe: RankTuner fine-tuning of Qwen2.5-Math-7B on the first 10,000 NuminaMath-CoT examples.

python -m rankjax.main --config=configs/qwen25_math_7b.py --workdir=/runs/qwen25_math_7b_ranktuner \\
    --config.init_from=/ckpt/Qwen2.5-Math-7B --config.data.files.manual_dir=/data/NuminaMath-CoT

- init_from: a local Hugging Face checkpoint directory (config.json + *.safetensors +
  tokenizer files). The same config fine-tunes Qwen3-8B or Llama-3.1-8B: point init_from there.
- data.files.manual_dir: NuminaMath-CoT as train.jsonl / train.parquet (or train-*.parquet shards)
  with problem/solution (or messages) fields; it is prepared once as a TFDS dataset.
- Prompts use the checkpoint's chat template with the Qwen2.5-Math chain-of-thought system
  prompt; the loss covers each solution and its end-of-turn tokens.
- Sized for a TPU v5p-8 (or 8 x 80 GB GPUs): bf16 parameters, float32 Adam moments, FSDP over
  every device, per-layer rematerialisation, a global batch of 256 x 2048 packed tokens in 16
  accumulation micro-steps, 39 optimizer steps (one epoch). WORKDIR/hf gets the fine-tuned
  checkpoint in HF format at the end (loadable by transformers and vLLM).
- Planned, not yet measured on a chip (`python -m rankjax.plan --config=configs/qwen25_math_7b.py --topology=v5p-8
  --config.init_from=configs/architectures/Qwen2.5-Math-7B`, JAX 0.10.2, libtpu 0.0.42.1): the step fits v5p-8
  at 42.6 GiB per chip of 95 (parameters 3.6, Adam moments 14.2, temporaries 23.6), the evaluation engine at
  19.7 GiB; other slices: the README's fit table. The 8-GPU claim is not checked (no GPU compile here).
- RankTuner's bound form (spec section 3), as the reference implementation trains: no E[R] and no sort;
  the exact form: --config.loss.form=exact. Baselines: --config.loss.name=sft | dft | talr | eaft.
- Evaluate with configs/eval_math.py (the paper's protocol): python -m rankjax.evaluate
  --config=configs/eval_math.py --workdir=/runs/eval --config.checkpoint=/runs/qwen25_math_7b_ranktuner/hf
"""

from rankjax.data.hf_tokenizer import MATH_COT_SYSTEM
from rankjax.train.config import base_config


def get_config():
  config = base_config()
  config.init_from = ""  # required: --config.init_from=/path/to/Qwen2.5-Math-7B
  config.model.dtype = "bfloat16"
  config.model.param_dtype = "bfloat16"
  config.model.remat = "layer"
  config.model.attention_impl = "dot_product_attention"  # cuDNN flash attention where JAX finds it
  config.optimizer.state_dtype = "float32"
  config.optimizer.learning_rate = 5e-5
  config.optimizer.warmup_fraction = 0.1
  config.optimizer.b1, config.optimizer.b2 = 0.9, 0.95
  config.optimizer.weight_decay = 0.01
  config.optimizer.clip_norm = 1.0
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, -1, 1

  config.data.source = "numina_math_cot"
  config.data.split = "train[:10000]"
  config.data.files.manual_dir = ""  # required: --config.data.files.manual_dir=/path/to/NuminaMath-CoT
  config.data.prompt_format = "chat"
  config.data.system_prompt = MATH_COT_SYSTEM
  config.data.seq_len = 2048
  config.data.batch_size = 256
  config.data.truncation = "drop"
  config.data.num_epochs = 1
  config.grad_accum_steps = 16

  config.loss.name = "ranktuner"
  config.loss.form = "bound"
  config.loss.base = "prob"
  config.loss.diagnostics = False  # the bound form needs no E[R]; True adds it (and every scheme's weight) to the logs
  config.loss.token_chunk = 1024
  config.total_steps = 39
  config.log_every = 1
  config.checkpoint_every = 10
  config.keep_checkpoints = 2
  config.export_hf = True
  config.lock()
  return config
