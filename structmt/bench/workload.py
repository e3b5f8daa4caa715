"""The workload every attention benchmark runs, on CPU and GPU alike: one structure and its inputs."""

from __future__ import annotations

import torch

from ..attention.structure import Structure


def bench_structure(heads: int, window: int, rare: int) -> Structure:
    """The structure every benchmarked path runs: band ``window`` and ``rare`` columns on every head."""
    return Structure(window=(window,) * heads, rare_heads=(True,) * heads, rare=rare)


def inputs(length: int, tokens: int, heads: int, dim: int, rare: int, seed: int = 0):
    """Random ``q, k, v`` ``(batch, heads, length, dim)`` with ``batch = tokens // length``, and
    ``(batch, rare)`` rare positions (repeats possible: the attention counts each once)."""
    gen = torch.Generator().manual_seed(seed)
    batch = max(1, tokens // length)
    q, k, v = (torch.randn(batch, heads, length, dim, generator=gen) for _ in range(3))
    rare_index = torch.randint(0, length, (batch, rare), generator=gen)
    return q, k, v, rare_index
