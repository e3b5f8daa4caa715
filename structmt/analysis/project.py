"""Projection of attention matrices onto the paper's structure families (Conti 2024), and the
random search of the thesis the paper comes from, as the baseline.

Families, as supports (a member ``X`` is any matrix supported inside one of them):

* Σ₁ (positional): one diagonal, offset -1, 0 or +1;
* Σ₂(w) (syntactic): the band ``|i - j| <= w``;
* Σ₃(w, r) (rare / "num-pos"): the band plus ``r`` whole columns.

Two projections, both the exact L1 optimum ``min |A - X|`` over a family:

* ``unconstrained``: ``X`` copies ``A`` on the support (its rows need not sum to 1), so the error
  of a support is the mass of ``A`` outside it;
* ``row_stochastic``: ``X`` is an attention matrix (``X >= 0``, rows summing to 1) supported on the
  structure.  A row then costs its mass outside plus ``|1 - mass inside|``: for a row of ``A`` that
  sums to 1, twice the mass outside (that mass is moved onto the support).  A row with an empty
  support (the last row of the +1 diagonal) has no such ``X``: the error is infinite.

In both the error adds up over rows and only grows with the mass outside, so the best member is the
largest support: the whole band for Σ₂, the band plus the ``r`` columns with the most mass outside
it for Σ₃ (column contributions add up, so the greedy choice is exact; row-stochastic only when
every row of ``A`` has mass at most 1, as attention rows and crops of them do, which
:func:`project` checks), the best of the three diagonals for Σ₁.  With the sparse term Ẽ
(:func:`error_with_sparse_term`) the columns and Ẽ compete for the same mass, so every choice of
``r`` columns is tried.  The supports come from the
same predicates as the attention kernels (:mod:`structmt.attention.structure`).

:func:`thesis_random_search` reimplements the baseline of the thesis (E. Conti, University of
Barcelona; github.com/EddieConti/Master-Thesis-UB, ``code experiments/Attn_approx.ipynb``): the best
of random, row-normalised members of its three families over a grid of two coefficients.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..attention.structure import ROLES, rare_sets, rarity_keys
from ..attention.structure import band as band_predicate

VARIANTS = ("unconstrained", "row_stochastic")
#: the thesis's coefficient grid, ``np.arange(0, 1.1, 0.1)``
THESIS_GRID = tuple(i / 10 for i in range(11))
#: random members per family and grid triple (c_d, c_v, c_sp) in the thesis's search: its loop also runs over c_v,
#: which no member uses, so 11 × 30 = 330 per (c_d, c_sp) pair there (``--draws 330``)
THESIS_DRAWS = 30


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


def rare_columns(a: Tensor, w: int, r: int) -> Tensor:
    """The ``r`` columns with the most mass outside the band ``|i - j| <= w`` (the L1-best choice)."""
    outside = (a * ~band_support(a.size(-1), w)).sum(0)
    return outside.topk(min(r, a.size(-1))).indices


def rare_columns_support(a: Tensor, w: int, r: int) -> Tensor:
    """Band ∪ :func:`rare_columns` (the exact L1 optimum over Σ₃(w, r): unconstrained, and row-stochastic for
    rows of ``a`` with mass at most 1)."""
    return _with_columns(band_support(a.size(-1), w), rare_columns(a, w, r).tolist())


def _with_columns(support: Tensor, cols: Sequence[int]) -> Tensor:
    out = support.clone()
    out[:, list(cols)] = True
    return out


def model_rare_sets(tokens: Tensor, counts: Tensor, never_rare: Tensor, r: int, causal: bool = False) -> Tensor:
    """``(T, r)``: the positions a structured model's rare-token heads see from each query of ``tokens`` (1-D):
    the ``r`` rarest tokens by corpus count, ties by position, special symbols never (-1 for none); of the
    whole sequence (an encoder), or with ``causal`` of each query's prefix (a decoder)."""
    keys = rarity_keys(tokens.view(1, -1), counts, never_rare)
    return rare_sets(keys, r, causal=causal)[0]


def model_rare_support(n: int, w: int, sets: Tensor) -> Tensor:
    """The keys a structured model's rare-token head sees: the band ``|i - j| <= w`` and, in row ``i``, the
    positions ``sets[i]`` (``(n, r)`` from :func:`model_rare_sets`, -1 for none)."""
    support = band_support(n, w).clone()
    rows, slots = (sets >= 0).nonzero(as_tuple=True)
    support[rows, sets[rows, slots]] = True
    return support


def support_distance(a: Tensor, support: Tensor, variant: str = "unconstrained") -> float:
    """Entrywise L1 distance from ``A`` to the best ``X`` supported on ``support``."""
    outside = (a * ~support).sum(-1)
    if variant == "unconstrained":
        return float(outside.sum())
    if variant != "row_stochastic":
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if not bool(support.any(-1).all()):
        return math.inf
    return float((outside + (1 - (a * support).sum(-1)).abs()).sum())


def error_with_sparse_term(
    a: Tensor, support: Tensor, k: int = 0, eps: float = math.inf, variant: str = "unconstrained"
) -> float:
    """L1 distance of ``A`` to its best ``P + Ẽ``: ``P`` on ``support``, ``Ẽ`` at most ``k`` more
    entries of at most ``eps`` each (``math.inf``: unbounded).

    Each entry of ``Ẽ`` takes ``min(a, eps)`` of an entry outside the support, so the best ``Ẽ`` is on
    the ``k`` largest of them.  ``row_stochastic``: ``P + Ẽ`` is an attention matrix; a row then costs
    its mass left outside plus ``|1 - mass kept|``, and the greedy choice is exact when every row of
    ``A`` has mass at most 1 (attention rows, or crops of them), which is checked.  ``Ẽ`` adds to the
    structure and does not replace it: a row with an empty support still has no such ``X``."""
    if k < 0 or not eps >= 0:  # a NaN eps is refused too
        raise ValueError(f"the sparse term Ẽ needs k >= 0 entries of at most eps >= 0, got k={k}, eps={eps}")
    if not k:
        return support_distance(a, support, variant)
    outside = a * ~support
    flat = outside.flatten()
    captured = torch.zeros_like(flat)
    top = flat.topk(min(k, flat.numel())).indices
    captured[top] = flat[top].clamp(max=eps)
    kept = captured.view_as(a).sum(-1)
    if variant == "unconstrained":
        return float((outside.sum(-1) - kept).sum())
    if variant != "row_stochastic":
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    _check_row_mass(a)
    if not bool(support.any(-1).all()):
        return math.inf
    return float((outside.sum(-1) - kept + (1 - (a * support).sum(-1) - kept).abs()).sum())


def _check_row_mass(a: Tensor) -> None:
    if float(a.sum(-1).max()) > 1 + 1e-5:
        raise ValueError(
            "row-stochastic projections are exact for rows of A with mass at most 1 (attention rows, or crops of "
            f"them); a row of A has mass {float(a.sum(-1).max()):.4g}"
        )


def check_matrix(a: Tensor, variant: str) -> None:
    """``a`` is one square attention matrix (or crop): finite, non-negative, not all zero; row-stochastic
    projections also need rows of mass at most 1."""
    if a.dim() != 2 or a.size(0) != a.size(1) or a.numel() == 0:
        raise ValueError(f"A must be one square n × n matrix (no batch dimensions), got shape {tuple(a.shape)}")
    if not bool(torch.isfinite(a).all()) or bool((a < 0).any()):
        raise ValueError("A must hold finite, non-negative attention weights")
    if not float(a.sum()) > 0:
        raise ValueError("A holds no attention mass (all zero)")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if variant == "row_stochastic":
        _check_row_mass(a)


@dataclass
class Fit:
    role: str
    distance: float  # L1 |A - X|
    per_entry: float  # |A - X| / n²
    mass_inside: float  # share of A's mass inside the support
    support: Tensor


def project(
    a: Tensor, w: int, r: int, k: int = 0, eps: float = math.inf, variant: str = "unconstrained"
) -> dict[str, Fit]:
    """Best member of Σ₁, Σ₂(w) and Σ₃(w, r) for one matrix ``a`` (checked: :func:`check_matrix`); with ``k``:
    plus the sparse term Ẽ (:func:`error_with_sparse_term`)."""
    check_matrix(a, variant)
    if w < 0 or r < 0:
        raise ValueError(f"the band half-width w and the column count r must be >= 0, got w={w}, r={r}")
    n = a.size(-1)

    def dist(support: Tensor) -> float:
        return error_with_sparse_term(a, support, k, eps, variant)

    positional = min((diagonal_support(n, d) for d in (-1, 0, 1)), key=dist)
    band = band_support(n, w)
    if k:  # the columns and Ẽ compete for the same mass: try every choice of r columns
        choices = itertools.combinations(range(n), min(r, n))
        rare = min((_with_columns(band, cols) for cols in choices), key=dist)
    else:
        rare = rare_columns_support(a, w, r)
    supports = {"positional": positional, "syntactic": band, "rare": rare}
    return {role: fit(a, role, support, dist(support)) for role, support in supports.items()}


def fit(a: Tensor, role: str, support: Tensor, distance: float) -> Fit:
    """The :class:`Fit` of ``a`` on ``support``, at L1 distance ``distance``."""
    return Fit(role, distance, distance / a.size(-1) ** 2, float((a * support).sum()) / float(a.sum()), support)


def model_role(a: Tensor, w: int, sets: Tensor, pos_window: int, share: float = 0.9) -> str:
    """The role (:func:`best_role`) a structured model's head would take for ``a``, each role scored on the keys
    such a head sees: the positional role on the band ``|i - j| <= pos_window`` (``--struct-pos-window``; not
    Σ₁'s best single diagonal), the syntactic on the band ``|i - j| <= w``, the rare-token role on
    :func:`model_rare_support` with ``sets`` (not the L1-best columns of Σ₃, in trained models mostly the EOS
    column, which no rare-token head sees). In a decoder ``a`` is causal: the bands' upper halves hold no mass."""
    if pos_window < 0:
        raise ValueError(f"the positional heads' band half-width must be >= 0, got pos_window={pos_window}")
    n = a.size(-1)
    fits = project(a, w, 0)  # Σ₂(w); its Σ₁ and Σ₃ are replaced below
    positional = band_support(n, pos_window)
    fits["positional"] = fit(a, "positional", positional, support_distance(a, positional))
    support = model_rare_support(n, w, sets)
    fits["rare"] = fit(a, "rare", support, support_distance(a, support))
    return best_role(fits, share).role


def best_role(fits: dict[str, Fit], share: float = 0.9) -> Fit:
    """The simplest family (Σ₁, then Σ₂, then Σ₃) that captures at least ``share`` of the
    attention mass the best family captures (the larger families always fit at least as well)."""
    if not 0 <= share <= 1:
        raise ValueError(f"share must lie in [0, 1] (a share of the best family's mass), got {share}")
    best = max(f.mass_inside for f in fits.values())
    return next(fits[r] for r in ROLES if fits[r].mass_inside >= share * best)


# --- the thesis's random search ------------------------------------------------------------


def _thesis_noise(m: int, n: int, gen: torch.Generator) -> Tensor:
    """``scipy.sparse.random(n, n, density=1/n)`` with its diagonal set to 0, ``m`` times:
    ``n`` values U(0, 1) at distinct random positions, those on the diagonal dropped."""
    positions = torch.rand(m, n * n, generator=gen).topk(n, dim=-1).indices
    noise = torch.zeros(m, n * n).scatter_(1, positions, torch.rand(m, n, generator=gen)).view(m, n, n)
    return noise * ~torch.eye(n, dtype=torch.bool)


def thesis_starts(m: int, n: int, w: int, num_pos: int, gen: torch.Generator) -> Tensor:
    """``(m, num_pos)`` 0-based starts of the thesis's vertical segments (``generate_positions``):
    drawn one by one, uniformly among ``0 .. n - w`` at least ``w`` from those already drawn
    (the thesis redraws until one fits; a member left with no room is drawn again)."""
    check_segments(n, w, num_pos)
    candidates = torch.arange(n - w + 1)
    out = torch.empty(m, num_pos, dtype=torch.long)
    todo = torch.arange(m)
    while todo.numel():
        chosen = torch.empty(todo.numel(), 0, dtype=torch.long)
        stuck = torch.zeros(todo.numel(), dtype=torch.bool)
        for _ in range(num_pos):
            free = ((candidates.view(1, 1, -1) - chosen.unsqueeze(-1)).abs() >= w).all(1)
            stuck |= ~free.any(-1)
            score = torch.rand(free.shape, generator=gen).masked_fill(~free, -1.0)
            chosen = torch.cat([chosen, score.argmax(-1, keepdim=True)], dim=1)
        out[todo[~stuck]] = chosen[~stuck]
        todo = todo[stuck]
    return out


def check_segments(n: int, w: int, num_pos: int) -> None:
    """``num_pos`` vertical segments of ``w`` rows, at least ``w`` apart, fit in ``n`` rows (the thesis's Σ₃
    needs ``w >= 1`` and ``num_pos >= 0``)."""
    if w < 1 or num_pos < 0:
        raise ValueError(f"the thesis's vertical segments need w >= 1 and num-pos >= 0, got w={w}, num-pos={num_pos}")
    if (num_pos - 1) * w > n - w:
        raise ValueError(f"no {num_pos} segments of length {w} at least {w} apart fit in {n} rows")


def vertical_columns(n: int, w: int, starts: Tensor) -> Tensor:
    """Column of each row's one structural entry in a thesis Σ₃ member: the diagonal, except rows
    ``s .. s+w-1`` of a segment starting at ``s``, which point at column ``s``.  ``starts``:
    ``(m, num_pos)``; returns ``(m, n)``."""
    cols = torch.arange(n).repeat(starts.size(0), 1)
    for s in starts.T:
        rows = s.unsqueeze(1) + torch.arange(w)
        cols.scatter_(1, rows, s.unsqueeze(1).expand(-1, w))
    return cols


def thesis_members(
    role: str,
    n: int,
    w: int,
    num_pos: int,
    c_d: Tensor,
    c_sp: Tensor,
    gen: torch.Generator,
    rare_noise: float = 0.5,
) -> Tensor:
    """One random member of a thesis family per coefficient pair, ``(m, n, n)``, rows normalised
    (a row left empty is NaN, as in the thesis, where such a member never wins):

    * positional (``creatediagonal``): diagonal ``1 - 0.1 U`` plus ``c_sp`` × noise;
    * syntactic (``createsintact``): each entry of the band ``|i - j| <= w`` kept with probability
      0.6, values U(0.7, 1), plus ``c_sp`` × noise;
    * rare (``raretoken``): diagonal ``c_d`` × U(0.7, 1) with ``num_pos`` vertical segments
      (:func:`vertical_columns`), plus ``rare_noise`` × noise;

    noise being :func:`_thesis_noise` (``n`` entries U(0, 1), none on the diagonal)."""
    m = c_d.numel()
    if role == "positional":
        x = torch.diag_embed(1 - 0.1 * torch.rand(m, n, generator=gen)) + c_sp.view(-1, 1, 1) * _thesis_noise(m, n, gen)
    elif role == "syntactic":
        keep = band_support(n, w) & (torch.rand(m, n, n, generator=gen) >= 0.4)
        values = 0.7 + 0.3 * torch.rand(m, n, n, generator=gen)
        x = keep * values + c_sp.view(-1, 1, 1) * _thesis_noise(m, n, gen)
    elif role == "rare":
        diagonal = c_d.view(-1, 1) * (0.7 + 0.3 * torch.rand(m, n, generator=gen))
        cols = vertical_columns(n, w, thesis_starts(m, n, w, num_pos, gen))
        x = torch.zeros(m, n, n).scatter_(2, cols.unsqueeze(-1), diagonal.unsqueeze(-1))
        x = x + rare_noise * _thesis_noise(m, n, gen)
    else:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    return x / x.sum(-1, keepdim=True)


@dataclass
class ThesisSearch:
    per_entry: float  # best |A - X| / n² over the grid and the three families
    role: str  # the family of the best member
    c_d: float
    c_sp: float
    by_role: dict[str, float]  # best |A - X| / n² of each family


def thesis_random_search(
    a: Tensor, w: int, num_pos: int, draws: int = THESIS_DRAWS, seed: int = 0, grid: tuple[float, ...] = THESIS_GRID
) -> list[ThesisSearch]:
    """The thesis's baseline (``grid_search_distances``): for each pair ``(c_d, c_sp)`` of the grid,
    ``draws`` random members of each family (:func:`thesis_members`); the L1-closest of all.

    ``a``: ``(h, n, n)``, one result per matrix; the matrices of one call are compared with the same
    members (the thesis drew new ones for each matrix: each result has the same distribution)."""
    if a.dim() != 3:
        raise ValueError(f"A must be a stack of h square matrices (h, n, n), got shape {tuple(a.shape)}")
    for matrix in a:
        check_matrix(matrix, "unconstrained")
    h, n = a.size(0), a.size(-1)
    check_segments(n, w, num_pos)
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    gen = torch.Generator().manual_seed(seed)
    g = torch.tensor(grid, dtype=torch.float64)
    c_d = g.repeat_interleave(len(grid) * draws)  # pairs (c_d, c_sp) in order, draws innermost
    c_sp = g.repeat_interleave(draws).repeat(len(grid))
    dist = {}
    for role in ROLES:
        x = thesis_members(role, n, w, num_pos, c_d.float(), c_sp.float(), gen)
        dist[role] = torch.cdist(x.flatten(1), a.flatten(1).float(), p=1).nan_to_num(nan=math.inf)  # (m, h)
    out = []
    for i in range(h):
        best = {role: int(d[:, i].argmin()) for role, d in dist.items()}
        by_role = {role: float(dist[role][j, i]) / n**2 for role, j in best.items()}
        role = min(ROLES, key=by_role.__getitem__)
        out.append(ThesisSearch(by_role[role], role, float(c_d[best[role]]), float(c_sp[best[role]]), by_role))
    return out


def thesis_family_optimum(a: Tensor, role: str, w: int, num_pos: int) -> float:
    """Exact L1 distance (not per entry) from ``A`` (rows summing to 1) to the nearest row-stochastic
    matrix shaped like a member of a thesis family: its structure (diagonal, band, or diagonal with
    vertical segments at any allowed starts) plus up to ``n`` off-diagonal noise entries.  No member
    :func:`thesis_members` draws can be closer.  ``A`` is checked (:func:`check_matrix`, row-stochastic)."""
    check_matrix(a, "row_stochastic")
    n = a.size(-1)
    if role == "positional":
        structures = [diagonal_support(n, 0)]
    elif role == "syntactic":
        if w < 0:
            raise ValueError(f"the band half-width w must be >= 0, got {w}")
        structures = [band_support(n, w)]
    elif role == "rare":
        check_segments(n, w, num_pos)
        starts = [
            s
            for s in itertools.combinations(range(n - w + 1), num_pos)
            if all(b - c >= w for c, b in itertools.pairwise(s))
        ]
        cols = vertical_columns(n, w, torch.tensor(starts).view(len(starts), num_pos))
        structures = [torch.nn.functional.one_hot(c, n).bool() for c in cols]
    else:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    off_diagonal = ~torch.eye(n, dtype=torch.bool)
    best = math.inf
    for structure in structures:
        # the noise's n entries lie off the diagonal and off the structure: the largest of A there (a masked
        # entry filled with 0 could tie with A's zeros and be taken, putting a moved diagonal entry back)
        allowed = (~structure & off_diagonal).flatten()
        values = torch.where(allowed, a.flatten(), -math.inf)
        noise = values.topk(min(n, int(allowed.sum()))).indices
        support = structure.flatten().clone()
        support[noise] = True
        best = min(best, support_distance(a, support.view(n, n), "row_stochastic"))
    return best
