"""Data: synthetic arithmetic word problems, a small byte-level BPE tokenizer, and SFT batching."""
