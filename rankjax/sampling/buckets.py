"""Prompt widths rounded up to a few sizes, so the decoders compile a bounded number of programs."""


def bucket_length(n: int, minimum: int = 16) -> int:
  """Returns the padded length (tokens) of a prompt of `n` tokens: the next multiple of `minimum` up to 8 * minimum;
  beyond that the next multiple of next_power_of_two(n) / 8, which gives 4 widths per doubling (5/8, 6/8, 7/8 and
  8/8 of the power of two).

  Padding: up to 8 * minimum, fewer than `minimum` tokens; beyond it, less than 1/5 of the padded length (less than
  1/4 of n), the worst just above a power of two: 129 -> 160 pads 31 tokens (19.4%), 2049 -> 2560 pads 511 (19.96%).
  Why: with step = next_power_of_two(n) / 8, n > 4 * step, so the padded length is >= 5 * step and the padding
  < step.
  """
  pow2 = 1 << max(int(n) - 1, 0).bit_length()
  step = max(minimum, pow2 // 8)
  return max(step, -(-int(n) // step) * step)
