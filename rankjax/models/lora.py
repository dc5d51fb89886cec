"""Low-rank adapters (LoRA, Hu et al. 2021, arXiv 2106.09685) on the decoder's linear projections.

A projection y = x W (W: rankjax's [*in_dims, *out_dims] kernel) becomes y = x W + (alpha / r) (x A) B, with
A [*in_dims, r] and B [r, *out_dims] stored beside W as "<name>_lora_a" and "<name>_lora_b". B starts at zero, so
step 0 is the base model exactly, and A gets no gradient until B has moved away from zero; A starts as PEFT's
does (uniform in +-1/sqrt(fan_in)), so a merged export and a PEFT adapter describe the same function.

Which projections get adapters: a regex (`LoraSpec.targets`) searched in "/"-joined parameter paths such as
"layer_3/attn/q" or "layer_0/mlp/down". Only the seven attention and MLP projections can take one; the embedding
and the LM head never do.
"""

from __future__ import annotations

import dataclasses
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rankjax.models.errors import ConfigError
from rankjax.models.tree_paths import build, items

SUFFIX_A, SUFFIX_B = "_lora_a", "_lora_b"
PROJECTIONS = ("attn/q", "attn/k", "attn/v", "attn/o", "mlp/gate", "mlp/up", "mlp/down")
DEFAULT_TARGETS = r"attn/(q|k|v|o)$|mlp/(gate|up|down)$"


@dataclasses.dataclass(frozen=True)
class LoraSpec:
  """The adapters of a model: rank r (0: none), scale alpha / r, the regex of target paths, dropout on the
  adapters' input (training only: applied where a "dropout" rng is passed to `apply`)."""

  rank: int = 0
  alpha: float = 16.0
  targets: str = DEFAULT_TARGETS
  dropout: float = 0.0

  @property
  def scale(self) -> float:
    return float(self.alpha) / int(self.rank)

  def applies_to(self, path: str) -> bool:
    """True when the projection at `path` ("layer_0/attn/q") carries an adapter."""
    return bool(self.rank) and any(path.endswith(p) for p in PROJECTIONS) and re.search(self.targets, path) is not None


def default_config():
  """Returns the run config's `lora` group: rank 0 (full fine-tuning) unless set."""
  import ml_collections  # noqa: PLC0415
  c = ml_collections.ConfigDict()
  c.rank = 0  # 0: no adapters, every parameter trains; r > 0: only the adapters train, the base is frozen
  c.alpha = 16.0  # the adapters' output is scaled by alpha / rank
  c.targets = DEFAULT_TARGETS  # regex searched in paths such as "layer_0/attn/q", "layer_0/mlp/down"
  c.dropout = 0.0  # on the adapters' input, training steps only
  # QLoRA: the frozen base's projection kernels stored "int8" (per output channel) or "nf4" (4-bit NormalFloat,
  # blocks of 64), dequantised to the compute dtype where used; "none" keeps them in param_dtype.
  c.quantize = "none"
  return c


def spec_from_config(config) -> LoraSpec | None:
  """The LoraSpec of a run config's `lora` group (None when rank is 0 or the group is absent)."""
  lora = config.get("lora") if hasattr(config, "get") else None
  if lora is None or int(lora.rank) == 0:
    return None
  return LoraSpec(int(lora.rank), float(lora.alpha), str(lora.targets), float(lora.dropout))


def projection_paths(model_config) -> list[str]:
  """Every path an adapter can attach to in a model of `model_config`, in layer order."""
  return [f"layer_{i}/{p}" for i in range(int(model_config.num_layers)) for p in PROJECTIONS]


def validate(lora, model_config) -> None:
  """Raises ConfigError naming the field for a `config.lora` group no run can use; a `targets` regex that matches
  no projection of this model names the paths it could match."""
  if int(lora.rank) < 0:
    raise ConfigError(f"config.lora.rank={lora.rank} must be >= 0 (0 = full fine-tuning, no adapters)")
  if int(lora.rank) == 0:
    if lora.get("quantize", "none") != "none":
      raise ConfigError(f"config.lora.quantize={lora.quantize!r} needs adapters (config.lora.rank > 0): a quantised "
                        "base is frozen, so without adapters nothing would train")
    return
  if not float(lora.alpha) > 0:
    raise ConfigError(f"config.lora.alpha={lora.alpha} must be > 0 (the adapters' scale is alpha / rank)")
  if lora.get("quantize", "none") not in ("none", "int8", "nf4"):
    raise ConfigError(f"config.lora.quantize={lora.quantize!r} is not one of ('none', 'int8', 'nf4')")
  if not 0.0 <= float(lora.dropout) < 1.0:
    raise ConfigError(f"config.lora.dropout={lora.dropout} must lie in [0, 1)")
  try:
    re.compile(lora.targets)
  except re.error as e:
    raise ConfigError(f"config.lora.targets={lora.targets!r} is not a regular expression: {e}") from e
  spec = LoraSpec(int(lora.rank), float(lora.alpha), str(lora.targets), float(lora.dropout))
  paths = projection_paths(model_config)
  if not any(spec.applies_to(p) for p in paths):
    raise ConfigError(f"config.lora.targets={lora.targets!r} matches no projection; it is searched in paths such as "
                      f"{', '.join(paths[:len(PROJECTIONS)])} (and the same under layer_1 .. "
                      f"layer_{len(paths) // len(PROJECTIONS) - 1}); the embedding and LM head never take adapters")


def _a_init(in_ndim: int):
  # PEFT's kaiming_uniform(a=sqrt(5)) on lora_A [r, fan_in]: uniform in +-1/sqrt(fan_in).
  return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform", in_axis=tuple(range(in_ndim)), out_axis=-1)


def adapter_delta(module: nn.Module, name: str, x: jax.Array, kernel_shape: tuple[int, ...], in_ndim: int,
                  kernel_axes: tuple, spec: LoraSpec | None, dtype, param_dtype) -> jax.Array | None:
  """(alpha / r) (x A) B for the projection `name` of `module` (kernel `kernel_shape`, its first `in_ndim` axes
  contracted with x's last ones), in `dtype`, or None when that projection carries no adapter. Declares the
  parameters name_lora_a [*in, r] and name_lora_b [r, *out] (logical axes: the kernel's, the rank unsharded)."""
  if spec is None or not spec.applies_to("/".join((*module.scope.path, name))):
    return None
  in_shape, out_shape = kernel_shape[:in_ndim], kernel_shape[in_ndim:]
  a = module.param(name + SUFFIX_A, nn.with_logical_partitioning(_a_init(in_ndim), (*kernel_axes[:in_ndim], None)),
                   (*in_shape, spec.rank), param_dtype)
  b = module.param(name + SUFFIX_B, nn.with_logical_partitioning(nn.initializers.zeros, (None, *kernel_axes[in_ndim:])),
                   (spec.rank, *out_shape), param_dtype)
  if spec.dropout and module.has_rng("dropout"):
    x = nn.Dropout(spec.dropout, deterministic=False)(x, rng=module.make_rng("dropout"))
  low = jnp.tensordot(x.astype(dtype), a.astype(dtype), axes=in_ndim)
  return jnp.tensordot(low, b.astype(dtype), axes=1) * jnp.asarray(spec.scale, dtype)


def is_adapter_path(path: tuple) -> bool:
  """True for the parameter path of an adapter factor."""
  return str(path[-1]).endswith((SUFFIX_A, SUFFIX_B))




def split(params) -> tuple[dict, dict]:
  """(base tree, adapter tree) of a LoRA model's parameter tree (nested dicts; either part may be empty)."""
  leaves = list(items(params))
  return (build((p, v) for p, v in leaves if not is_adapter_path(p)),
          build((p, v) for p, v in leaves if is_adapter_path(p)))


def combine(base, adapters) -> dict:
  """The full parameter tree of a LoRA model: `base` with the `adapters` inserted beside their kernels."""
  return build([*items(base), *items(adapters)])


def merged(base, adapters, spec: LoraSpec) -> dict:
  """`base` with each adapted kernel replaced by W + (alpha / r) A B, in W's dtype (product in float32): the
  parameters of the plain model that computes what the adapted one does."""
  adapter_items = dict(items(adapters))
  out = []
  for path, w in items(base):
    a = adapter_items.get(path[:-1] + (path[-1] + SUFFIX_A,))
    if a is not None:
      b = adapter_items[path[:-1] + (path[-1] + SUFFIX_B,)]
      delta = jnp.tensordot(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), axes=1) * spec.scale
      w = (jnp.asarray(w, jnp.float32) + delta).astype(w.dtype)
    out.append((path, w))
  return build(out)


def count_trainable(adapters) -> int:
  """The number of scalars in an adapter tree."""
  return sum(int(np.prod(x.shape)) for _, x in items(adapters))


def fingerprint(base) -> dict[str, list[float]]:
  """{path: [mean, root mean square]} of each base parameter (float32 reductions, as Python floats): what a
  resumed LoRA run compares to find out whether its frozen base is the one its adapters were trained on."""
  stats = jax.jit(lambda tree: jax.tree.map(
      lambda x: jnp.stack([jnp.mean(x.astype(jnp.float32)), jnp.sqrt(jnp.mean(jnp.square(x.astype(jnp.float32))))]),
      tree))(base)
  return {"/".join(map(str, path)): [float(v) for v in np.asarray(jax.device_get(s))] for path, s in items(stats)}


def fingerprint_differences(saved: dict, current: dict, rtol: float = 1e-3) -> list[str]:
  """The parameters whose statistics differ between two fingerprints (beyond `rtol`, relative to the RMS; a
  parameter present in one only counts too), each as "path: saved [mean, rms] vs now [mean, rms]"."""
  out = []
  for path in sorted(set(saved) | set(current)):
    a, b = saved.get(path), current.get(path)
    if a is None or b is None:
      out.append(f"{path}: {'absent' if a is None else a} when saved vs {'absent' if b is None else b} now")
      continue
    scale = max(abs(a[1]), abs(b[1]), 1e-12)
    if abs(a[0] - b[0]) > rtol * scale or abs(a[1] - b[1]) > rtol * scale:
      out.append(f"{path}: [mean, rms] {a} when saved vs {b} now")
  return out
