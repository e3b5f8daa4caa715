"""Projection onto Σ against brute force, the rare columns against the model's rare tokens, the
thesis's random search as described, and the report's quote of the thesis."""

import argparse
import itertools
import json
import math
import os
import re
import shutil
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TASK, build, make_dict_dir, write_split
from scipy.optimize import linprog

from structmt.analysis.extract import SentenceAttention
from structmt.analysis.project import (
    ROLES,
    THESIS_GRID,
    VARIANTS,
    band_support,
    best_role,
    diagonal_support,
    error_with_sparse_term,
    model_rare_sets,
    project,
    rare_columns,
    support_distance,
    thesis_family_optimum,
    thesis_members,
    thesis_random_search,
    thesis_starts,
    vertical_columns,
)


def _attention(n: int, seed: int, columns: int = 0) -> torch.Tensor:
    """A peaked random attention matrix; ``columns`` random columns get extra weight in every row."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, n, generator=gen) * 2
    if columns:
        logits[:, torch.randperm(n, generator=gen)[:columns]] += 2.5
    return torch.softmax(logits, dim=-1).double()


def _lp_distance(
    a: torch.Tensor, support: torch.Tensor, variant: str, capped: tuple[int, ...] = (), eps: float = math.inf
) -> float:
    """min |A - X|₁ over X supported on ``support`` by linear programming (independent of the closed form):
    variables x (the support's entries) and t >= |a - x| (all entries).  ``capped``: flat indices of
    further entries X may use with values at most ``eps`` (the sparse term Ẽ)."""
    a_, s = a.numpy().ravel(), support.numpy().ravel().copy()
    s[list(capped)] = True
    n2, inside = a_.size, np.flatnonzero(s)
    k = inside.size
    # t_e >= a_e - x_e and t_e >= x_e - a_e on the support; t_e = a_e outside it (x = 0 there)
    c = np.concatenate([np.zeros(k), np.ones(n2)])
    rows, rhs = [], []
    for i, e in enumerate(inside):
        for sign in (1, -1):
            row = np.zeros(k + n2)
            row[i], row[k + e] = sign, -1
            rows.append(row)
            rhs.append(sign * a_[e])
    low = 0 if variant == "row_stochastic" else None
    lower = [(low, eps if e in capped else None) for e in inside] + [(0, None)] * n2
    for e in np.flatnonzero(~s):
        lower[k + e] = (a_[e], a_[e])
    eq, beq = None, None
    if variant == "row_stochastic":
        n = a.size(0)
        eq = np.zeros((n, k + n2))
        for i, e in enumerate(inside):
            eq[e // n, i] = 1
        beq = np.ones(n)
    res = linprog(c, A_ub=np.array(rows) if rows else None, b_ub=rhs or None, A_eq=eq, b_eq=beq, bounds=lower)
    return res.fun if res.status == 0 else math.inf


@pytest.mark.parametrize("variant", VARIANTS)
def test_distance_of_a_support_is_the_linear_programs(variant):
    gen = torch.Generator().manual_seed(0)
    for seed in range(6):
        a = _attention(5, seed)
        support = torch.rand(5, 5, generator=gen) < 0.4
        if seed == 0:
            support[2] = False  # an empty row: no row-stochastic X
        assert support_distance(a, support, variant) == pytest.approx(_lp_distance(a, support, variant), abs=1e-7)
    heavy = _attention(5, 3) / 0.9  # rows of mass 1/0.9 (the thesis's crops after dropout): X scales them down
    for support in (band_support(5, 1), torch.ones(5, 5, dtype=torch.bool)):
        assert support_distance(heavy, support, variant) == pytest.approx(
            _lp_distance(heavy, support, variant), abs=1e-7
        )
    a = _attention(5, 9)
    assert support_distance(a, band_support(5, 1), "row_stochastic") == pytest.approx(
        2 * support_distance(a, band_support(5, 1), "unconstrained")
    )


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("w, r", [(0, 1), (1, 2), (2, 1)])
def test_projection_is_the_brute_force_optimum_over_each_family(variant, w, r):
    n = 6
    for seed in range(3):
        a = _attention(n, seed, columns=r + 1)
        fits = project(a, w, r, variant=variant)
        diagonals = [diagonal_support(n, d) for d in (-1, 0, 1)]
        assert fits["positional"].distance == pytest.approx(min(_lp_distance(a, s, variant) for s in diagonals))
        assert fits["syntactic"].distance == pytest.approx(_lp_distance(a, band_support(n, w), variant))
        members = []
        for size in range(r + 1):
            for cols in itertools.combinations(range(n), size):
                s = band_support(n, w).clone()
                s[:, list(cols)] = True
                members.append(s)
        assert fits["rare"].distance == pytest.approx(min(_lp_distance(a, s, variant) for s in members), abs=1e-7)


def test_the_plus_one_diagonal_is_the_next_token_and_leaves_the_last_row_without_a_row_stochastic_x():
    assert diagonal_support(3, 1).int().tolist() == [[0, 1, 0], [0, 0, 1], [0, 0, 0]]
    assert diagonal_support(3, -1).int().tolist() == [[0, 0, 0], [1, 0, 0], [0, 1, 0]]
    assert support_distance(_attention(3, 0), diagonal_support(3, 1), "row_stochastic") == math.inf


@pytest.mark.parametrize("variant", VARIANTS)
def test_no_part_of_the_band_beats_the_whole_band(variant):
    n, w = 3, 1
    band = band_support(n, w)
    entries = band.nonzero().tolist()
    for seed in range(2):
        a = _attention(n, seed)
        best = math.inf
        for keep in itertools.product((False, True), repeat=len(entries)):
            s = torch.zeros(n, n, dtype=torch.bool)
            for (i, j), k in zip(entries, keep, strict=True):
                s[i, j] = k
            best = min(best, _lp_distance(a, s, variant))
        assert project(a, w, 0, variant=variant)["syntactic"].distance == pytest.approx(best, abs=1e-7)


@pytest.mark.parametrize("seed", range(3))
def test_members_of_sigma_are_recovered_with_zero_error_and_the_right_role(seed):
    n, w, r = 16, 3, 2
    gen = torch.Generator().manual_seed(seed)

    def stochastic(support):
        values = (torch.rand(support.shape, generator=gen) + 0.5) * support
        return values / values.sum(-1, keepdim=True)

    cols = band_support(n, w).clone()
    cols[:, [2, 11]] = True
    rare = stochastic(cols)
    rare[:, [2, 11]] *= 20  # the columns carry much of the mass, as rare-token heads do
    rare = rare / rare.sum(-1, keepdim=True)
    for a, role in ((stochastic(diagonal_support(n, 0)), "positional"), (stochastic(band_support(n, w)), "syntactic")):
        for variant in VARIANTS:
            assert project(a, w, r, variant=variant)[role].distance == pytest.approx(0.0, abs=1e-5)
        assert best_role(project(a, w, r)).role == role
    assert sorted(rare_columns(rare, w, r).tolist()) == [2, 11]
    assert best_role(project(rare, w, r)).role == "rare"


def test_a_share_of_one_takes_the_simplest_family_that_holds_all_the_best_mass():
    """``share=1`` (no slack) is allowed: it names the simplest family that captures as much mass as the best one,
    a band-stochastic head syntactic, a diagonal one positional."""
    n, w = 8, 2
    band = band_support(n, w).float()
    diagonal = diagonal_support(n, 0).float()
    assert best_role(project(band / band.sum(-1, keepdim=True), w, 1), share=1.0).role == "syntactic"
    assert best_role(project(diagonal, w, 1), share=1.0).role == "positional"


def test_the_share_reaches_the_model_role_and_a_share_of_zero_takes_the_simplest_family():
    """95% of each row on the token itself, 5% on the next: positional at the default share 0.9, syntactic at 1
    (only the band of w = 1 holds all of it); ``share=0`` is allowed and always names the simplest family."""
    from structmt.analysis.project import model_role

    n = 8
    a = 0.95 * diagonal_support(n, 0).double() + 0.05 * diagonal_support(n, 1).double()
    a[-1, -1] = 1.0
    no_rare = torch.full((n, 1), -1)
    assert model_role(a, 1, no_rare, pos_window=0) == "positional"
    assert model_role(a, 1, no_rare, pos_window=0, share=1.0) == "syntactic"
    assert best_role(project(a, 1, 1), share=0.0).role == "positional"


def test_an_empty_rare_slot_adds_no_column_to_the_rare_support():
    """A query with fewer rare tokens than columns (-1 in its set) sees its band and its rare tokens only: the
    -1 is never read as the last position."""
    from structmt.analysis.project import model_rare_support

    sets = torch.tensor([[-1], [3], [-1], [-1]])
    assert model_rare_support(4, 0, sets).int().tolist() == [[1, 0, 0, 0], [0, 1, 0, 1], [0, 0, 1, 0], [0, 0, 0, 1]]
    first = torch.tensor([[-1], [-1], [0], [-1]])  # position 0 is a rare token's column like any other
    assert model_rare_support(4, 0, first)[2].tolist() == [True, False, True, False]


def test_sparse_error_term_lowers_error_by_at_most_k_eps():
    for seed in range(20):
        a = _attention(16, seed)
        plain = project(a, 1, 0)["syntactic"].distance
        with_e = project(a, 1, 0, k=8, eps=0.05)["syntactic"].distance
        outside = (a * ~band_support(16, 1)).flatten().sort(descending=True).values
        assert with_e == pytest.approx(plain - float(outside[:8].clamp(max=0.05).sum()))
        assert plain - 8 * 0.05 - 1e-9 <= with_e < plain
        # rows summing to 1: the mass Ẽ keeps no longer has to be moved, so row-stochastic is twice unconstrained
        stochastic = project(a, 1, 0, k=8, eps=0.05, variant="row_stochastic")["syntactic"].distance
        assert stochastic == pytest.approx(2 * with_e)
    with pytest.raises(ValueError, match="mass at most 1"):
        project(a * 1.5, 1, 0, k=8, variant="row_stochastic")
    with pytest.raises(ValueError, match="k >= 0 entries of at most eps >= 0, got k=-1"):
        project(a, 1, 0, k=-1)
    small = _attention(3, 0)  # more columns than the matrix has: all of them
    assert project(small, 0, 5, k=1, variant="row_stochastic")["rare"].distance == pytest.approx(0.0, abs=1e-6)


def test_a_matrix_the_projection_is_not_exact_for_is_refused():
    """Row-stochastic with a row of mass above 1: the greedy column choice is not the optimum there (this A's
    best column is 2, at distance 0.6; greedy takes column 1, at 1.6), so the projection refuses it."""
    a = torch.tensor([[1.0, 0.6, 0.0], [0.0, 0.5, 0.5], [0.0, 0.0, 1.0]])
    assert project(a, 0, 1)["rare"].distance == pytest.approx(0.5)  # unconstrained: exact whatever the mass
    with pytest.raises(ValueError, match="a row of A has mass 1.6"):
        project(a, 0, 1, variant="row_stochastic")
    good = _attention(4, 0)
    for bad, message in [
        (torch.stack([good, good]), r"one square n × n matrix \(no batch dimensions\), got shape \(2, 4, 4\)"),
        (good[:1], r"got shape \(1, 4\)"),
        (good - 0.5, "finite, non-negative"),
        (good.masked_fill(torch.eye(4, dtype=torch.bool), float("nan")), "finite, non-negative"),
        (torch.zeros(4, 4), "no attention mass"),
    ]:
        with pytest.raises(ValueError, match=message):
            project(bad, 1, 1)
    for w, r in [(-1, 1), (1, -1)]:
        with pytest.raises(ValueError, match="must be >= 0"):
            project(good, w, r)
    heavier = good.clone()
    heavier[1] *= 1.001  # just above 1: refused as well
    with pytest.raises(ValueError, match="a row of A has mass 1.001"):
        project(heavier, 1, 1, variant="row_stochastic")
    with pytest.raises(ValueError, match="a row of A has mass 1.6"):  # the sparse term checks on its own too
        error_with_sparse_term(a, band_support(3, 0), k=1, variant="row_stochastic")


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("eps", [0.2, math.inf])
def test_projection_with_the_sparse_term_is_the_brute_force_optimum(variant, eps):
    """Every family plus every choice of at most k further entries of at most eps, each solved as a
    linear program: the projection with Ẽ finds the best of them (its columns included)."""
    n, w, r, k = 4, 0, 1, 2

    def brute_force(a, structures):
        best = math.inf
        for s in structures:
            if variant == "row_stochastic" and not s.any(-1).all():
                continue  # Ẽ adds to the structure: a row without a structured key has no attention matrix
            free = (~s).flatten().nonzero().flatten().tolist()
            for size in range(k + 1):
                for e in itertools.combinations(free, size):
                    best = min(best, _lp_distance(a, s, variant, e, eps))
        return best

    # column 1 has the most mass outside the band, but Ẽ can take its two entries: column 3 is the best pick
    crafted = torch.tensor(
        [[0.35, 0.4, 0, 0.25], [0, 0.75, 0, 0.25], [0, 0.4, 0.35, 0.25], [0.05, 0, 0.05, 0.9]], dtype=torch.float64
    )
    for a in (_attention(n, 0, columns=2), _attention(n, 1, columns=2), crafted):
        fits = project(a, w, r, k, eps, variant)
        diagonals = [diagonal_support(n, d) for d in (-1, 0, 1)]
        columns = [band_support(n, w).clone() for _ in range(n)]
        for j, s in enumerate(columns):
            s[:, j] = True
        assert fits["positional"].distance == pytest.approx(brute_force(a, diagonals), abs=1e-7)
        assert fits["syntactic"].distance == pytest.approx(brute_force(a, [band_support(n, w)]), abs=1e-7)
        assert fits["rare"].distance == pytest.approx(brute_force(a, columns), abs=1e-7)


def test_one_entry_of_the_sparse_term_already_changes_which_column_is_best():
    """k = 1: column 0 has the most mass outside the diagonal, all in one entry Ẽ can take; column 3's is spread
    over three rows. The best pick is column 3 (Ẽ takes column 0's entry), leaving nothing outside. The fits'
    mass inside is a share of A's mass; more columns than the matrix has is all of them, with or without Ẽ."""
    a = torch.tensor([[0.8, 0, 0, 0.2], [0.6, 0.2, 0, 0.2], [0, 0, 0.85, 0.15], [0, 0, 0, 1.0]], dtype=torch.float64)
    assert rare_columns(a, 0, 1).tolist() == [0]  # the greedy choice without Ẽ
    for variant in VARIANTS:
        rare = project(a, 0, 1, k=1, variant=variant)["rare"]
        assert rare.distance == pytest.approx(0.0, abs=1e-12) and rare.support[:, 3].all()
    fits = project(a, 0, 1)
    assert fits["syntactic"].mass_inside == pytest.approx(2.85 / 4)
    assert fits["rare"].mass_inside == pytest.approx(3.45 / 4)
    for k in (0, 1):
        everything = project(a, 0, 5, k=k)["rare"]
        assert everything.support.all() and everything.distance == 0.0 and everything.mass_inside == 1.0


def test_rare_columns_are_the_columns_of_the_rare_tokens_a_structured_model_sees(dict_dir):
    """The analysis picks the columns with the most attention outside the band; on a structured model
    (zero outside band ∪ rare columns) they must be the positions of the rarest tokens."""
    from structmt.analysis.extract import _Recorder
    from structmt.attention.structure import rarity_tables

    w, r = 2, 2
    task, model = build(
        dict_dir,
        "structured_transformer_tiny",
        *("--encoder-attention-heads", "4", "--decoder-attention-heads", "4"),
        *("--encoder-embed-dim", "32", "--decoder-embed-dim", "32"),
        *("--struct-heads", "pos:1,syn:2,rare:1", "--struct-window", str(w), "--struct-rare", str(r)),
    )
    counts, never_rare = rarity_tables(task.source_dictionary)
    assert torch.equal(counts, model.encoder.token_counts) and torch.equal(never_rare, model.encoder.never_rare)
    gen = torch.Generator().manual_seed(0)
    src = torch.stack([torch.randperm(40, generator=gen)[:12] + 4 for _ in range(3)])  # distinct symbols w0..w39
    src[:, -1] = task.source_dictionary.eos()
    # the dictionary's counts fall with the symbol's index: the rarest tokens have the largest ids
    expected = [set(row[:-1].topk(r).indices.tolist()) for row in src]
    for b in range(src.size(0)):
        assert set(model_rare_sets(src[b], counts, never_rare, r)[0].tolist()) == expected[b]
    recorders = [_Recorder(layer.self_attn) for layer in model.encoder.layers]
    try:
        with torch.no_grad():
            model(src, torch.full((src.size(0),), src.size(1)), torch.randint(4, 44, (src.size(0), 9)))
        checked = 0
        for rec in recorders:
            structure = rec.module.structure
            for h, is_rare in enumerate(structure.rare_heads):
                if is_rare:
                    for b in range(src.size(0)):
                        assert set(rare_columns(rec.weights[h, b], structure.window[h], r).tolist()) == expected[b]
                        checked += 1
        assert checked >= src.size(0)
    finally:
        for rec in recorders:
            rec.remove()


def test_the_rare_support_is_what_a_structured_models_rare_heads_attend_to(dict_dir):
    """model_rare_support of model_rare_sets holds every key a rare-token head of a structured model gives weight:
    the encoder's (the sequence's rarest tokens) and the decoder's (each query's prefix's), so the roles chosen
    on it are roles such a head can play."""
    from structmt.analysis.extract import _recording
    from structmt.analysis.project import model_rare_sets, model_rare_support
    from structmt.attention.structure import rarity_tables

    w, r = 1, 2
    task, model = build(
        dict_dir,
        "structured_transformer_tiny",
        *("--struct-heads", "rare:2", "--struct-window", str(w), "--struct-rare", str(r)),
    )
    counts, never_rare = rarity_tables(task.source_dictionary)
    assert torch.equal(counts, rarity_tables(task.target_dictionary)[0])  # the decoder's are the same here
    gen = torch.Generator().manual_seed(1)
    src = torch.randint(4, 44, (2, 10), generator=gen)
    src[:, -1] = task.source_dictionary.eos()
    prev = torch.randint(4, 44, (2, 9), generator=gen)
    prev[:, 0] = task.target_dictionary.eos()
    with torch.no_grad(), _recording(model) as recorders:
        model(src, torch.full((2,), 10), prev)
    for block, tokens, causal in (("encoder", src, False), ("decoder", prev, True)):
        for rec in recorders[block]:
            for b in range(2):
                sets = model_rare_sets(tokens[b], counts, never_rare, r, causal)
                outside = rec.weights[:, b] * ~model_rare_support(tokens.size(1), w, sets)
                assert outside.abs().max() == 0, (block, b)
                narrower = model_rare_support(tokens.size(1), w, sets[:, :1])  # one column fewer: weight outside
                assert (rec.weights[:, b] * ~narrower).abs().max() > 0


def test_a_head_whose_mass_outside_the_band_is_on_eos_is_syntactic_for_a_structured_model():
    """Σ₃'s L1-best column is EOS here, and Σ₃ fits best; but a rare-token head sees the rarest tokens' columns,
    never EOS: such a head gains nothing over syn, whose role it takes. Mass on the rare tokens' columns: rare."""
    from structmt.analysis.project import model_rare_sets, model_role

    n, w = 12, 1
    band = band_support(n, w).float()
    tokens = torch.arange(10, 10 + n)
    tokens[-1] = 2  # EOS, never rare
    counts = torch.arange(100, 0, -1)  # the larger the id, the rarer
    never = torch.zeros(100, dtype=torch.bool)
    never[2] = True
    sets = model_rare_sets(tokens, counts, never, 1)
    assert sets[0].tolist() == [n - 2]  # the rarest token: the last before EOS
    eos_sink = 0.8 * band / band.sum(-1, keepdim=True)
    eos_sink[:, -1] += 0.2
    assert best_role(project(eos_sink, w, 1)).role == "rare"  # the L1-best column: EOS
    assert model_role(eos_sink, w, sets, pos_window=0) == "syntactic"
    on_rare = 0.8 * band / band.sum(-1, keepdim=True)
    on_rare[:, n - 2] += 0.2
    assert model_role(on_rare, w, sets, pos_window=0) == "rare"
    # the decoder: row i sees its prefix's rarest token (here the token at i), another column than the whole
    # sequence's rarest
    causal = model_rare_sets(tokens[:-1], counts, never, 1, causal=True)
    assert causal[:, 0].tolist() == list(range(n - 1))


def test_a_head_is_positional_when_the_band_a_positional_head_sees_holds_its_mass():
    """A structured model's positional head sees the band |i - j| <= --struct-pos-window, not one diagonal. Scored
    on Σ₁'s best single diagonal, a head spread over the previous, current and next token was named syntactic at
    the default window 1, and a previous-token head positional at window 0 (whose positional head sees the token
    itself alone)."""
    from structmt.analysis.project import model_role

    n, w = 12, 3
    no_rare = torch.full((n, 2), -1)  # no query has a rare-token column
    spread = band_support(n, 1).float()
    spread /= spread.sum(-1, keepdim=True)
    assert best_role(project(spread, w, 2)).role == "syntactic"  # no single diagonal holds 90% of it
    assert model_role(spread, w, no_rare, pos_window=1) == "positional"
    assert model_role(spread, w, no_rare, pos_window=0) == "syntactic"
    previous = diagonal_support(n, -1).float()
    previous[0, 0] = 1  # the first token has no previous one: it attends to itself
    assert model_role(previous, w, no_rare, pos_window=0) == "syntactic"
    assert model_role(previous, w, no_rare, pos_window=1) == "positional"
    causal = spread.tril()  # a decoder head on the previous and the current token
    causal /= causal.sum(-1, keepdim=True)
    assert model_role(causal, w, no_rare, pos_window=1) == "positional"
    wider = band_support(n, 2).float()  # the band of 2 holds it, the band of 1 three fifths of it
    wider /= wider.sum(-1, keepdim=True)
    assert model_role(wider, w, no_rare, pos_window=1) == "syntactic"
    assert model_role(wider, w, no_rare, pos_window=2) == "positional"
    with pytest.raises(ValueError, match="band half-width must be >= 0, got pos_window=-1"):
        model_role(spread, w, no_rare, pos_window=-1)


def test_the_analysis_loads_a_model_with_the_kernel_that_runs_anywhere(tmp_path, monkeypatch):
    """A model trained with --struct-impl triton failed to load for the analysis on a CPU (Triton's interpreter
    needed); the weights are the same from every kernel, so the analysis loads it with auto."""
    from structmt.analysis import report

    def load_model(checkpoint, data_dir, **overrides):
        raise KeyboardInterrupt(overrides)

    monkeypatch.setattr(report, "load_model", load_model)
    with pytest.raises(KeyboardInterrupt) as loaded:
        report.analyze(tmp_path / "c.pt", tmp_path, "test", tmp_path / "out")
    assert loaded.value.args == ({"struct_impl": "auto"},)


def test_the_page_says_which_rule_chose_its_roles_and_for_which_positional_band(tmp_path, monkeypatch, capsys):
    """analysis.json records the rule and the (w, r, positional band) the roles were chosen for; the page says so,
    pages of the earlier rules keep their own sentence, an unknown rule is refused, and --pos-window reaches the
    analysis (a negative one is refused by the command line)."""
    from structmt.analysis import report

    def spread(n):  # every query on the previous, current and next token (in the decoder: previous and current)
        band = band_support(n, 1).float()
        return band / band.sum(-1, keepdim=True)

    sentences = _sentences((16, 12), layers=1, heads=1)
    for s in sentences:
        s.weights = {"encoder": [spread(s.src_len)[None]], "decoder": [_causal(spread(s.tgt_len))[None]]}
    roles = {
        window: report.summarise(sentences, _RARITY, tmp_path, draws=1, pos_window=window)["roles"] for window in (0, 1)
    }
    assert roles == {0: {"encoder": ["syn:1"], "decoder": ["syn:1"]}, 1: {"encoder": ["pos:1"], "decoder": ["pos:1"]}}
    result = report.summarise(_sentences((16, 12), layers=1, heads=1), _RARITY, tmp_path, draws=1, pos_window=2)
    assert (result["role_rule"], result["role_setting"]) == (report.ROLE_RULE, {"w": 3, "r": 2, "pos_window": 2})
    sentence = report.roles_chosen(result)
    assert (
        "pos the band |i − j| ≤ 2 (`--struct-pos-window 2`), syn the band |i − j| ≤ 3, rare that band and the 2 "
        in sentence
    )
    assert sentence in report.markdown(
        result | {"checkpoint": "c.pt", "data": "bin", "subset": "test", "seconds": 1.0}, "c"
    )
    earlier = report.roles_chosen({"role_rule": report.RARE_COLUMNS_RULE})
    assert "earlier rule: the pos role scored on the best single diagonal" in earlier
    assert "the columns with the most mass outside the band" in report.roles_chosen({})
    with pytest.raises(ValueError, match="names the role rule 'a later rule', which this code does not know"):
        report.roles_chosen({"role_rule": "a later rule"})
    seen = {}
    monkeypatch.setattr(report, "analyze", lambda *a, **k: seen.update(k) or {"seconds": 0})
    monkeypatch.setattr(report, "write_report", lambda *a, **k: None)
    monkeypatch.setattr("structmt.console.setup", lambda verbose=False: None)
    ckpt = tmp_path / "c.pt"
    ckpt.write_bytes(b"")
    (tmp_path / "bin").mkdir()
    data = make_dict_dir(tmp_path / "bin")
    write_split(data)  # the split it analyses
    report.main([str(ckpt), str(data), "--pos-window", "0", "--out-dir", str(tmp_path / "out")])
    assert seen["pos_window"] == 0
    # roles chosen on a split the pipeline scores are said to be (test by default: the committed analyses')
    with pytest.warns(UserWarning, match=r"^the roles \(roles.json\) are chosen on the test split, which the pipel"):
        report.main([str(ckpt), str(data), "--out-dir", str(tmp_path / "out")])
    assert seen["pos_window"] == 1  # the structured model's default, --struct-pos-window 1
    write_split(data, "valid")
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        report.main([str(ckpt), str(data), "--subset", "valid", "--out-dir", str(tmp_path / "out")])
    assert [w for w in said if "the roles (roles.json) are chosen" in str(w.message)] == []
    with pytest.raises(SystemExit):
        report.main([str(ckpt), str(data), "--pos-window", "-1"])
    assert "argument --pos-window: must be >= 0, got -1" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # seed · 2³² + i stays a valid torch seed
        report.main([str(ckpt), str(data), "--seed", str(2**31)])
    assert f"argument --seed: must be <= {2**31 - 1}, got {2**31}" in capsys.readouterr().err
    write_split(data, "test1")  # the pipeline scores every test* split
    with pytest.warns(UserWarning, match=r"^the roles \(roles.json\) are chosen on the test1 split"):
        report.main(
            [str(ckpt), str(data), "--subset", "test1", "--draws", "2", "--seed", "3", "--out-dir", str(tmp_path)]
        )
    assert (seen["draws"], seen["seed"]) == (2, 3)


# --- the thesis's random search ---------------------------------------------------------------


def test_thesis_random_search_is_seeded():
    a = torch.stack([_attention(8, s).float() for s in range(3)])
    first = thesis_random_search(a, 3, 2, draws=5, seed=4)
    assert first == thesis_random_search(a, 3, 2, draws=5, seed=4)
    assert first != thesis_random_search(a, 3, 2, draws=5, seed=5)
    assert all(s.role in ROLES and s.per_entry == s.by_role[s.role] == min(s.by_role.values()) for s in first)
    assert THESIS_GRID == tuple(round(x, 1) for x in np.arange(0, 1.1, 0.1))  # the thesis's grid, 0 to 1 included


def test_thesis_random_search_keeps_the_l1_closest_member_of_all():
    """The search kept only a lower bound in the tests (never below the exact optimum): picking the farthest
    member passed. The identity is itself a member (a positional one without noise, c_sp = 0): found at distance
    0. On random matrices each family's result is the smallest |A - X| summed over the members, recomputed here
    entry by entry from the same draws."""
    n, grid, draws = 8, (0.0, 0.5, 1.0), 3
    (eye,) = thesis_random_search(torch.eye(n)[None], 2, 1, draws=draws, seed=5, grid=grid)
    assert (eye.per_entry, eye.role, eye.c_sp) == (0.0, "positional", 0.0)
    a = torch.stack([_attention(n, s).float() for s in range(2)])
    got = thesis_random_search(a, 2, 1, draws=draws, seed=5, grid=grid)
    gen = torch.Generator().manual_seed(5)
    pairs = [(c_d, c_sp) for c_d in grid for c_sp in grid for _ in range(draws)]
    c_d, c_sp = (torch.tensor([p[i] for p in pairs]) for i in (0, 1))
    members = {role: thesis_members(role, n, 2, 1, c_d, c_sp, gen) for role in ROLES}
    for i, result in enumerate(got):
        for role, x in members.items():
            distances = [float((m - a[i]).abs().sum()) for m in x if not torch.isnan(m).any()]
            assert result.by_role[role] == pytest.approx(min(distances) / n**2, rel=1e-5)


@pytest.mark.parametrize("role", ROLES)
def test_thesis_members_are_row_stochastic(role):
    gen = torch.Generator().manual_seed(1)
    coeff = torch.tensor([0.1, 0.5, 1.0]).repeat(100)
    x = thesis_members(role, 16, 3, 2, coeff, coeff, gen)
    rows = x.sum(-1)
    finite = ~torch.isnan(rows)  # a Σ₂ row can lose its whole band and get no noise: NaN, as in the thesis
    assert role == "syntactic" or finite.all()
    assert finite.float().mean() > 0.99 and torch.all(x.nan_to_num() >= 0)
    torch.testing.assert_close(rows[finite], torch.ones_like(rows[finite]))


def test_thesis_members_with_an_empty_row_are_nan_as_in_the_thesis():
    gen = torch.Generator().manual_seed(2)
    zero = torch.zeros(50)
    x = thesis_members("rare", 16, 3, 2, zero, zero, gen)  # c_d = 0: only the noise is left
    assert torch.isnan(x).any()
    rows = x.sum(-1)
    assert torch.all(torch.isnan(rows) | ((rows - 1).abs() < 1e-5))
    best = thesis_random_search(_attention(16, 0).float()[None], 3, 2, draws=3)[0]
    assert math.isfinite(best.per_entry)


def test_thesis_positional_and_syntactic_members_have_the_thesis_shape():
    n, w, m = 16, 3, 400
    gen = torch.Generator().manual_seed(3)
    zero, one = torch.zeros(m), torch.ones(m)
    diagonal = thesis_members("positional", n, w, 2, zero, zero, gen)
    torch.testing.assert_close(diagonal, torch.eye(n).expand(m, n, n))
    band = thesis_members("syntactic", n, w, 2, zero, zero, gen)
    nonzero = band.nan_to_num() > 0
    assert not torch.any(nonzero & ~band_support(n, w))
    kept = nonzero[:, band_support(n, w)].float().mean()
    assert abs(float(kept) - 0.6) < 0.02  # entries dropped with probability 0.4
    noisy = thesis_members("positional", n, w, 2, zero, one, gen)
    off = (noisy > 0) & ~torch.eye(n, dtype=torch.bool)
    per_member = off.sum((-2, -1))
    assert per_member.max() <= n and abs(float(per_member.float().mean()) - (n - 1)) < 0.5


def test_thesis_rare_members_are_a_diagonal_with_vertical_segments():
    n, w, num_pos, m = 16, 3, 2, 300
    gen = torch.Generator().manual_seed(4)
    x = thesis_members("rare", n, w, num_pos, torch.ones(m), torch.zeros(m), gen, rare_noise=0.0)
    assert torch.all((x > 0).sum(-1) == 1)  # one entry per row
    cols = x.argmax(-1)
    for member in cols.tolist():
        starts = [c for c in range(n) if member.count(c) > 1]
        assert len(starts) == num_pos and all(b - a >= w for a, b in itertools.pairwise(starts))
        for row, col in enumerate(member):
            in_segment = [s for s in starts if s <= row < s + w]
            assert col == (in_segment[0] if in_segment else row)
    starts = thesis_starts(2000, n, w, num_pos, gen)
    assert starts.min() == 0 and starts.max() == n - w  # every start 0 .. n-w is drawn
    assert torch.all((starts[:, 0] - starts[:, 1]).abs() >= w)
    with pytest.raises(ValueError, match="fit"):
        thesis_starts(1, n, 10, 2, gen)


def test_thesis_segments_may_start_exactly_w_apart_and_a_member_left_without_room_is_drawn_again():
    """Starts 0 .. 4 of 2 segments of 3 rows in 7: the pairs at least 3 apart are (0, 3), (0, 4) and (1, 4), all
    drawn; a first start of 2 leaves no room for the second (that member is drawn again). 6 rows: an exact fit."""
    gen = torch.Generator().manual_seed(6)
    drawn = thesis_starts(300, 7, 3, 2, gen).sort(-1).values
    assert {tuple(s) for s in drawn.tolist()} == {(0, 3), (0, 4), (1, 4)}
    assert thesis_starts(5, 6, 3, 2, gen).sort(-1).values.tolist() == [[0, 3]] * 5


def test_thesis_members_values_lie_in_the_thesiss_ranges():
    """Σ₂'s kept band entries are U(0.7, 1) (no noise: a row keeps their ratios); Σ₃'s structural entry is
    c_d × U(0.7, 1) and its noise 0.5 × U(0, 1) whatever c_sp, so with c_d = 1 no noise entry exceeds 0.5 / 0.7 of
    the row's largest entry, and with c_sp = 0 there is noise still."""
    n, w, m = 16, 3, 300
    gen = torch.Generator().manual_seed(7)
    zero, one = torch.zeros(m), torch.ones(m)
    band = thesis_members("syntactic", n, w, 2, zero, zero, gen).nan_to_num()
    high = band.amax(-1)
    low = band.masked_fill(band == 0, math.inf).amin(-1)
    assert torch.all(low[high > 0] >= 0.7 * high[high > 0] - 1e-6)
    rare = thesis_members("rare", n, w, 2, one, zero, gen)
    top = rare.topk(2, dim=-1).values
    assert torch.all(top[..., 1] <= 0.5 / 0.7 * top[..., 0] + 1e-6)
    assert float((rare > 0).sum((-2, -1)).float().mean()) > n + n / 2  # n structural entries and the noise


@pytest.mark.parametrize("seed", range(4))
def test_thesis_random_search_never_beats_the_exact_optimum_of_its_families(seed):
    n = 8
    a = torch.stack([_attention(n, seed).float(), _attention(n, seed + 10, columns=2).float()])
    for w, num_pos in ((3, 2), (2, 1)):
        for i, found in enumerate(thesis_random_search(a, w, num_pos, draws=30, seed=seed)):
            for role in ROLES:
                exact = thesis_family_optimum(a[i].double(), role, w, num_pos) / n**2
                assert found.by_role[role] >= exact - 1e-6


@pytest.mark.parametrize("role", ROLES)
def test_the_exact_family_optimum_equals_brute_force_on_a_sparse_matrix(role):
    """Every support a member can have: its structure plus any n entries off the diagonal and off the
    structure. On a matrix with exact zeros, masked entries once tied with them and a moved diagonal entry
    came back as noise: A = I scored 2 at w=3 where every member costs 4."""
    n, w, num_pos = 4, 3, 1
    eye, shifted = torch.eye(n, dtype=torch.float64), torch.zeros(n, n, dtype=torch.float64)
    shifted[torch.arange(n), (torch.arange(n) + 1) % n] = 1.0
    for a in (eye, shifted, 0.5 * eye + 0.5 * shifted):
        if role == "positional":
            structures = [torch.eye(n, dtype=torch.bool)]
        elif role == "syntactic":
            structures = [band_support(n, w)]
        else:
            cols = vertical_columns(n, w, torch.tensor([[s] for s in range(n - w + 1)]))
            structures = [torch.nn.functional.one_hot(c, n).bool() for c in cols]
        best = math.inf
        for structure in structures:
            free = [i for i in range(n * n) if not structure.flatten()[i] and i % (n + 1)]  # off the diagonal
            for k in range(min(n, len(free)) + 1):
                for noise in itertools.combinations(free, k):
                    support = structure.flatten().clone()
                    support[list(noise)] = True
                    best = min(best, support_distance(a, support.view(n, n), "row_stochastic"))
        assert thesis_family_optimum(a, role, w, num_pos) == pytest.approx(best, abs=1e-12)
    if role == "rare":  # each segment moves two rows' diagonal entries into its first column: 2 per row
        assert thesis_family_optimum(eye, role, w, num_pos) == 4.0


@pytest.mark.parametrize("role", ROLES)
def test_every_thesis_member_is_inside_the_family_the_exact_optimum_searches(role):
    gen = torch.Generator().manual_seed(5)
    n, w, num_pos = 10, 3, 2
    coeff = torch.tensor([0.3, 1.0]).repeat(3)
    members = [x for x in thesis_members(role, n, w, num_pos, coeff, coeff, gen).double() if not x.isnan().any()]
    assert len(members) >= 4
    for member in members:
        assert thesis_family_optimum(member, role, w, num_pos) == pytest.approx(0.0, abs=1e-5)
    assert vertical_columns(6, 2, torch.tensor([[0, 3]])).tolist() == [[0, 0, 2, 3, 3, 5]]


# --- the report ------------------------------------------------------------------------------


def _pattern(n: int, targets: list[int]) -> torch.Tensor:
    """An attention matrix whose row ``i`` sends all its weight to column ``targets[i]``."""
    return torch.nn.functional.one_hot(torch.tensor(targets), n).float()


def test_role_mix_is_each_heads_majority_role_on_its_blocks_own_rare_sets():
    """What roles.json holds, and later models are built from: exact mixes from heads built by hand. Before, the
    tests compared the file with itself: a minority vote, whole-sequence rare sets in the decoder, and the rare
    columns counted on the wrong tokens all passed."""
    from structmt.analysis.report import grid, head_table, role_mix

    n, counts, never = 6, torch.full((20,), 100), torch.zeros(20, dtype=torch.bool)
    never[:4] = True  # fairseq's special symbols, EOS (2) among them
    counts[9], counts[11], counts[16] = 1, 5, 1
    src = torch.tensor([5, 6, 7, 8, 9, 2])  # the rarest source token, 9, at position 4; EOS last
    diag, band = torch.eye(n), torch.stack([torch.eye(n).roll(s, 1) for s in (-1, 0, 1)]).mean(0).tril(1).triu(-1)
    band = band / band.sum(-1, keepdim=True)
    rare = _pattern(n, [4] * n)  # every query on the rarest token's column
    eos = _pattern(n, [5] * n)  # every query on EOS, which no rare-token head sees
    layouts = [[[diag, band, rare], [band, diag, eos]]] * 2 + [[[rare, band, diag], [band, diag, eos]]]
    sentences = [
        SentenceAttention(i, n, n, {"encoder": [torch.stack(heads) for heads in layers]}, src, src)
        for i, layers in enumerate(layouts)
    ]
    # head 0.0: positional twice, rare once; 0.2: rare twice, positional once; EOS is no rare-token column (syn).
    # Positional heads see the diagonal alone (pos_window 0), syntactic ones the band of w = 1
    mix = role_mix(sentences, "encoder", 1, 1, (counts, never), pos_window=0)
    assert mix == ["pos:1,syn:1,rare:1", "syn:1,pos:1,syn:1"]
    table = {
        h["head"]: h
        for h in head_table(sentences[:2], "encoder", 1, 1, draws=1, rarity=(counts, never, 2), pos_window=0)
    }
    assert (table["0.2"]["role"], table["0.2"]["rare_token_columns"], table["0.2"]["eos_column"]) == ("rare", 1, 0)
    assert (table["1.2"]["role"], table["1.2"]["rare_token_columns"], table["1.2"]["eos_column"]) == ("syntactic", 0, 1)
    roles = [
        h.get("role") for h in head_table(sentences, "encoder", 1, 1, draws=1, rarity=(counts, never, 2), pos_window=0)
    ]
    assert roles == ["positional", "syntactic", "rare", "syntactic", "positional", "syntactic"]  # the majorities
    # the (w, r) grid: the mean over every head of every sentence of the error of the best X in Σ₃(w, r)
    errors = [project(a, 0, 1)["rare"].per_entry for x in sentences for layer in x.weights["encoder"] for a in layer]
    assert len(set(errors)) > 1 and grid(sentences, "encoder")["w0_r1"] == pytest.approx(sum(errors) / 18)
    # decoder: the rare set of a query is its prefix's. Queries 1-4 see token 11 (position 1), the rarest of their
    # prefix; token 16 (position 5), the whole sentence's rarest, only from query 5
    tgt = torch.tensor([2, 11, 12, 13, 14, 16])
    prefix = _pattern(n, [0, 1, 1, 1, 1, 5])
    decoder = [SentenceAttention(0, n, n, {"decoder": [prefix[None]]}, src, tgt)]
    assert role_mix(decoder, "decoder", 1, 1, (counts, never), pos_window=0) == ["rare:1"]


def test_report_quotes_the_thesis_and_reports_both_variants(tmp_path):
    from structmt.analysis.report import markdown, summarise, thesis_quote, write_report

    t16, t17 = thesis_quote(3, 2), thesis_quote(10, 1)
    assert (t16["table"], t17["table"]) == (16, 17)
    assert (round(min(t16["per_entry"]), 4), round(max(t16["per_entry"]), 4)) == (0.0615, 0.0824)
    assert (round(min(t17["per_entry"]), 3), round(max(t17["per_entry"]), 3)) == (0.078, 0.088)
    # the mean over the 8 heads (the median would be 0.0691 and 0.0824)
    assert (round(t16["mean_error_per_entry"], 4), round(t17["mean_error_per_entry"], 4)) == (0.0702, 0.0829)
    gen = torch.Generator().manual_seed(0)

    def sentence(i, n):
        heads = [torch.softmax(torch.randn(2, n, n, generator=gen) * 3, -1) for _ in range(2)]
        causal = [torch.softmax(torch.randn(2, n, n, generator=gen).tril() * 3, -1) for _ in range(2)]
        return SentenceAttention(
            i, n, n, {"encoder": heads, "decoder": causal}, torch.arange(4, 4 + n), torch.arange(4, 4 + n)
        )

    sentences = [sentence(i, n) for i, n in enumerate((16, 16, 12))]
    counts, never = torch.arange(100, 0, -1), torch.zeros(100, dtype=torch.bool)
    result = summarise(sentences, (counts, never, 2), tmp_path, draws=2)
    result |= {"checkpoint": "ckpt.pt", "data": "bin", "subset": "test", "seconds": 1.0}
    block = result["w3_r2_n16"]
    assert block["row_stochastic_error"] == pytest.approx(2 * block["mean_error_per_entry"])
    for h in block["heads"]:
        # every thesis family's shape (structure inside the band, n noise entries) is one Ẽ may take
        assert h["row_stochastic_with_noise"] <= h["thesis_families_exact"] + 1e-9
        assert h["row_stochastic_with_noise"] < h["row_stochastic_error"]
    tradeoff = result["k_tradeoff"]["row_stochastic, eps inf"]
    assert tradeoff["k0"] == pytest.approx(block["row_stochastic_error"])
    assert tradeoff["k16"] == pytest.approx(block["row_stochastic_with_noise"])
    text = markdown(result, "structmt-analyze ckpt.pt bin")
    assert "| optimised + Ẽ, row-stochastic |" in text and "thesis ÷ (+ Ẽ, row-stochastic)" in text
    assert "about 0.004" not in text
    assert "Table 16" in text and "0.0615–0.0824" in text and "0.0780–0.0882" in text
    assert "row-stochastic" in text and "EddieConti/Master-Thesis-UB" in text
    assert not (tmp_path / "roles.json").exists()  # written with the report's text, once all of it exists
    write_report(tmp_path, result, "structmt-analyze ckpt.pt bin")
    assert json.loads((tmp_path / "roles.json").read_text()) == result["roles"]
    assert json.loads((tmp_path / "analysis.json").read_text())["roles"] == result["roles"]
    assert (tmp_path / "ANALYSIS.md").read_text() == text


def test_a_ratio_just_below_the_goal_is_never_shown_as_reaching_it():
    """The verdict tested the exact ratio but printed it to one decimal: 4.97 read "5.0× (not met)"."""
    from structmt.analysis.report import _times, markdown

    result = json.loads(
        (Path(__file__).resolve().parents[1] / "results" / "analysis_seed1" / "analysis.json").read_text()
    )
    block = result["w3_r2_n16"]
    block["row_stochastic_error"] = block["thesis"]["mean_error_per_entry"] / 4.97
    text = markdown(result, "structmt-analyze ckpt.pt bin")
    assert "4.97× at w=3, num-pos=2 (not met)" in text and "**4.97×**" in text and "5.0×" not in text
    block["row_stochastic_error"] = block["thesis"]["mean_error_per_entry"] / 5.04
    assert "5.0× at w=3, num-pos=2 (met)" in markdown(result, "structmt-analyze ckpt.pt bin")
    block["thesis"]["mean_error_per_entry"], block["row_stochastic_error"] = 0.5, 0.1  # the goal exactly: met
    assert "5.0× at w=3, num-pos=2 (met)" in markdown(result, "structmt-analyze ckpt.pt bin")
    assert (_times(4.996, 1.0), _times(1.0, 0.0)) == ("4.99×", "∞×")  # rounded down below the goal; no error: ∞


def test_a_recording_attention_module_returns_what_its_caller_asks_for(dict_dir):
    """Recording per-head weights changes nothing a caller of the module gets: its output, head-averaged weights
    by default, none with need_weights=False, each head's with need_head_weights."""
    from structmt.analysis.extract import _Recorder

    size = ["--encoder-layers", "1", "--decoder-layers", "1", "--encoder-embed-dim", "16", "--decoder-embed-dim", "16"]
    _, model = build(dict_dir, "transformer", *size, "--encoder-attention-heads", "2")
    attn = model.encoder.layers[0].self_attn
    x = torch.randn(5, 2, 16, generator=torch.Generator().manual_seed(0))  # (time, batch, channels)
    with torch.no_grad():
        want_out, want_weights = attn(x, x, x)
        recorder = _Recorder(attn)
        try:
            out, weights = attn(x, x, x)
            _, none = attn(x, x, x, need_weights=False)
            _, heads = attn(x, x, x, need_head_weights=True)
        finally:
            recorder.remove()
    torch.testing.assert_close(out, want_out)
    torch.testing.assert_close(weights, want_weights)
    assert none is None and heads.shape == (2, 2, 5, 5) and torch.equal(heads, recorder.weights)
    attn.forward = wrapped = attn.forward  # a forward of the instance's own (another wrapper's): put back
    _Recorder(attn).remove()
    assert vars(attn)["forward"] is wrapped


def test_extraction_from_a_structured_model_is_zero_outside_its_support(dict_dir):
    from structmt.analysis.extract import _attention_modules, _Recorder

    _, model = build(
        dict_dir,
        "structured_transformer_tiny",
        "--encoder-attention-heads",
        "4",
        "--decoder-attention-heads",
        "4",
        "--encoder-embed-dim",
        "32",
        "--decoder-embed-dim",
        "32",
        "--struct-heads",
        "pos:1,syn:2,rare:1",
        "--struct-window",
        "2",
        "--struct-rare",
        "2",
    )
    recorders = {b: [_Recorder(m) for m in mods] for b, mods in _attention_modules(model).items()}
    src = torch.randint(4, 44, (2, 12))
    src[:, -1] = 2
    tgt = torch.randint(4, 44, (2, 9))
    with torch.no_grad():
        model(src, torch.tensor([12, 12]), tgt)
    for block in ("encoder", "decoder"):
        for rec in recorders[block]:
            w = rec.weights  # (heads, batch, T, T)
            T = w.size(-1)
            for h, width in enumerate(rec.module.structure.window):
                outside = ~band_support(T, width)
                if block == "decoder":
                    outside |= torch.ones(T, T, dtype=torch.bool).triu(1)
                if rec.module.structure.rare_heads[h]:
                    # at most r columns per row outside the band
                    assert int(((w[h] > 0) & outside).sum(-1).max()) <= 2
                else:
                    assert torch.all(w[h][:, outside] == 0)
            assert torch.allclose(w.sum(-1), torch.ones(()), atol=1e-5)
    for recs in recorders.values():
        for rec in recs:
            rec.remove()


def test_roles_file_configures_the_model(dict_dir, tmp_path):
    roles = tmp_path / "roles.json"
    roles.write_text(json.dumps({"encoder": ["syn:1,pos:1", "rare:1,syn:1"], "decoder": ["pos:1,pos:1", "syn:2"]}))
    _, model = build(dict_dir, "structured_transformer_tiny", "--struct-heads-from", str(roles), "--struct-window", "2")
    enc = [layer.self_attn.structure for layer in model.encoder.layers]
    assert enc[0].window == (2, 1) and enc[1].rare_heads == (True, False)
    assert model.decoder.layers[0].self_attn.structure.window == (1, 1)
    with pytest.raises(ValueError, match="--struct-heads-from .*missing.json: no such file"):
        build(dict_dir, "structured_transformer_tiny", "--struct-heads-from", str(tmp_path / "missing.json"))


def test_a_checkpoint_that_is_not_a_transformer_is_named(data_bin, tmp_path):
    """structmt-analyze, bench decode and translate load through load_model: another architecture or a file that
    is not a checkpoint is an error naming the file, not an AttributeError from deep inside."""
    from structmt.checkpoints import load_model

    small = ["--encoder-embed-dim", "8", "--decoder-embed-dim", "8", "--encoder-hidden-size", "8"]
    small += ["--decoder-hidden-size", "8", "--decoder-out-embed-dim", "8"]
    cmd = [
        sys.executable, "-m", "fairseq_cli.train", str(data_bin), "--arch", "lstm", *TASK, *small,
        "--optimizer", "adam", "--lr", "0.001", "--max-tokens", "500", "--max-update", "1", "--num-workers", "0",
        "--no-epoch-checkpoints", "--disable-validation", "--save-dir", str(tmp_path), "--no-progress-bar",
    ]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    with pytest.raises(ValueError, match=r"checkpoint_last.pt: a LSTMModel; structmt reads transformer checkpoints"):
        load_model(tmp_path / "checkpoint_last.pt", data_bin)
    # a run folder's checkpoint with a data-bin of the same size but other symbols (prepared again): it loaded
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(tmp_path / "checkpoint_last.pt", run / "checkpoints" / "checkpoint_last.pt")
    shutil.copytree(data_bin, run / "model", ignore=shutil.ignore_patterns("*.bin", "*.idx"))
    with pytest.raises(ValueError, match=r"LSTMModel"):  # its own dictionaries: as from anywhere
        load_model(run / "checkpoints" / "checkpoint_last.pt", data_bin)
    kept = (run / "model" / "dict.de.txt").read_text().splitlines()
    (run / "model" / "dict.de.txt").write_text("".join(f"{line}\n" for line in kept[1:] + kept[:1]))
    with pytest.raises(ValueError, match=r"bin/dict.de.txt is not the dictionary .*checkpoint_last.pt was trained wit"):
        load_model(run / "checkpoints" / "checkpoint_last.pt", data_bin)
    # an architecture of a plugin not loaded here: named, not fairseq's IndexError of a broken format string
    state = torch.load(tmp_path / "checkpoint_last.pt", map_location="cpu")
    state["cfg"]["model"].arch = state["cfg"]["model"]._name = "my_plugin_lstm"
    torch.save(state, tmp_path / "plugin.pt")
    with pytest.raises(ValueError, match=r"plugin.pt: a model of --arch my_plugin_lstm, which neither fairseq nor"):
        load_model(tmp_path / "plugin.pt", data_bin)
    legacy = {"args": state["cfg"]["model"], "model": {}}  # fairseq's older format: the settings as args
    torch.save(legacy, tmp_path / "legacy.pt")  # (fairseq upgrades it by the architecture's name: a KeyError)
    with pytest.raises(ValueError, match=r"legacy.pt: a model of --arch my_plugin_lstm, which neither fairseq nor"):
        load_model(tmp_path / "legacy.pt", data_bin)
    del state["cfg"]["model"].arch  # a model registered with a dataclass of its settings records its _name alone
    torch.save(state, tmp_path / "named.pt")
    with pytest.raises(ValueError, match=r"named.pt: a model of --arch my_plugin_lstm, which neither fairseq nor"):
        load_model(tmp_path / "named.pt", data_bin)
    # a real checkpoint with dictionaries it was not trained on: named so, not "not a checkpoint"
    (tmp_path / "other_bin").mkdir()
    other_bin = make_dict_dir(tmp_path / "other_bin", size=7)
    with pytest.raises(ValueError, match=r"checkpoint_last.pt does not fit the dictionaries of .*other_bin \(size mis"):
        load_model(tmp_path / "checkpoint_last.pt", other_bin)
    garbage = tmp_path / "notes.pt"
    garbage.write_text("hello")
    with pytest.raises(ValueError, match=r"notes.pt: not a fairseq checkpoint"):
        load_model(garbage, data_bin)
    # an empty file, and a zip archive that torch did not write: one line each, not torch's text
    (tmp_path / "empty.pt").write_bytes(b"")
    with zipfile.ZipFile(tmp_path / "other.pt", "w") as archive:
        archive.writestr("a", "b")
    # damaged pickled data (flipped bytes: a string that is not UTF-8) reaches the unpickler as a UnicodeDecodeError
    torch.save({"a": 1}, tmp_path / "whole.pt")
    with zipfile.ZipFile(tmp_path / "whole.pt") as whole, zipfile.ZipFile(tmp_path / "damaged.pt", "w") as damaged:
        for member in whole.namelist():
            pickled = b"\x80\x02X\x02\x00\x00\x00\xff\xfe."  # a 2-byte string
            damaged.writestr(member, pickled if member.endswith("data.pkl") else whole.read(member))
    with zipfile.ZipFile(tmp_path / "whole.pt") as whole, zipfile.ZipFile(tmp_path / "opcode.pt", "w") as damaged:
        for member in whole.namelist():  # an opcode the safe loader does not take
            damaged.writestr(member, b"\x80\x02v." if member.endswith("data.pkl") else whole.read(member))
    # a file torch did not write: what it is, never torch's advice to load it with weights_only=False
    (tmp_path / "lfs.pt").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 9\n")
    for name, why in (
        ("empty.pt", "EOFError: "),  # torch words them by version
        ("other.pt", "RuntimeError: "),
        ("damaged.pt", "UnicodeDecodeError: 'utf-8' codec can't decode byte 0xff"),
        ("opcode.pt", "UnpicklingError: Unsupported operand 118)"),
        ("lfs.pt", "a Git LFS pointer, not the file itself: `git lfs pull` fetches it)"),
        ("notes.pt", "torch did not write it: it begins b'hello')"),
    ):
        with pytest.raises(ValueError) as err:
            load_model(tmp_path / name, data_bin)
        assert str(err.value).startswith(f"{tmp_path / name}: not a fairseq checkpoint, or one cut short ({why}")
        assert "\n" not in str(err.value) and "weights_only" not in str(err.value)


def test_a_checkpoint_read_with_other_dictionaries_of_the_same_size_is_said(data_bin, tmp_path, caplog):
    """A checkpoint outside a run folder (copied, cast, averaged by hand) read with a data-bin whose dictionaries
    have its size but other tokens (the data prepared again): compared with the data-bin the checkpoint records,
    where that is here, and said (it loaded in silence and read other words); a shared embedding with two
    different dictionaries is said naming the data-bin (fairseq's error named none)."""
    from structmt.checkpoints import load_model
    from structmt.fairseq_cli import train

    args = [
        *TASK,
        "--optimizer",
        "adam",
        "--lr",
        "1e-9",
        "--max-tokens",
        "500",
        "--max-update",
        "1",
        "--num-workers",
        "0",
    ]
    args += ["--share-all-embeddings", "--no-epoch-checkpoints", "--disable-validation", "--encoder-layers", "1"]
    args += ["--decoder-layers", "1", "--encoder-embed-dim", "8", "--decoder-embed-dim", "8"]
    trained = train(data_bin, tmp_path / "run", "transformer", args).checkpoint
    copied = tmp_path / "copied.pt"
    shutil.copy(trained, copied)
    other, unjoined = tmp_path / "other", tmp_path / "unjoined"
    for folder in (other, unjoined):
        folder.mkdir()
    for lang in ("en", "de"):
        lines = (data_bin / f"dict.{lang}.txt").read_text().splitlines()
        moved = "".join(f"{line}\n" for line in lines[1:] + lines[:1])  # the same size, other token ids
        (other / f"dict.{lang}.txt").write_text(moved)
        (unjoined / f"dict.{lang}.txt").write_text(moved if lang == "de" else "".join(f"{x}\n" for x in lines))
    for checkpoint in (trained, copied):  # the first in <run>/checkpoints, but its run folder keeps no dictionaries
        caplog.clear()
        load_model(checkpoint, data_bin)
        said = lambda: [r.getMessage() for r in caplog.records if r.name.startswith("structmt")]  # noqa: E731
        assert said() == []
        model, _ = load_model(checkpoint, other)
        assert model is not None
        assert said() == [
            f"{other / 'dict.de.txt'} differs from {data_bin / 'dict.de.txt'}, of the data-bin {checkpoint} says it "
            f"was trained on: unless that folder was prepared again since, give {data_bin} instead (a dictionary "
            "of the same size with other tokens reads other words, in silence)"
        ]
    # trained on several folders (fairseq's data1:data2 shards): the dictionaries are the first's
    state = torch.load(trained, map_location="cpu", weights_only=False)
    state["cfg"]["task"]["data"] = os.pathsep.join([str(data_bin), str(other)])
    sharded = tmp_path / "sharded.pt"
    torch.save(state, sharded)
    caplog.clear()
    load_model(sharded, data_bin)
    assert said() == []
    load_model(sharded, other)
    (warned,) = said()
    assert warned.startswith(
        f"{other / 'dict.de.txt'} differs from {data_bin / 'dict.de.txt'}, of the data-bin {sharded}"
    )
    # fairseq's older format records the data-bin in its args: compared the same, before it is read
    legacy = tmp_path / "legacy.pt"
    torch.save({"args": argparse.Namespace(arch="transformer", data=str(data_bin)), "model": {}}, legacy)
    caplog.clear()
    with pytest.raises(ValueError):  # no weights: not a whole checkpoint
        load_model(legacy, other)
    assert said()[0].startswith(
        f"{other / 'dict.de.txt'} differs from {data_bin / 'dict.de.txt'}, of the data-bin {legacy}"
    )
    with pytest.raises(ValueError) as err:
        load_model(copied, unjoined)
    assert str(err.value).endswith(
        f"shares one embedding between source and target (--share-all-embeddings), but the two dictionaries of "
        f"{unjoined} differ: give the data-bin the model was trained on"
    )


def test_a_page_of_older_json_asks_for_the_analysis_again(tmp_path):
    from structmt.analysis.report import render_page

    (tmp_path / "ANALYSIS.md").write_text("# Attention analysis\n\nProduced by `structmt-analyze ckpt.pt bin` from …\n")
    (tmp_path / "analysis.json").write_text("{}")
    with pytest.raises(
        ValueError,
        match=r"analysis.json lacks 'checkpoint'.*Analyse the checkpoint again \(the command on the page's first "
        r"line\) with --out-dir a folder of its own",
    ):
        render_page(tmp_path)


@pytest.mark.parametrize("arch", ["transformer", "structured_transformer_tiny"])
@pytest.mark.parametrize("flip", [False, True])
def test_extraction_in_batches_equals_one_sentence_at_a_time(data_bin, arch, flip):
    """Padding is removed wherever it lies (``--left-pad-source``/``--left-pad-target``): each sentence's weights
    extracted from a padded batch are those of the sentence alone, and each row is an attention row."""
    from structmt.analysis.extract import iterate

    size = ["--encoder-layers", "1", "--decoder-layers", "1", "--encoder-embed-dim", "16", "--decoder-embed-dim", "16"]
    size += ["--encoder-attention-heads", "2", "--decoder-attention-heads", "2"]
    size += ["--encoder-ffn-embed-dim", "32", "--decoder-ffn-embed-dim", "32"]
    flips = ["--left-pad-source", "--left-pad-target"] if flip else []  # sources right-, targets left-padded
    task, model = build(data_bin, arch, *(size if arch == "transformer" else []), *flips)
    assert (task.cfg.left_pad_source, task.cfg.left_pad_target) == (not flip, flip)
    batched = {}
    for s in iterate(model, task, "test", batch_size=32):  # between sentences the model is its own again
        batched[s.sample_id] = s
        for layer in model.encoder.layers:
            assert "forward" not in vars(layer.self_attn)
            assert layer.self_attn.skip_embed_dim_check is False
    alone = list(iterate(model, task, "test", batch_size=1))
    assert len(alone) == len(batched) == 60
    for s in alone:
        b = batched[s.sample_id]
        assert (b.src_len, b.tgt_len) == (s.src_len, s.tgt_len) and torch.equal(b.src_tokens, s.src_tokens)
        assert torch.equal(b.tgt_tokens, s.tgt_tokens) and len(b.tgt_tokens) == b.tgt_len
        assert b.tgt_tokens[0] == task.target_dictionary.eos()  # teacher-forced: </s>, then the reference
        for block, layers in s.weights.items():
            for mine, theirs in zip(b.weights[block], layers, strict=True):
                torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=0)
                torch.testing.assert_close(mine.sum(-1), torch.ones(mine.shape[:-1]), atol=1e-5, rtol=0)


#: counts falling with the token id (the larger, the rarer), no special symbol; EOS index 2
_RARITY = (torch.arange(100, 0, -1), torch.zeros(100, dtype=torch.bool), 2)


def _causal(a):
    """``a`` with each row's weight above the diagonal moved onto the rest of the row (a decoder's attention)."""
    a = a.tril()
    return a / a.sum(-1, keepdim=True)


def _sentences(lengths, layers=2, heads=2, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def attention(n, causal=False):
        scores = torch.randn(heads, n, n, generator=gen) * 3
        return _causal(torch.softmax(scores, -1)) if causal else torch.softmax(scores, -1)

    return [
        SentenceAttention(
            i,
            n,
            n,
            {"encoder": [attention(n) for _ in range(layers)], "decoder": [attention(n, True) for _ in range(layers)]},
            torch.arange(4, 4 + n),
            torch.arange(4, 4 + n),
        )
        for i, n in enumerate(lengths)
    ]


def test_a_one_head_model_is_reported_and_a_failed_report_changes_no_file(tmp_path, monkeypatch):
    from structmt.analysis import report

    result = report.summarise(_sentences((16, 12), layers=1, heads=1), _RARITY, tmp_path, draws=1)
    assert result["roles"]["encoder"] == [result["roles"]["encoder"][0]] and (tmp_path / "analysis_heads.png").stat()
    result |= {"checkpoint": "ckpt.pt", "data": "bin", "subset": "test", "seconds": 1.0}
    before = {name: f"earlier {name}" for name in ("roles.json", "analysis.json", "ANALYSIS.md")}
    for name, text in before.items():
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(report, "markdown", lambda *a: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        report.write_report(tmp_path, result, "structmt-analyze ckpt.pt bin")
    assert {name: (tmp_path / name).read_text() for name in before} == before


def test_the_per_head_table_holds_each_heads_own_numbers():
    """The distance, the thesis families' optimum per entry and the mass inside Σ₃ of each head, exactly; with
    r = 0 no rare columns to compare with the rare tokens; a sentence without the block's tokens is named."""
    from structmt.analysis.report import head_table, role_mix

    w, r = 2, 1
    sentences = _sentences((8,), layers=1, heads=2)
    table = head_table(sentences, "encoder", w, r, draws=1, rarity=_RARITY)
    for h, a in zip(table, sentences[0].weights["encoder"][0], strict=True):
        fits = project(a, w, r)
        assert h["min_distance"] == pytest.approx(min(f.distance for f in fits.values()))
        assert h["mass_inside"] == pytest.approx(fits["rare"].mass_inside) != fits["syntactic"].mass_inside
        exact = min(thesis_family_optimum(a.double(), role, w, r) for role in ROLES) / 8**2
        assert h["thesis_families_exact"] == pytest.approx(exact, rel=1e-5)
        assert "rare_token_columns" in h
    assert all("rare_token_columns" not in h for h in head_table(sentences, "encoder", w, 0, draws=1, rarity=_RARITY))
    sentences[0].tgt_tokens = None
    with pytest.raises(ValueError, match="sentence 0 has no decoder tokens: the roles need them"):
        role_mix(sentences, "decoder", w, r, _RARITY[:2])


def test_the_tables_take_sentences_of_n_tokens_and_the_decoders_roles_its_own_dictionarys_rarity(tmp_path):
    """A sentence of 20 tokens is no n = 16 crop. Every decoder query on the first target token: the most frequent
    by the source's counts (a syntactic head, its mass on the band), the rarest by the target's (a rare one)."""
    from structmt.analysis import report

    sentences = _sentences((16, 20), layers=1, heads=1)
    for s in sentences:
        s.weights["decoder"] = [_pattern(s.tgt_len, [0] * s.tgt_len)[None]]
    counts = _RARITY[0].clone()
    counts[4] = 0  # the first target token, rarest of every prefix
    result = report.summarise(sentences, _RARITY, tmp_path, draws=1, target_rarity=(counts, _RARITY[1]))
    assert result["sentences_n16"] == 1 and result["roles"]["decoder"] == ["rare:1"]
    assert report.summarise(sentences, _RARITY, tmp_path, draws=1)["roles"]["decoder"] == ["syn:1"]


def test_the_whole_set_quantiles_stay_within_the_data(tmp_path):
    from structmt.analysis.report import _quantile, distribution

    few = distribution(_sentences((6, 7)), "encoder", 1, 1)  # 8 matrices: p10 and p90 would lie outside them
    assert few["matrices"] == 8 and few["p10"] is None and few["p90"] is None
    assert _quantile(few["p90"]) == "– (fewer than 9 matrices)"
    many = distribution(_sentences((6, 7, 8)), "encoder", 1, 1)
    errs = [
        project(s.weights["encoder"][layer][head], 1, 1)["rare"].per_entry
        for s in _sentences((6, 7, 8))
        for layer in range(2)
        for head in range(2)
    ]
    assert many["matrices"] == 12 and min(errs) <= many["p10"] <= many["median"] <= many["p90"] <= max(errs)
    nine = _sentences((6, 7, 8), layers=1, heads=3)  # 9 matrices: the quantiles are given, p10 and p90 the extremes
    errs = sorted(project(a, 1, 1)["rare"].per_entry for s in nine for a in s.weights["encoder"][0])
    got = distribution(nine, "encoder", 1, 1)
    assert got["matrices"] == 9
    assert (got["p10"], got["median"], got["p90"], got["max"]) == pytest.approx((errs[0], errs[4], errs[8], errs[8]))


def test_seeds_of_the_random_search_never_share_a_sentence_seed():
    from structmt.analysis.report import sentence_seed

    assert [sentence_seed(0, i) for i in range(5)] == list(range(5))  # the committed analyses (seed 0) unchanged
    assert (sentence_seed(1, 0), sentence_seed(3, 7)) == (2**32, 3 * 2**32 + 7)  # and those of seeds 1 to 3
    drawn = [{sentence_seed(seed, i) for i in range(3000)} for seed in range(4)]
    assert all(not (a & b) for a, b in itertools.combinations(drawn, 2))
    assert sentence_seed(2**31 - 1, 10**6) < 2**63  # the largest --seed: a valid torch seed


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda a: thesis_random_search(a[0], 3, 2), r"a stack of h square matrices \(h, n, n\), got shape \(8, 8\)"),
        (lambda a: thesis_random_search(a.nan_to_num(0) * math.nan, 3, 2), "finite, non-negative"),
        (lambda a: thesis_random_search(a - 1, 3, 2), "finite, non-negative"),
        (lambda a: thesis_random_search(torch.stack([a[0], a[1] - 1]), 3, 2), "finite, non-negative"),
        (lambda a: thesis_random_search(a, 0, 2), "need w >= 1 and num-pos >= 0, got w=0"),
        (lambda a: thesis_random_search(a, 3, 2, draws=0), "draws must be >= 1"),
        (lambda a: thesis_family_optimum(a[0], "rare", 10, 1), "no 1 segments of length 10 at least 10 apart fit in 8"),
        (lambda a: thesis_family_optimum(a[0], "syntactic", -1, 1), "w must be >= 0, got -1"),
        (lambda a: thesis_family_optimum(a[0] * math.nan, "positional", 1, 1), "finite, non-negative"),
        (lambda a: thesis_family_optimum(3 * a[0], "positional", 1, 1), "a row of A has mass 3"),
        (lambda a: project(a[0], 1, 0, k=2, eps=math.nan), "at most eps >= 0, got k=2, eps=nan"),
        (lambda a: best_role(project(a[0], 1, 1), 1.5), r"share must lie in \[0, 1\]"),
        (
            lambda a: thesis_members("semantic", 8, 3, 2, torch.ones(1), torch.ones(1), torch.Generator()),
            "role must be",
        ),
    ],
)
def test_the_analysis_functions_refuse_what_they_cannot_fit(call, message):
    a = torch.softmax(torch.randn(2, 8, 8, generator=torch.Generator().manual_seed(0)), -1)
    with pytest.raises(ValueError, match=message):
        call(a)


def test_a_report_names_the_sentence_length_it_needs_and_a_setting_it_cannot_draw(tmp_path):
    from structmt.analysis.report import summarise

    with pytest.raises(SystemExit, match=r"no sentence has 16 source tokens \(counted with </s>.*lengths run 6–9"):
        summarise(_sentences((6, 9)), _RARITY, tmp_path / "out")
    with pytest.raises(ValueError, match="need w >= 1 and num-pos >= 0, got w=0"):
        summarise(_sentences((16,)), _RARITY, tmp_path / "out", settings=((0, 1),))
    assert not (tmp_path / "out").exists()


def test_thesis_matrices_script_projects_crops_whose_rows_do_not_sum_to_one(tmp_path):
    """scripts/thesis_matrices.py on the thesis's pickle: its rows lost mass to dropout, or gained it (1/0.9).
    Exact values on two matrices: the identity padded to 20 × 20 (nothing outside the band: only |1 - mass| of
    the rows), and one whose rows keep 0.9 of their mass on the diagonal and 0.1 on column 15, scaled by 1/0.9.
    A pickle that would build anything but numpy arrays is refused."""
    import pickle

    eye = np.zeros((20, 20))
    eye[:16, :16] = np.eye(16)
    dropped = np.zeros((20, 20))
    dropped[:16, :16] = 0.9 * np.eye(16)
    dropped[:16, 15] += 0.1
    dropped /= 0.9  # every row 1/0.9: nothing dropped at rate 0.1
    good = tmp_path / "matrix_list.pkl"
    good.write_bytes(pickle.dumps([eye, dropped]))
    script = [sys.executable, str(Path(__file__).resolve().parents[1] / "scripts" / "thesis_matrices.py")]
    out = subprocess.run([*script, str(good)], capture_output=True, text=True, check=True).stdout
    assert (
        "row mass: 1.0000 to 1.1111; 16 of 32 rows at 1/0.9 (within 1e-6)" in out
        and f"= {16 * (1 / 0.9 - 1) / 256 / 2:.4f} per entry" in out
    )
    # w=3 r=2: column 15 is a rare column, so both matrices have no mass outside: unconstrained 0, and the
    # row-stochastic costs only the 1/0.9 - 1 of each row of the second matrix; w=10 r=1 alike
    row_stochastic = 16 * (1 / 0.9 - 1) / 256 / 2
    for w, r in ((3, 2), (10, 1)):
        assert re.search(rf"\| {w} \| {r} \| 0\.0\d+ \| 0\.\d+ \| 0\.0000 \| {row_stochastic:.4f} \|", out), out
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps([eye, Path("x")]))
    refused = subprocess.run([*script, str(evil)], capture_output=True, text=True)
    assert refused.returncode != 0 and "is not a numpy array part: refused" in refused.stderr
