"""Evaluation: greedy decoding with a KV cache and exact-match answer accuracy."""
