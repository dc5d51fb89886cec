"""Generation from a model: the continuous-batching sampling engine and what it shares with the static baseline.

Modules: `config` (`SamplingConfig`), `engine` (`Engine`, `Request`, `Sample`, `engine_for`, `kv_cache_bytes`),
`generation` (`generate`: prompts in, continuations out, on the engine), `greedy` (`greedy_generate`), `keys`
(`sample_keys`: one PRNG key per benchmark, problem and sample), `finish` (`FINISH_STOP`, `FINISH_LENGTH`),
`buckets` (`bucket_length`), and the static-batch baseline the engine is tested and benchmarked against:
`static_batch` (`generate_tokens`, `filter_logits`, `sample_next`) and `static_sampler` (`Sampler` on a mesh).
Evaluation uses this package; it sits on floor 1, above `rankjax.models` and below `rankjax.eval` and
`rankjax.train`.

Reproducibility. Every sample draws its t-th token with fold_in(its key, t), so its random draws depend on its key
alone: not on the slot count, the slot it ran in, the batch size, the device count or its neighbours. Its logits
are the same up to float rounding only: a prompt is prefilled together with the prompts that enter slots at the
same moment (padded to the widest one's bucketed width, rows a power of two), the static decoder pads a whole batch
to its widest prompt, the decode batch has one row per slot, and the shapes of a matmul change how XLA orders its
sums. On the tiny float32 model of tests/test_engine.py (CPU), a prompt's first-token logits alone and with
neighbours differ by at most 1e-5 of the largest |logit| (measured: 2.2e-6 of it, 1.7e-5 absolute; the test checks
the 1e-5); bfloat16, or TF32 matmuls on GPUs, round more coarsely. A token changes only where that rounding flips
an argmax between two logits that close, or moves a draw across the boundary between two tokens' probabilities:
rare, but not impossible, so samples are equal "whatever the batching" up to such flips (on the test model none
flips: greedy and sampled tokens are equal alone and together). The same requests with the same slot count on the
same platform repeat exactly.
"""

from rankjax.sampling.buckets import bucket_length
from rankjax.sampling.config import SamplingConfig
from rankjax.sampling.engine import Engine, EngineStats, Request, Sample, engine_for, kv_cache_bytes
from rankjax.sampling.finish import FINISH_LENGTH, FINISH_STOP
from rankjax.sampling.generation import generate
from rankjax.sampling.greedy import greedy_generate
from rankjax.sampling.keys import sample_keys

__all__ = ["SamplingConfig", "Engine", "EngineStats", "Request", "Sample", "engine_for", "kv_cache_bytes",
           "generate", "greedy_generate", "sample_keys", "bucket_length", "FINISH_STOP", "FINISH_LENGTH"]
