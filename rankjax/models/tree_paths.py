"""Nested-dict parameter trees as (path tuple, leaf) pairs and back: what splitting a tree into parts (adapters,
quantised kernels) needs. A leaf is anything that is not a dict (an array, a QuantizedKernel)."""

from __future__ import annotations


def items(tree, prefix=()):
  """(path tuple, leaf) of every leaf of a nested-dict tree, in insertion order."""
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from items(v, prefix + (k,))
  else:
    yield prefix, tree


def build(pairs) -> dict:
  """The nested-dict tree of (path tuple, leaf) pairs."""
  out: dict = {}
  for path, leaf in pairs:
    node = out
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = leaf
  return out
