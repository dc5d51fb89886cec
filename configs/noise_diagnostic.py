"""The paper's noise diagnostic (its Table 1): 0.8% noise tokens injected into SFT responses; which share of
each weighting family's top 10% of tokens is noise (token precision), which share of the noise it puts there
(token recall) and how many noisy sequences it reaches (sequence hit rate).

python -m rankjax.diagnostics.noise --config=configs/noise_diagnostic.py --workdir=/tmp/noise_demo \
    --config.checkpoint=workdirs/demo/base
python -m rankjax.diagnostics.noise --config=configs/noise_diagnostic.py --workdir=/tmp/noise_gsm8k \
    --config.checkpoint=/tmp/gsm8k_tiny --config.data.source=gsm8k --config.data.files.manual_dir=../shared/data/gsm8k
python -m rankjax.diagnostics.noise --config=configs/noise_diagnostic.py --workdir=/tmp/noise_hf \
    --config.checkpoint=/path/to/Qwen2.5-Math-7B --config.data.source=numina_math_cot \
    --config.data.files.manual_dir=/path/to/numina --config.data.prompt_format=chat --config.num_examples=500

PATH: an HF checkpoint directory or a rankjax workdir (its corpus and prompt format are the default data; see
rankjax/diagnostics/noise_data.py). Options: --config.noise.mode=replace, --config.noise.pool=corpus,
--config.noise.rate=0.02, --config.loss.expected_rank=sort, --config.top_fraction=0.05.
"""

from rankjax.diagnostics.noise import default_config


def get_config():
  config = default_config()
  config.lock()
  return config
