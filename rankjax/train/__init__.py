"""Training: run config, optimizer, the jit-able train step, the data stream, checkpoints, metrics and the loop.

Submodules are imported by name (`from rankjax.train import loop`); none is imported here.
"""
