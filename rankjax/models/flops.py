"""Analytical model FLOPs, parameter counts and MFU of the Llama-style decoder.

Conventions (those of MFU in the PaLM paper, Megatron-LM and MaxText, except where noted):

- Only matrix multiplications are counted, at 2 FLOPs per multiply-add: a [m, k] x [k, n] matmul
  is 2*m*k*n FLOPs. Norms, RoPE, softmax, biases, activations and the embedding lookup count 0.
- Per token and layer, with d = hidden_size, H/KV = query/key-value heads, hd = head_dim,
  F = mlp_dim, V = vocab_size and S = the number of keys each query attends to:
    q, k, v projections     2*d*(H*hd + 2*KV*hd)
    output projection       2*H*hd*d
    scores and values       2*2*H*hd*S            (q.k^T and probs.v)
    SwiGLU MLP              3*2*d*F               (gate, up, down)
  plus, once per token, the LM head 2*d*V.
- Causal attention. A query at position t attends to t + 1 keys, so on average about T/2 over a
  sequence of T. `causal_average=True` (the default here) counts S = T/2: the work a causal
  kernel must do. Current MaxText (`calculate_tflops_training_per_device`) uses this convention:
  it halves its non-causal attention count, citing Megatron-LM and NeMo. The PaLM paper's
  6N + 12*L*H*Q*T per token, and MaxText before that change, count the full S = T. Pass
  `causal_average=False` for that convention. Plain XLA attention, which computes all T x T
  scores and then masks them, does the S = T work.
- Training = 3 x forward: the backward pass costs twice the forward (the gradients with respect
  to both the activations and the weights). Recomputation under rematerialisation (`remat`)
  is NOT counted. MFU counts model FLOPs, the work the model needs, not hardware FLOPs, the
  work the implementation chooses to do. So remat lowers MFU but leaves the FLOP count alone.
"""

from __future__ import annotations

import jax

from rankjax.models.config import head_dim

# Dense (no structured sparsity) peak bf16/fp16 matmul throughput per JAX device, in FLOP/s,
# from the vendors' data sheets. Matched in order against the lower-cased `device.device_kind`,
# so more specific patterns come first. A JAX device is one GPU, or one TPU chip for v4 and later.
_PEAK_BF16 = (
    (("h100", "pcie"), 756e12),  # H100 PCIe
    (("h100", "nvl"), 835e12),  # H100 NVL
    (("h100",), 989e12),  # H100 SXM, e.g. "NVIDIA H100 80GB HBM3"
    (("h200",), 989e12),  # H200 and GH200 (same compute as H100 SXM)
    (("h800",), 989e12),
    (("a100",), 312e12),  # all A100 variants, e.g. "NVIDIA A100-SXM4-80GB"
    (("tpu v4",), 275e12),
    (("tpu v5 lite",), 197e12),  # v5e
    (("tpu v5e",), 197e12),
    (("tpu v5",), 459e12),  # v5p ("TPU v5" or "TPU v5p")
    (("tpu v6 lite",), 918e12),  # v6e (Trillium)
    (("tpu v6e",), 918e12),
)
_HALF_DTYPES = ("bfloat16", "float16")


def forward_flops_by_group(config, seq_len: int, causal_average: bool = True) -> dict[str, float]:
  """Returns forward matmul FLOPs per token, split into groups, summed over all layers.

  The keys are "attention_projections" (q/k/v/o), "attention_scores" (q.k^T and probs.v),
  "mlp", and "lm_head". The values are FLOPs per token for one forward pass over sequences
  of `seq_len` tokens. See the module docstring for the conventions and for `causal_average`.
  """
  d, layers = int(config.hidden_size), int(config.num_layers)
  h, kv, hd = int(config.num_heads), int(config.num_kv_heads), head_dim(config)
  keys = seq_len / 2 if causal_average else float(seq_len)
  return {
      "attention_projections": layers * (2 * d * (h * hd + 2 * kv * hd) + 2 * h * hd * d),
      "attention_scores": layers * 2 * 2 * h * hd * keys,
      "mlp": layers * 3 * 2 * d * int(config.mlp_dim),
      "lm_head": 2 * d * int(config.vocab_size),
  }


def flops_per_token(config, seq_len: int, training: bool = True, causal_average: bool = True) -> float:
  """Returns model matmul FLOPs per token (FLOPs, not FLOP/s).

  For one forward pass when `training=False`, or for forward plus backward (3 x forward) when
  `training=True`. `seq_len` is the length of the sequences the tokens belong to (packed
  sequences: the row length). Rematerialisation is not counted, whatever `config.remat` says.
  """
  forward = sum(forward_flops_by_group(config, seq_len, causal_average).values())
  return float(3 * forward if training else forward)


def num_params_by_group(config) -> dict[str, int]:
  """Returns the parameter count per group, computed from the config without building the model.

  The keys are "embedding", "lm_head" (0 when tied to the embedding), "attention" (projections,
  biases, and q/k norms when `qk_norm`), "mlp", and "norms" (the layer norms and the final norm).
  The values sum to `count_params` of the initialised model.
  """
  d, layers, v = int(config.hidden_size), int(config.num_layers), int(config.vocab_size)
  h, kv, hd = int(config.num_heads), int(config.num_kv_heads), head_dim(config)
  attention = d * h * hd + 2 * d * kv * hd + h * hd * d
  if config.get("qkv_bias", False):
    attention += h * hd + 2 * kv * hd
  if config.get("out_bias", False):
    attention += d
  if config.get("qk_norm", False):  # one RMSNorm scale over head_dim for queries, one for keys
    attention += 2 * hd
  return {
      "embedding": v * d,
      "lm_head": 0 if config.tie_embeddings else d * v,
      "attention": layers * attention,
      "mlp": layers * 3 * d * int(config.mlp_dim),
      "norms": (2 * layers + 1) * d,
  }


def peak_flops_per_device(device=None, dtype: str = "bfloat16") -> float | None:
  """Returns the dense peak matmul throughput of one device, in FLOP/s, or None when unknown.

  `device` defaults to `jax.devices()[0]`. The peak is for bf16/fp16 inputs, the usual MFU
  denominator. It is None for CPUs, for accelerators not in the table, and for any other
  `dtype` (float32 throughput depends on TF32 or multi-pass settings). Without a peak, MFU
  is not reported.
  """
  if dtype not in _HALF_DTYPES:
    return None
  device = jax.devices()[0] if device is None else device
  if device.platform == "cpu":
    return None
  kind = str(device.device_kind).lower()
  for patterns, peak in _PEAK_BF16:
    if all(p in kind for p in patterns):
      return peak
  return None


def mfu(tokens_per_second_per_device: float, flops_per_token: float, peak: float) -> float:
  """Returns model FLOPs utilisation, a fraction (0.45 means 45%) of the device's peak.

  Arguments are tokens/s on one device, model FLOPs per token (from `flops_per_token`, with
  `training` matching the measured step) and the device's peak in FLOP/s.
  """
  if not peak or peak <= 0:
    raise ValueError(f"mfu: peak must be a positive FLOP/s, got {peak!r}")
  return tokens_per_second_per_device * flops_per_token / peak
