"""Projection of attention matrices onto the paper's structure families (Conti 2024).

For a weight matrix ``A`` (``n × n``, rows summing to 1) and a family Σ of
supports, the L1-best member ``X = P + Ẽ`` is found exactly, not by sampling:

* inside a support the best ``P`` copies ``A`` (values are free), so the
  error of a support is the mass of ``A`` outside it;
* Σ₁ (positional): one diagonal, offset -1, 0 or +1 — the best of the three;
* Σ₂(w) (syntactic): the band ``|i - j| <= w`` (switching blocks off never
  lowers L1 error, so the whole band is optimal);
* Σ₃(w, r) (rare / "num-pos"): the band plus the ``r`` columns holding the
  most mass outside the band (column contributions add up, so the greedy
  choice is exact);
* Ẽ: the ``k`` largest remaining entries, each absorbing at most ``eps``.

The supports come from the same predicates as the attention kernels
(:mod:`structmt.attention.structure`).  :func:`random_search` is the paper's
procedure (best of ``draws`` random members per family) as a baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..attention.structure import band as band_predicate

ROLES = ("positional", "syntactic", "rare")


def _grid(n: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    zero = torch.zeros((), dtype=torch.long)
    return zero, zero, torch.arange(n).view(n, 1), torch.arange(n).view(1, n)


def band_support(n: int, w: int) -> Tensor:
    """``|i - j| <= w`` as an ``n × n`` bool matrix (the kernels' band predicate)."""
    b, h, q, kv = _grid(n)
    return band_predicate(torch.tensor([w]))(b, h, q, kv)


def diagonal_support(n: int, offset: int) -> Tensor:
    i, j = torch.arange(n).view(n, 1), torch.arange(n).view(1, n)
    return j - i == offset


def rare_columns_support(a: Tensor, w: int, r: int) -> Tensor:
    """Band ∪ the ``r`` columns with the most mass outside the band (exact L1 optimum)."""
    support = band_support(a.size(-1), w)
    if r > 0:
        outside = (a * ~support).sum(0)
        cols = outside.topk(min(r, a.size(-1))).indices
        support = support.clone()
        support[:, cols] = True
    return support


def error_with_sparse_term(a: Tensor, support: Tensor, k: int = 0, eps: float = 0.0) -> float:
    """Entrywise L1 distance of ``A`` to its best ``P + Ẽ`` with ``P`` on ``support``."""
    outside = (a * ~support).flatten()
    total = float(outside.sum())
    if k and eps:
        total -= float(outside.topk(min(k, outside.numel())).values.clamp(max=eps).sum())
    return total


@dataclass
class Fit:
    role: str
    distance: float  # L1 |A - X|
    per_entry: float  # |A - X| / n²
    mass_inside: float  # share of A's mass inside the support
    support: Tensor


def project(a: Tensor, w: int, r: int, k: int = 0, eps: float = 0.0) -> dict[str, Fit]:
    """Best member of Σ₁, Σ₂(w) and Σ₃(w, r) for one matrix."""
    n = a.size(-1)
    positional = min((diagonal_support(n, d) for d in (-1, 0, 1)), key=lambda s: error_with_sparse_term(a, s))
    supports = {"positional": positional, "syntactic": band_support(n, w), "rare": rare_columns_support(a, w, r)}
    fits = {}
    for role, support in supports.items():
        d = error_with_sparse_term(a, support, k, eps)
        fits[role] = Fit(role, d, d / n**2, float((a * support).sum()) / float(a.sum()), support)
    return fits


def best_role(fits: dict[str, Fit], share: float = 0.9) -> Fit:
    """The simplest family (Σ₁, then Σ₂, then Σ₃) that captures at least ``share`` of the
    attention mass the best family captures (the larger families always fit at least as well)."""
    best = max(f.mass_inside for f in fits.values())
    return next(fits[r] for r in ROLES if fits[r].mass_inside >= share * best)


def _random_member(n: int, role: str, w: int, r: int, gen: torch.Generator) -> Tensor:
    """A random member of a family: a random support inside it with random stochastic rows."""
    if role == "positional":
        support = diagonal_support(n, int(torch.randint(-1, 2, (1,), generator=gen)))
    else:
        offsets = [d for d in range(-w, w + 1) if d == 0 or torch.rand(1, generator=gen) < 0.7]
        support = torch.zeros(n, n, dtype=torch.bool)
        for d in offsets:
            support |= diagonal_support(n, d)
        if role == "rare" and r:
            support[:, torch.randperm(n, generator=gen)[:r]] = True
    values = torch.rand(n, n, generator=gen) * support
    return values / values.sum(-1, keepdim=True).clamp(min=1e-12)


def random_search(a: Tensor, w: int, r: int, draws: int = 30, seed: int = 0) -> dict[str, float]:
    """The paper's procedure: per family, the best of ``draws`` random members (error per entry)."""
    gen = torch.Generator().manual_seed(seed)
    n = a.size(-1)
    return {
        role: min(float((a - _random_member(n, role, w, r, gen)).abs().sum()) / n**2 for _ in range(draws))
        for role in ROLES
    }
