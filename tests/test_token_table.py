"""The notebook helper: one row per supervised token, consistent with the loss library."""

import jax
import numpy as np

from rankjax import losses, models
from rankjax.data import synthetic
from rankjax.data.bpe import train_bpe
from rankjax.data.formatting import Formatter
from rankjax.eval.token_table import format_table, token_table, weights_html


def test_token_table_rows_match_response():
  examples = synthetic.make_examples(synthetic.FINETUNE_FAMILIES, 50, seed=0)
  tok = train_bpe([e.prompt + e.response for e in examples], 300)
  c = models.default_config()
  c.vocab_size, c.hidden_size, c.num_layers, c.mlp_dim = 300, 32, 1, 64
  model = models.build_model(c)
  params = models.init_params(model, jax.random.PRNGKey(0))
  record = synthetic.as_records(examples[:1], "finetune")[0]
  rows = token_table(model, params, Formatter(tok), record, losses.default_config())
  assert "".join(r["token"] for r in rows) == examples[0].response + "<eos>"
  for r in rows:
    assert 1 <= r["rank"] <= 300 and 1.0 <= r["expected_rank"] <= 150.5 + 1e-3
    np.testing.assert_allclose(r["prob"], np.exp(r["log_prob"]), rtol=1e-6)
  assert len(format_table(rows).splitlines()) == len(rows) + 1
  assert weights_html(rows).count("<span") == len(rows)
