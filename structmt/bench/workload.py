"""The workload every attention benchmark runs, on CPU and GPU alike: one structure, its inputs, and
how a step is timed."""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from ..attention.structure import CandidateLayout, Structure


def bench_structure(heads: int, window: int, rare: int) -> Structure:
    """The structure every benchmarked path runs: band ``window`` and ``rare`` columns on every head."""
    return Structure(window=(window,) * heads, rare_heads=(True,) * heads, rare=rare)


def candidates_at(structure: Structure, length: int) -> int:
    """Keys per query a traffic floor counts over ``length`` keys: the candidates (the band cut to ``length - 1``,
    :meth:`CandidateLayout.of`), and never more than the ``length`` keys there are."""
    return min(CandidateLayout.of(structure, length).size, length)


def inputs(length: int, tokens: int, heads: int, dim: int, rare: int, seed: int = 0):
    """Random ``q, k, v`` ``(batch, heads, length, dim)`` with ``batch = tokens // length``, and
    ``(batch, rare)`` rare positions (repeats possible: the attention counts each once)."""
    gen = torch.Generator().manual_seed(seed)
    batch = max(1, tokens // length)
    q, k, v = (torch.randn(batch, heads, length, dim, generator=gen) for _ in range(3))
    rare_index = torch.randint(0, length, (batch, rare), generator=gen)
    return q, k, v, rare_index


def sync(device: str) -> None:
    """Wait for the device's queued work (a no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def median_time(step: Callable[[], Any], repeats: int, warmup: int, device: str) -> float:
    """Median seconds of ``step`` over ``repeats`` after ``warmup`` calls: CUDA events around each
    step on a GPU (from an idle stream, so host-side launch overhead counts), else the wall clock."""
    for _ in range(warmup):
        step()
    sync(device)
    times = []
    for _ in range(repeats):
        if torch.device(device).type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            begin = time.perf_counter()
            step()
            times.append(time.perf_counter() - begin)
    return statistics.median(times)


def raise_recompile_limits() -> None:
    """One compiled FlexAttention (and create_block_mask) serves every length and mode: allow the recompilations
    (past dynamo's limit, 8 shapes in torch 2.13, the call falls back to unfused eager Flex with a warning)."""
    import torch._dynamo

    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), 256))


@functools.cache
def compiled_flex() -> Callable[..., Any]:
    """FlexAttention compiled once for every shape (``dynamic=False``: the dynamic-shape CPU template fails to
    build), each length a recompilation within :func:`raise_recompile_limits`."""
    from torch.nn.attention.flex_attention import flex_attention

    raise_recompile_limits()
    return torch.compile(flex_attention, dynamic=False)
