"""``structmt-analyze``: project a checkpoint's attention onto Σ and write the
paper-form tables, distributions, figures and a role mix the model accepts."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
import time
import warnings
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import torch

from ..attention.options import StructureConfig
from ..attention.structure import ROLES, SHORT_ROLES, rarity_tables
from ..checkpoints import load_model
from ..figures import annotated_heatmap, pyplot, save
from ..files import (
    data_bin,
    existing_file,
    int_at_least,
    new_temporary,
    output_dir,
    split_problem,
    write_text_atomic,
)
from ..paths import RESULTS_DIR
from ..provenance import git_commit, machine
from .extract import SentenceAttention, iterate
from .project import (
    THESIS_DRAWS,
    VARIANTS,
    best_role,
    check_segments,
    model_rare_sets,
    model_role,
    project,
    rare_columns,
    thesis_family_optimum,
    thesis_random_search,
)

#: how the roles are chosen (``analysis.json``'s ``role_rule``; the w, r and positional band in ``role_setting``)
ROLE_RULE = "each role scored on the keys a structured model's head of that role sees"
#: the rule of the pages written from a61ac9f to 402d8af: the positional role on Σ₁'s best single diagonal
RARE_COLUMNS_RULE = "rare role scored on the model's rare-token columns"

#: how the page says its roles were chosen, by this rule and by the earlier ones (``None``: a page from before
#: ``role_rule`` existed, which also scored the rare role on Σ₃'s L1-best columns, mostly the EOS column)
ROLES_CHOSEN = {
    ROLE_RULE: (
        "Each head's role is the simplest of pos, syn and rare whose support holds at least 90% of the attention "
        "mass the best of them holds (majority over the sentences), each support being the keys a structured "
        "model's head of that role sees: pos the band |i − j| ≤ {pos_window} (`--struct-pos-window {pos_window}`), "
        "syn the band |i − j| ≤ {w}, rare that band and the {r} rarest tokens' columns (in the decoder, of each "
        "query's prefix)."
    ),
    RARE_COLUMNS_RULE: (
        "These roles (and the per-head tables' role column) were chosen by an earlier rule: the pos role scored on "
        "the best single diagonal (the previous, the current or the next token), not on the band |i − j| ≤ "
        "`--struct-pos-window` (1 by default) a structured model's positional head sees, so a head spread over "
        "the previous, current and next token was named syn, and a previous-token head pos whatever the window. "
        "syn and rare were scored as today. `structmt-analyze` now scores pos on the band."
    ),
    None: (
        "These roles (and the per-head tables' role column) were chosen by an earlier rule: the rare role scored on "
        "the columns with the most mass outside the band (mostly the EOS column, which no rare-token head sees), "
        "so a head whose off-band mass lies on EOS was named rare where a structured model's rare-token head gains "
        "little over syn; and the pos role on the best single diagonal, not on the band a positional head sees. "
        "`structmt-analyze` now scores each role on the keys a structured model's head of that role sees."
    ),
}

#: the positional heads' band half-width the roles are scored for, unless ``--pos-window`` says otherwise
POS_WINDOW: int = StructureConfig.struct_pos_window

GRID_W = (0, 1, 2, 3, 5, 8, 10)
GRID_R = (0, 1, 2, 4)

#: Where the paper's numbers come from: the master's thesis it is based on.
THESIS_SOURCE = (
    "E. Conti's master's thesis (University of Barcelona), repository "
    "[EddieConti/Master-Thesis-UB](https://github.com/EddieConti/Master-Thesis-UB), `UB_Final_Thesis.pdf`, "
    "Tables 16 and 17; code and printed per-head values: `code experiments/Attn_approx.ipynb`"
)
#: Per-head L1 distances |A - X| of the thesis's random search (8 heads, one 16×16 crop each), by (w, num-pos).
THESIS_TABLES: dict[tuple[int, int], dict[str, Any]] = {
    (3, 2): {
        "table": 16,
        "distances": [17.229423, 15.748942, 21.084405, 18.796007, 16.912899, 17.232267, 18.121464, 18.711096],
    },
    (10, 1): {
        "table": 17,
        "distances": [22.584185, 20.904304, 20.630814, 19.964075, 21.000884, 22.181472, 21.396999, 21.169499],
    },
}
#: the thesis's crop: n×n attention matrices of sentences with n source tokens
THESIS_N = 16
#: the (w, num-pos) settings the thesis reports, which the analysis compares with by default
THESIS_SETTINGS = tuple(THESIS_TABLES)


def thesis_quote(w: int, r: int) -> dict[str, Any] | None:
    """The thesis's result at ``w``, num-pos ``r`` (per entry: distance / 256), or None."""
    if (w, r) not in THESIS_TABLES:
        return None
    t = THESIS_TABLES[w, r]
    per_entry = [d / THESIS_N**2 for d in t["distances"]]
    return {**t, "per_entry": per_entry, "mean_error_per_entry": statistics.mean(per_entry)}


def _heads(sentences: list[SentenceAttention], block: str) -> list[tuple[int, int]]:
    layers = sentences[0].weights[block]
    return [(layer, head) for layer in range(len(layers)) for head in range(layers[layer].size(0))]


def sentence_seed(seed: int, i: int) -> int:
    """The seed of sentence ``i``'s random members: ``seed · 2³² + i``, so runs of other seeds never share a
    draw (with ``seed + i``, seed 1 drew sentence i's members as seed 0 drew sentence i + 1's)."""
    return seed * 2**32 + i


def head_table(
    sentences: list[SentenceAttention],
    block: str,
    w: int,
    r: int,
    draws: int = THESIS_DRAWS,
    seed: int = 0,
    rarity: tuple[torch.Tensor, torch.Tensor, int] | None = None,
    pos_window: int = POS_WINDOW,
) -> list[dict[str, Any]]:
    """Per head (self-attention over the source), means over the sentences: optimised distance and error per
    entry (both variants), the thesis's random search and its families' exact optimum; with ``rarity``
    (counts, never-rare flags, EOS index) the role the head would take in a structured model
    (:func:`~structmt.analysis.project.model_role` with ``pos_window``, the majority over the sentences) and how
    often the L1-best columns are the sentence's rarest tokens and its EOS."""
    heads = _heads(sentences, block)
    values: list[dict[str, list[float]]] = [defaultdict(list) for _ in heads]
    roles: list[Counter[str]] = [Counter() for _ in heads]
    for i, s in enumerate(sentences):
        stack = torch.stack([s.weights[block][layer][head] for layer, head in heads])
        n = stack.size(-1)
        searched = thesis_random_search(stack, w, r, draws, seed=sentence_seed(seed, i))
        sets = rare = eos = None
        if rarity is not None:
            sets = model_rare_sets(_tokens(s, block), rarity[0], rarity[1], r)
            rare = set(sets[0].tolist()) - {-1}
            eos = set((s.src_tokens == rarity[2]).nonzero().flatten().tolist())
        for j, a in enumerate(stack):
            fits, stochastic = project(a, w, r), project(a, w, r, variant="row_stochastic")
            if sets is not None:
                roles[j][model_role(a, w, sets, pos_window)] += 1
            v = values[j]
            v["min_distance"].append(min(f.distance for f in fits.values()))
            v["mean_error_per_entry"].append(min(f.per_entry for f in fits.values()))
            v["row_stochastic_error"].append(min(f.per_entry for f in stochastic.values()))
            with_noise = project(a, w, r, k=n, variant="row_stochastic")  # the thesis's noise allowance
            v["row_stochastic_with_noise"].append(min(f.per_entry for f in with_noise.values()))
            v["thesis_random_search"].append(searched[j].per_entry)
            v["thesis_families_exact"].append(min(thesis_family_optimum(a, role, w, r) for role in ROLES) / n**2)
            v["mass_inside"].append(fits["rare"].mass_inside)
            if rare is not None and eos is not None and r:
                cols = set(rare_columns(a, w, r).tolist())
                v["rare_token_columns"].append(len(cols & rare) / len(cols))
                v["eos_column"].append(float(bool(cols & eos)))
    return [
        {"head": f"{layer}.{head}"}
        | ({"role": roles[j].most_common(1)[0][0]} if roles[j] else {})
        | {key: statistics.mean(xs) for key, xs in values[j].items()}
        for j, (layer, head) in enumerate(heads)
    ]


def _tokens(sentence: SentenceAttention, block: str) -> torch.Tensor:
    """The tokens whose rarity the rare-token heads of ``block`` see: the source's (encoder), the decoder's
    input (decoder self-attention)."""
    tokens = sentence.src_tokens if block == "encoder" else sentence.tgt_tokens
    if tokens is None:
        raise ValueError(f"sentence {sentence.sample_id} has no {block} tokens: the roles need them")
    return tokens


#: the sparse term Ẽ of the report's table: (variant, bound on each entry)
K_TRADEOFF = (("unconstrained", 0.05), ("row_stochastic", math.inf))


def k_tradeoff(
    sentences: list[SentenceAttention], block: str, w: int, r: int, variant: str, eps: float
) -> dict[str, float]:
    """Mean error per entry with the sparse term Ẽ: ``k`` entries of at most ``eps``."""
    return {
        f"k{k}": statistics.mean(
            min(f.per_entry for f in project(s.weights[block][layer][head], w, r, k, eps, variant).values())
            for s in sentences
            for layer, head in _heads(sentences, block)
        )
        for k in (0, 4, 8, 16)
    }


def grid(sentences: list[SentenceAttention], block: str) -> dict[str, float]:
    out = {}
    for w in GRID_W:
        for r in GRID_R:
            errs = [
                project(s.weights[block][layer][head], w, r)["rare"].per_entry
                for s in sentences
                for layer, head in _heads(sentences, block)
            ]
            out[f"w{w}_r{r}"] = statistics.mean(errs)
    return out


def distribution(
    sentences: list[SentenceAttention], block: str, w: int, r: int, variant: str = "unconstrained"
) -> dict[str, float]:
    errs = sorted(
        project(s.weights[block][layer][head], w, r, variant=variant)["rare"].per_entry
        for s in sentences
        for layer, head in _heads(sentences, block)
    )
    # the default (exclusive) method reaches beyond the data with fewer than 9 values (p90 > max); none given then
    q = statistics.quantiles(errs, n=10) if len(errs) >= 9 else [None, None]
    return {
        "matrices": len(errs),
        "mean": statistics.mean(errs),
        "p10": q[0],
        "median": statistics.median(errs),
        "p90": q[-1],
        "max": errs[-1],
    }


def _quantile(value: float | None) -> str:
    """A p10 or p90 of :func:`distribution` as the page shows it (none below 9 head matrices)."""
    return "– (fewer than 9 matrices)" if value is None else f"{value:.5f}"


def role_mix(
    sentences: list[SentenceAttention],
    block: str,
    w: int,
    r: int,
    rarity: tuple[torch.Tensor, torch.Tensor],
    pos_window: int = POS_WINDOW,
) -> list[str]:
    """Per layer, the majority role (:func:`~structmt.analysis.project.model_role` with ``pos_window``) of each
    head, in head order (``--struct-heads`` syntax); ``rarity``: the counts and never-rare flags of ``block``'s
    dictionary."""
    causal = block == "decoder"
    sets = [model_rare_sets(_tokens(s, block), rarity[0], rarity[1], r, causal) for s in sentences]
    layers: dict[int, list[str]] = {}
    for layer, head in _heads(sentences, block):
        votes = Counter(
            model_role(s.weights[block][layer][head], w, q, pos_window) for s, q in zip(sentences, sets, strict=True)
        )
        layers.setdefault(layer, []).append(SHORT_ROLES[votes.most_common(1)[0][0]])
    return [",".join(f"{role}:1" for role in heads) for _, heads in sorted(layers.items())]


def figure(sentence: SentenceAttention, block: str, w: int, r: int, png: Path) -> None:
    plt = pyplot()
    heads = [
        (layer, head)
        for layer in range(len(sentence.weights[block]))
        for head in range(sentence.weights[block][layer].size(0))
    ]
    fig, axes = plt.subplots(2, len(heads), figsize=(1.4 * len(heads), 3.2), squeeze=False)  # 2-D with one head
    for col, (layer, head) in enumerate(heads):
        a = sentence.weights[block][layer][head]
        fit = best_role(project(a, w, r))
        for row, (img, title) in enumerate([(a, f"{layer}.{head}"), (a * fit.support, SHORT_ROLES[fit.role])]):
            ax = axes[row, col]
            ax.imshow(img, cmap="Blues", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(title, fontsize=7)
    axes[0, 0].set_ylabel("attention", fontsize=7)
    axes[1, 0].set_ylabel("fitted X", fontsize=7)
    fig.suptitle(
        f"{block} self-attention, sentence {sentence.sample_id} (n={sentence.src_len}), w={w}, r={r}", fontsize=8
    )
    save(fig, png, dpi=110)


def grid_figure(values: dict[str, float], png: Path, title: str) -> None:
    grid = [[values[f"w{w}_r{r}"] for w in GRID_W] for r in GRID_R]
    annotated_heatmap(
        grid,
        GRID_W,
        GRID_R,
        xlabel="w",
        ylabel="r",
        label="mean error per entry",
        title=title,
        png=png,
        fmt="{:.4f}",
        cmap="magma",
    )


def machine_summary() -> str:
    m = machine()
    return f"{m['cpu']} ({m['cpu_capability']}), torch threads: {m['threads']}, torch {m['torch']}"


def analyze(
    checkpoint: Path,
    data_dir: Path,
    subset: str,
    figures_dir: Path,
    n: int = THESIS_N,
    draws: int = THESIS_DRAWS,
    seed: int = 0,
    settings: tuple[tuple[int, int], ...] = THESIS_SETTINGS,
    pos_window: int = POS_WINDOW,
) -> dict[str, Any]:
    started = time.perf_counter()
    # the weights are the same whichever kernel computes them: a model trained with --struct-impl triton (on a GPU)
    # is analysed anywhere, without Triton's interpreter (a dense model has no such option; fairseq ignores it)
    model, task = load_model(checkpoint, data_dir, struct_impl="auto")
    everything = list(iterate(model, task, subset))
    dictionary = task.source_dictionary
    result = {"checkpoint": str(checkpoint), "data": str(data_dir), "subset": subset}
    rarity = (*rarity_tables(dictionary), dictionary.eos())
    target = rarity_tables(task.target_dictionary)
    result |= summarise(everything, rarity, figures_dir, n, draws, seed, settings, target, pos_window)
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def summarise(
    everything: list[SentenceAttention],
    rarity: tuple[torch.Tensor, torch.Tensor, int],
    figures_dir: Path,
    n: int = THESIS_N,
    draws: int = THESIS_DRAWS,
    seed: int = 0,
    settings: tuple[tuple[int, int], ...] = THESIS_SETTINGS,
    target_rarity: tuple[torch.Tensor, torch.Tensor] | None = None,
    pos_window: int = POS_WINDOW,
) -> dict[str, Any]:
    """Everything the report shows, from the extracted attention; draws the figures in ``figures_dir``
    (:func:`write_report` writes the rest). ``rarity``: the source dictionary's counts, never-rare flags and EOS
    index; ``target_rarity``: the target dictionary's (default: the source's, a joined dictionary); ``pos_window``: the
    band half-width of the positional heads the roles are for (``--struct-pos-window``)."""
    for w, r in settings:
        check_segments(n, w, r)
    exact = [s for s in everything if s.src_len == n]
    if not exact:
        lengths = sorted({s.src_len for s in everything})
        raise SystemExit(
            f"error: no sentence has {n} source tokens (counted with </s>, as the thesis's {n}×{n} crops; the "
            f"per-head tables use only those): the subset's lengths run {lengths[0]}–{lengths[-1]}"
            if lengths
            else f"error: no sentence has {n} source tokens: the subset is empty"
        )
    figures_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "sentences": len(everything),
        "commit": git_commit(),
        "machine": machine_summary(),
        f"sentences_n{n}": len(exact),
        "draws": draws,
        "seed": seed,
        "thesis_source": THESIS_SOURCE,
    }
    for w, r in settings:
        heads = head_table(exact, "encoder", w, r, draws, seed, rarity, pos_window)
        result[f"w{w}_r{r}_n{n}"] = {
            "block": "encoder",
            "thesis": thesis_quote(w, r),
            **{key: statistics.mean(h[key] for h in heads) for key in MEANS if key in heads[0]},
            "heads": heads,
            "whole_set": {v: distribution(everything, "encoder", w, r, v) for v in VARIANTS},
        }
    w, r = settings[0]
    result["decoder"] = {f"w{w}_r{r}_all": {v: distribution(everything, "decoder", w, r, v) for v in VARIANTS}}
    result["k_tradeoff"] = {
        f"{variant}, eps {eps}": k_tradeoff(exact, "encoder", w, r, variant, eps) for variant, eps in K_TRADEOFF
    }
    result["grid"] = grid(exact, "encoder")
    result["roles"] = {
        "encoder": role_mix(exact, "encoder", w, r, rarity[:2], pos_window),
        "decoder": role_mix(everything, "decoder", w, r, target_rarity or rarity[:2], pos_window),
    }
    result["role_rule"] = ROLE_RULE
    result["role_setting"] = {"w": w, "r": r, "pos_window": pos_window}
    figure(exact[0], "encoder", w, r, figures_dir / "analysis_heads.png")
    grid_figure(
        result["grid"], figures_dir / "analysis_grid.png", f"encoder heads, n={n}: error of the best X in Σ₃(w, r)"
    )
    return result


#: per-head columns averaged over the heads of a setting
MEANS = (
    "row_stochastic_error",
    "row_stochastic_with_noise",
    "mean_error_per_entry",
    "thesis_random_search",
    "thesis_families_exact",
    "rare_token_columns",
    "eos_column",
)


def _bound(eps: float) -> str:
    return "each entry unbounded" if math.isinf(eps) else f"each entry ≤ {eps:g}"


#: the project's goal: the optimised row-stochastic projection this many times below the thesis's error
GOAL_RATIO = 5


def _times(a: float, b: float) -> str:
    """``a / b`` as ``3.9×``; to two decimals, rounded down, where one would show a ratio below the goal as
    reaching it (4.97: ``4.97×``, not ``5.0×``)."""
    if not b > 0:
        return "∞×"
    ratio = a / b
    shown = f"{ratio:.1f}"
    if ratio < GOAL_RATIO <= float(shown):
        shown = f"{math.floor(ratio * 100) / 100:.2f}"
    return f"{shown}×"


def roles_chosen(result: dict[str, Any]) -> str:
    """The page's sentence on how its roles were chosen, by the rule its ``analysis.json`` names."""
    rule = result.get("role_rule")
    if rule not in ROLES_CHOSEN:
        raise ValueError(
            f"analysis.json names the role rule {rule!r}, which this code does not know (it knows "
            f"{sorted(map(str, ROLES_CHOSEN))}): render the page with the code that wrote it"
        )
    return ROLES_CHOSEN[rule].format(**result["role_setting"]) if rule == ROLE_RULE else ROLES_CHOSEN[rule]


def markdown(result: dict[str, Any], command: str, n: int = THESIS_N) -> str:
    settings = [k for k in result if k.startswith("w") and k.endswith(f"_n{n}")]
    lines = [
        "# Attention analysis: projection onto Σ (Conti 2024)",
        "",
        f"Produced by `{command}` from `{result['checkpoint']}` on the `{result['subset']}` split of "
        f"`{result['data']}` ({result['sentences']} sentences, {result[f'sentences_n{n}']} with n={n} source "
        f"tokens); commit `{result['commit']}`; machine: {result['machine']}; {result['seconds']:.0f} s.",
        "",
        "## What the paper reports, and what is compared with it",
        "",
        f"The paper's numbers come from the master's thesis it is based on: {result['thesis_source']}. For each of "
        "the 8 heads of its model (one 16×16 attention crop `A` per head) the thesis draws random members of its "
        "three families Σ₁, Σ₂, Σ₃ over a grid of two coefficients and keeps the L1-closest `X`; its *mean error per "
        "entry* is `|A − X|` summed over the 256 entries, divided by 256:",
        "",
        "| setting | thesis | `\\|A − X\\|` (8 heads) | mean error per entry (8 heads) | mean |",
        "|---|---|---|---|---|",
    ]
    for key in settings:
        t = result[key]["thesis"]
        if t:
            w, r = key.split("_")[:2]
            lines.append(
                f"| w={w[1:]}, num-pos={r[1:]} | Table {t['table']} | {min(t['distances']):.2f}–"
                f"{max(t['distances']):.2f} | {min(t['per_entry']):.4f}–{max(t['per_entry']):.4f} | "
                f"{t['mean_error_per_entry']:.4f} |"
            )
    lines += [
        "",
        f"Here, on this model's encoder self-attention (every head, the {result[f'sentences_n{n}']} "
        f"{result['subset']} sentences of exactly n={n} source tokens, averaged per head), five numbers per head, "
        "all `|A − X| / n²`:",
        "",
        "- **optimised, row-stochastic**: the exact L1 projection onto Σ₁ ∪ Σ₂(w) ∪ Σ₃(w, r) with `X` an attention "
        "matrix (`X ≥ 0`, rows summing to 1) supported on the structure. It costs twice the mass of `A` outside "
        "the support (that mass has to be moved onto it). The thesis's members are row-stochastic too, but each "
        "also carries n noise entries outside its structure; this projection has none.",
        f"- **optimised + Ẽ, row-stochastic**: the same with the sparse term Ẽ at the thesis's allowance: `X` "
        f"may also use the n={n} entries outside the structure that leave the least mass out (the r columns "
        "are chosen jointly with them), each of any value: as many noise entries as each of the thesis's members "
        "carries (there at random places, with random values) and as the *thesis families, exact* column allows "
        "(there of any value too). `error_with_sparse_term` in `structmt/analysis/project.py`; exact for rows "
        "summing to 1. The goal's verdict below is on the projection without Ẽ.",
        "- **optimised, unconstrained**: `X` copies `A` on the support and its rows need not sum to 1, so the "
        "error is the mass outside: half the row-stochastic error, for an `X` that is not an attention matrix.",
        "- **thesis procedure**: the thesis's random search reimplemented (`thesis_random_search` in "
        "`structmt/analysis/project.py`, seeded): for each pair (c_d, c_sp) on the grid 0, 0.1, …, 1, "
        f"{result['draws']} random members of each family — Σ₁: diagonal 1 − 0.1·U plus c_sp × sparse uniform "
        "noise (n entries, none on the diagonal); Σ₂(w): each band entry kept with probability 0.6, values "
        "U(0.7, 1), plus c_sp × noise; Σ₃: diagonal c_d·U(0.7, 1) in which num-pos segments of w rows at least "
        "w apart attend to their first token, plus 0.5 × noise; rows normalised — and the closest of all. "
        "Members are drawn afresh for every sentence and shared by its heads. (The thesis's loop also runs over "
        "a third coefficient, c_v, that no member uses: 11 times as many draws, which `--draws 330` matches.)",
        "- **thesis families, exact**: the best any member of the thesis's families could reach: the exact "
        "row-stochastic L1 optimum over matrices shaped like them (structure plus n off-diagonal noise entries).",
        "",
        "The thesis's Σ₃ is not this project's Σ₃(w, r) (the band plus r whole columns): its num-pos vertical "
        "segments only span w rows, and it has no band.",
        "",
        "| setting | thesis, quoted mean | thesis procedure on this model | thesis families, exact | "
        "optimised, row-stochastic | optimised + Ẽ, row-stochastic | optimised, unconstrained | "
        "thesis ÷ row-stochastic | thesis ÷ (+ Ẽ, row-stochastic) | thesis ÷ unconstrained |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    verdicts, noise_ratios = [], []
    for key in settings:
        b = result[key]
        w, r = (x[1:] for x in key.split("_")[:2])
        t = b["thesis"]["mean_error_per_entry"] if b["thesis"] else math.nan
        lines.append(
            f"| w={w}, r=num-pos={r} | {t:.4f} | {b['thesis_random_search']:.4f} | {b['thesis_families_exact']:.4f} | "
            f"**{b['row_stochastic_error']:.4f}** | {b['row_stochastic_with_noise']:.4f} | "
            f"{b['mean_error_per_entry']:.4f} | **{_times(t, b['row_stochastic_error'])}** | "
            f"{_times(t, b['row_stochastic_with_noise'])} | {_times(t, b['mean_error_per_entry'])} |"
        )
        if b["thesis"]:
            met = t / b["row_stochastic_error"] >= GOAL_RATIO
            verdicts.append(
                f"{_times(t, b['row_stochastic_error'])} at w={w}, num-pos={r} ({'met' if met else 'not met'})"
            )
            noise_ratios.append(f"{_times(t, b['row_stochastic_with_noise'])} at w={w}, num-pos={r}")
    lines += [
        "",
        "Below the thesis's mean error per entry, row-stochastic (the project's goal: at least 5×): "
        + "; ".join(verdicts)
        + ". With Ẽ at the thesis's allowance of n entries: "
        + "; ".join(noise_ratios)
        + ". The thesis measured its own model on its own sentences; the *thesis procedure* column runs its "
        "search on the same matrices as the optimised projection.",
        "",
    ]
    for key in settings:
        block = result[key]
        w, r = (x[1:] for x in key.split("_")[:2])
        lines += [
            f"## w={w}, r={r}, n={n} (encoder self-attention)",
            "",
            f"Means over heads: **{block['row_stochastic_error']:.5f}** optimised row-stochastic, "
            f"{block['row_stochastic_with_noise']:.5f} optimised + Ẽ row-stochastic, "
            f"{block['mean_error_per_entry']:.5f} optimised unconstrained, {block['thesis_random_search']:.5f} "
            f"thesis procedure, {block['thesis_families_exact']:.5f} thesis families exact.",
            "",
        ]
        if "rare_token_columns" in block:
            lines += [
                f"Of the {r} columns Σ₃ picks (those with the most mass outside the band), "
                f"{100 * block['rare_token_columns']:.0f}% are among the sentence's {r} rarest tokens (the columns "
                "a structured encoder's rare-token heads see: lowest corpus count, special symbols never); the EOS "
                f"column is one of them in {100 * block['eos_column']:.0f}% of the matrices.",
                "",
            ]
        lines += [
            "| head | best role | row-stochastic | + Ẽ, row-stochastic | unconstrained | distance (unconstrained) | "
            "thesis procedure | thesis families, exact | mass inside Σ₃ | rare-token columns | EOS column |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for h in block["heads"]:
            lines.append(
                f"| {h['head']} | {h['role']} | {h['row_stochastic_error']:.5f} | "
                f"{h['row_stochastic_with_noise']:.5f} | {h['mean_error_per_entry']:.5f} | "
                f"{h['min_distance']:.4f} | {h['thesis_random_search']:.5f} | {h['thesis_families_exact']:.5f} | "
                f"{h['mass_inside']:.3f} | {h.get('rare_token_columns', math.nan):.2f} | "
                f"{h.get('eos_column', math.nan):.2f} |"
            )
        u, st = block["whole_set"]["unconstrained"], block["whole_set"]["row_stochastic"]
        lines += [
            "",
            f"Whole {result['subset']} set, all lengths ({u['matrices']} head matrices), Σ₃(w, r): unconstrained mean "
            f"{u['mean']:.5f}, p10 {_quantile(u['p10'])}, median {u['median']:.5f}, p90 {_quantile(u['p90'])}, "
            f"max {u['max']:.5f}; row-stochastic mean {st['mean']:.5f}, median {st['median']:.5f}, "
            f"p90 {_quantile(st['p90'])}.",
            "",
        ]
    ((key, d),) = result["decoder"].items()
    w, r = (x[1:] for x in key.split("_")[:2])
    u, st = d["unconstrained"], d["row_stochastic"]
    lines += [
        f"## Decoder self-attention (w={w}, r={r}, all lengths)",
        "",
        f"{u['matrices']} head matrices, Σ₃(w, r): unconstrained mean {u['mean']:.5f}, median {u['median']:.5f}, "
        f"p90 {_quantile(u['p90'])}; row-stochastic mean {st['mean']:.5f}. (Σ₃ keeps the same r columns for every row; "
        "a structured decoder's rare set is the rarest of each query's prefix, so it can change from row to row.)",
        "",
        f"## Error term Ẽ (w={w}, r={r}, n={n}): k more entries of X outside the structure",
        "",
        "Mean error per entry; the r columns are chosen jointly with Ẽ.",
        "",
        "| k | " + " | ".join(f"{v.replace('_', '-')}, {_bound(e)}" for v, e in K_TRADEOFF) + " |",
        "|---|" + "---|" * len(K_TRADEOFF),
    ]
    tables = [result["k_tradeoff"][f"{v}, eps {e}"] for v, e in K_TRADEOFF]
    lines += [f"| {k[1:]} | " + " | ".join(f"{t[k]:.5f}" for t in tables) + " |" for k in tables[0]]
    lines += [
        "",
        f"## (w, r) grid (n={n} encoder heads, unconstrained; row-stochastic is twice each value)",
        "",
        "![grid](analysis_grid.png)",
        "",
        "## Real attention and fitted structure",
        "",
        "![heads](analysis_heads.png)",
        "",
        "## Head roles found (`roles.json` in this page's folder, for `--struct-heads-from`)",
        "",
        roles_chosen(result),
        "",
        f"- encoder: `{';'.join(result['roles']['encoder'])}`",
        f"- decoder: `{';'.join(result['roles']['decoder'])}`",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from ..console import add_verbose_option, setup

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument(
        "checkpoint", type=existing_file, help="a run's checkpoint, e.g. runs/<run id>/checkpoints/checkpoint_last.pt"
    )
    p.add_argument(
        "data_dir", type=data_bin, help="the data-bin the model was trained on, e.g. runs/data/multi30k_en_de/bin"
    )
    p.add_argument(
        "--subset",
        default="test",
        help="the split of data_dir whose sentences are analysed (default: test, as the committed analyses; for "
        "roles to train with, valid: the pipeline scores the test splits)",
    )
    p.add_argument(
        "--out-dir",
        type=output_dir,
        default=RESULTS_DIR,
        help="where ANALYSIS.md, analysis.json, roles.json and the figures go (default: results/, the committed "
        "analysis, whose roles.json model=structured_multi30k_roles reads; for a trial give a folder under runs/)",
    )
    p.add_argument(
        "--draws",
        type=int_at_least(1),
        default=THESIS_DRAWS,
        help=f"random members per family and grid pair (default {THESIS_DRAWS}, the thesis's per (c_d, c_v, c_sp) "
        "triple; its loop over the unused c_v makes 330 per pair: --draws 330)",
    )
    p.add_argument(
        "--seed",
        type=int_at_least(0, 2**31 - 1),
        default=0,
        help="seed of the thesis's random search (sentence i: seed·2³² + i, so seeds never share a draw)",
    )
    p.add_argument(
        "--pos-window",
        type=int_at_least(0),
        default=POS_WINDOW,
        help=f"band half-width of the positional heads the roles are for (--struct-pos-window of the structured "
        f"model that will read roles.json; default {POS_WINDOW}, its default): a head is positional when the band "
        "|i - j| <= this holds its mass",
    )
    add_verbose_option(p)
    a = p.parse_args(argv)
    if problem := split_problem(a.data_dir, a.subset):  # before the model loads
        p.error(problem)
    setup(a.verbose)
    if a.subset.startswith("test"):  # the pipeline scores every test* split (data.datasets.test_sets)
        warnings.warn(
            f"the roles (roles.json) are chosen on the {a.subset} split, which the pipeline scores: a model built "
            "from them (model.heads_from, --struct-heads-from) is scored on the sentences (their references "
            "teacher-forced) that chose its roles. For a held-out test score, analyse --subset valid",
            stacklevel=1,
        )
    torch.manual_seed(0)
    command = "structmt-analyze " + " ".join(str(x) for x in (argv if argv is not None else sys.argv[1:]))
    a.out_dir.mkdir(parents=True, exist_ok=True)
    with new_temporary(a.out_dir, ".analysis-", directory=True) as drawn:  # figures wait there for the page
        result = analyze(a.checkpoint, a.data_dir, a.subset, drawn, draws=a.draws, seed=a.seed, pos_window=a.pos_window)
        write_report(a.out_dir, result, command, figures=drawn)
    print(f"wrote {a.out_dir / 'ANALYSIS.md'}, analysis.json, roles.json and figures ({result['seconds']:.0f} s)")


def write_report(out_dir: Path, result: dict[str, Any], command: str, figures: Path | None = None) -> None:
    """``analysis.json``, ``ANALYSIS.md``, then the figures drawn in the folder ``figures`` (moved beside them)
    and, last, ``roles.json`` (which ``--struct-heads-from`` reads): each written whole, once every number of the
    report and its page exist, so a run that fails changes none of them."""
    page = markdown(result, command)
    write_text_atomic(out_dir / "analysis.json", json.dumps(result, indent=2) + "\n")
    write_text_atomic(out_dir / "ANALYSIS.md", page)
    for png in sorted(figures.glob("*.png")) if figures is not None else []:
        os.replace(png, out_dir / png.name)
    write_text_atomic(out_dir / "roles.json", json.dumps(result["roles"], indent=2) + "\n")


def render_page(out_dir: Path) -> None:
    """Write ``out_dir/ANALYSIS.md`` again from ``out_dir/analysis.json`` and the command its first line
    names: the page's text changes with this code, its numbers come from the JSON unchanged."""
    page, result = out_dir / "ANALYSIS.md", json.loads((out_dir / "analysis.json").read_text(encoding="utf-8"))
    command = re.search(r"^Produced by `([^`]+)`", page.read_text(encoding="utf-8"), re.M)
    if command is None:
        raise ValueError(f"{page}: no 'Produced by `COMMAND`' line to keep")
    try:
        text = markdown(result, command.group(1))
    except KeyError as err:
        raise ValueError(
            f"{out_dir / 'analysis.json'} lacks {err}, which this code reports: it was made by older code. Analyse "
            "the checkpoint again (the command on the page's first line) with --out-dir a folder of its own, "
            "not results/ (whose roles.json model=structured_multi30k_roles reads)"
        ) from None
    write_text_atomic(page, text)


if __name__ == "__main__":
    main()
