"""Rotary position embeddings (the half-split layout used by Llama/Qwen checkpoints)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from rankjax.models.config import head_dim


def inverse_frequencies(head_dim: int, theta: float, scaling: str = "none", factor: float = 8.0,
                        low_freq_factor: float = 1.0, high_freq_factor: float = 4.0,
                        original_max_positions: int = 8192) -> np.ndarray:
  """The head_dim // 2 rotation frequencies (radians per position), float32.

  `scaling="llama3"` is Llama 3.1's long-context rule: wavelengths longer than
  original_max_positions / low_freq_factor are slowed by `factor`, wavelengths shorter than
  original_max_positions / high_freq_factor are kept, and the band between interpolates
  linearly in original_max_positions / wavelength.
  """
  inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
  if scaling == "none":
    return inv_freq.astype(np.float32)
  if scaling != "llama3":
    raise ValueError(f"rope scaling {scaling!r} is not supported (supported: 'none', 'llama3')")
  wavelength = 2 * math.pi / inv_freq
  ramp = (original_max_positions / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor)
  ramp = np.clip(ramp, 0.0, 1.0)  # 0: long wavelengths (slowed by factor), 1: short ones (kept)
  scaled = (1 - ramp) * inv_freq / factor + ramp * inv_freq
  return scaled.astype(np.float32)


def rope_frequencies(config) -> np.ndarray:
  """`inverse_frequencies` for a model config."""
  return inverse_frequencies(head_dim(config), config.rope_theta, config.rope_scaling, config.rope_scaling_factor,
                             config.rope_low_freq_factor, config.rope_high_freq_factor,
                             config.rope_original_max_positions)


def rotary_angles(positions: jax.Array, inv_freq: np.ndarray) -> tuple[jax.Array, jax.Array]:
  """cos and sin of position * inv_freq, each [..., T, 2 * len(inv_freq)] float32 (frequencies repeated twice)."""
  angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
  angles = jnp.concatenate([angles, angles], axis=-1)
  return jnp.cos(angles), jnp.sin(angles)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotates x [B, T, H, D] by angles cos/sin [B, T, D]; returns x's dtype."""
  half = x.shape[-1] // 2
  xf = x.astype(jnp.float32)
  rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
  out = xf * cos[:, :, None, :] + rotated * sin[:, :, None, :]
  return out.astype(x.dtype)
