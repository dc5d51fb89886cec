"""rankjax: supervised fine-tuning of decoder-only LMs in JAX with token-level loss reweighting."""

__version__ = "0.1.0"
