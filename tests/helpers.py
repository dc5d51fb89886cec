"""Small configs shared by the tests."""

from rankjax import losses
from rankjax.train.config import base_config, with_overrides


def tiny_run_config(**overrides):
  """A run config small enough to compile and train in seconds on CPU."""
  c = base_config()
  c.model.vocab_size = 400
  c.model.hidden_size = 32
  c.model.num_layers = 2
  c.model.num_heads = 4
  c.model.num_kv_heads = 2
  c.model.mlp_dim = 64
  c.data.synthetic.num_pretrain = 300
  c.data.synthetic.num_finetune = 200
  c.data.synthetic.num_eval = 20
  c.data.seq_len = 96
  c.data.batch_size = 8
  c.optimizer.learning_rate = 3e-3
  c.optimizer.warmup_fraction = 0.2
  c.total_steps = 6
  c.log_every = 1
  c.checkpoint_every = 3
  c.progress = False
  c.loss.diagnostics = False
  c.lock()
  return with_overrides(c, overrides)


def loss_config(**fields):
  """`losses.default_config()` with `fields` set; E[R] exact ("sort") unless `fields` say otherwise,
  since most tests compare with the exact float64 reference."""
  return with_overrides(losses.default_config(), {"expected_rank": "sort", **fields})
