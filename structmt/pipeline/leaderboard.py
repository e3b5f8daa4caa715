"""The BLEU leaderboard: ``results/leaderboard.csv`` (one row per evaluation of a run on a
test set), rendered to ``results/LEADERBOARD.md``.

Rows are keyed by ``(run_id, test_set, hypothesis)``: evaluating a run again
with the same hypotheses adds nothing, while a re-run whose hypotheses differ
(another machine, another commit) keeps its own hypothesis file and becomes a
row of its own, with its commit and machine; no result is ever replaced or
dropped.  Writers hold a file lock and replace the file atomically, so
concurrent sweep jobs never lose or duplicate a row.
"""

from __future__ import annotations

import csv
import io
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from filelock import FileLock

from ..files import write_text_atomic
from ..paths import REPO_ROOT


@dataclass
class LeaderboardRow:
    """One run on one test set; the fields, in order, are the columns of ``leaderboard.csv``."""

    run_id: str
    data: str
    schedule: str
    direction: str
    test_set: str
    arch: str
    #: the structure's window and rare-token count ("" for dense runs)
    window: int | str
    rare: int | str
    #: the role mix (``ModelSpec.heads_label``; "" for dense runs)
    heads: str
    #: the cross-attention band (``ModelSpec.cross_label``; "" = dense)
    cross: str
    params: int
    updates: int
    train_seconds: float
    train_tokens_per_s: float
    bleu: float
    chrf: float
    bleu_signature: str
    chrf_signature: str
    #: paired bootstrap against the dense run of the same data and schedule ("" without one)
    p_value_vs_dense: float | str
    bleu_ci95: float | str
    seed: int
    #: the commit of the code that decoded and scored (``+dirty``: with uncommitted changes)
    git_commit: str
    #: the kept hypotheses (relative to the repository when inside it)
    hypothesis: str
    #: the commit of the code that trained ("" for rows from before it was recorded)
    train_commit: str = ""
    #: the machine of the evaluation: its CPU, and its GPU where fairseq-generate used one ("" before it was recorded)
    machine: str = ""


COLUMNS = [f.name for f in fields(LeaderboardRow)]

#: a row as :func:`add_rows` takes it: a :class:`LeaderboardRow`, or a mapping of some of its columns
Row = LeaderboardRow | Mapping[str, Any]


def read_rows(csv_path: Path) -> list[dict[str, str]]:
    if not csv_path.exists():
        return []
    with open(csv_path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _as_dict(row: Row) -> dict[str, Any]:
    return asdict(row) if isinstance(row, LeaderboardRow) else dict(row)


def _render_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="raise", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: row.get(c, "") for c in COLUMNS})
    return buf.getvalue()


def _key(row: Mapping[str, Any]) -> tuple[str, str, str]:
    return str(row["run_id"]), str(row["test_set"]), str(row.get("hypothesis", ""))


def add_rows(csv_path: Path, rows_to_add: Sequence[Row]) -> int:
    """Add rows not yet present (by ``(run_id, test_set, hypothesis)``); returns how many were added.
    Columns a mapping lacks are left empty."""
    new_rows = [_as_dict(r) for r in rows_to_add]
    unknown = {k for row in new_rows for k in row} - set(COLUMNS)
    if unknown:
        raise ValueError(f"leaderboard rows have unknown columns {sorted(unknown)}")
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(csv_path) + ".lock", timeout=120):
        rows = read_rows(csv_path)
        seen = {_key(r) for r in rows}
        added = [r for r in new_rows if _key(r) not in seen]
        if added:
            write_text_atomic(csv_path, _render_csv(rows + added))
        return len(added)


def short_commit(commit: str) -> str:
    """A commit as tables show it: 8 hex digits, ``+dirty`` kept."""
    sha, _, rest = commit.partition("+")
    return sha[:8] + (f"+{rest}" if rest else "")


def evaluations(rows: list[dict[str, str]]) -> dict[tuple[str, str], list[dict[str, str]]]:
    """The rows of each ``(run_id, test_set)``, first evaluation first (the others are re-runs)."""
    out: dict[tuple[str, str], list[dict[str, str]]] = {}
    for r in rows:
        out.setdefault((r["run_id"], r["test_set"]), []).append(r)
    return out


def render_markdown(rows: list[dict[str, str]], title: str = "Leaderboard") -> str:
    """A markdown table per test set, best BLEU first; a re-run is listed under its first evaluation."""
    out = [
        f"# {title}",
        "",
        "Generated from `results/leaderboard.csv` by `structmt.pipeline.leaderboard`. One row per evaluation: "
        "a re-run whose hypotheses differ from an earlier evaluation of the same run (another machine or commit) "
        "is its own row, marked *re-run*.",
        "",
    ]
    runs = evaluations(rows)
    for test in sorted({r["test_set"] for r in rows}):
        out += [
            f"## {test}",
            "",
            "| run | arch | w | r | heads | cross | seed | BLEU | chrF | p vs dense | updates | train s | tok/s "
            "| commit | machine |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        firsts = sorted((e for (_, t), e in runs.items() if t == test), key=lambda e: -float(e[0]["bleu"] or 0))
        for evals in firsts:
            for i, r in enumerate(evals):
                run = r["run_id"] if i == 0 else f"↳ *re-run* {i}"
                out.append(
                    f"| {run} | {r['arch']} | {r['window']} | {r['rare']} | {r['heads']} | {r.get('cross', '')} | "
                    f"{r['seed']} | {r['bleu']} | {r['chrf']} | {r['p_value_vs_dense']} | {r['updates']} | "
                    f"{r['train_seconds']} | {r['train_tokens_per_s']} | {short_commit(r['git_commit'])} | "
                    f"{r.get('machine') or '–'} |"
                )
        sigs = sorted({r["bleu_signature"] for r in rows if r["test_set"] == test})
        out += ["", "BLEU signature: " + "; ".join(f"`{s}`" for s in sigs), ""]
    return "\n".join(out) + "\n"


def mean_sd(values: Sequence[float]) -> str:
    """``mean ± sd`` (sample standard deviation) to 2 decimals; one value: just that value."""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def headline(rows: list[dict[str, str]], data: str, schedule: str) -> str:
    """The README's headline table of one data set and schedule: per test set and model, BLEU and chrF as
    mean ± sd over seeds (each run's first evaluation), each seed's BLEU with its paired bootstrap p-value
    against the dense run of the same seed, the commits (``trained → scored`` where the row names the training
    commit), and how many re-runs the leaderboard also holds."""
    runs = {k: e for k, e in evaluations(rows).items() if e[0]["data"] == data and e[0]["schedule"] == schedule}
    groups: dict[tuple[str, ...], list[list[dict[str, str]]]] = {}
    for (_, test), evals in runs.items():
        r = evals[0]
        model = (test, "structured" if r["window"] != "" else "dense", r["arch"], r["window"], r["rare"])
        groups.setdefault(model + (r["heads"], r.get("cross", "")), []).append(evals)
    lines = [
        "| test set | model | w | r | seeds | BLEU | chrF | per seed: BLEU (p vs dense) | updates "
        "| commits (trained → scored) "
        "| re-runs |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key in sorted(groups, key=lambda k: (k[0], k[1] == "structured", k[2:])):
        test, _, arch, window, rare, heads, cross = key
        evals = sorted(groups[key], key=lambda e: int(e[0]["seed"]))
        firsts = [e[0] for e in evals]
        per_seed = ", ".join(
            f"{r['seed']}: {float(r['bleu']):.2f}"
            + (f" (p {float(r['p_value_vs_dense']):.3f})" if r["p_value_vs_dense"] != "" else "")
            for r in firsts
        )
        trained = [f"{short_commit(r['train_commit'])} → " if r.get("train_commit") else "" for r in firsts]
        commits = sorted({t + short_commit(r["git_commit"]) for t, r in zip(trained, firsts, strict=True)})
        extras = "".join(f" {label}" for label in (heads, cross) if label not in ("", "auto"))
        lines.append(
            f"| {test} | {arch}{extras} | {window or '–'} | {rare or '–'} | {len(firsts)} | "
            f"{mean_sd([float(r['bleu']) for r in firsts])} | {mean_sd([float(r['chrf']) for r in firsts])} | "
            f"{per_seed} | {'/'.join(sorted({r['updates'] for r in firsts}))} | "
            f"{', '.join(commits)} | "
            f"{sum(len(e) - 1 for e in evals)} |"
        )
    sigs = sorted({e[0]["bleu_signature"] for e in runs.values()})
    return "\n".join(lines) + "\n\nBLEU signature: " + "; ".join(f"`{s}`" for s in sigs) + "\n"


def write_markdown(csv_path: Path, md_path: Path) -> str:
    text = render_markdown(read_rows(csv_path))
    write_text_atomic(md_path, text)
    return text


def write_chart(csv_path: Path, png_path: Path) -> None:
    """Bar chart of BLEU per run, one group of bars per test set."""
    from ..figures import pyplot, save

    plt = pyplot()
    rows = read_rows(csv_path)
    runs = sorted({r["run_id"] for r in rows})
    tests = sorted({r["test_set"] for r in rows})
    bleu = {(r["run_id"], r["test_set"]): float(r["bleu"]) for r in rows}
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(runs) * len(tests)), 4.5))
    width = 0.8 / max(1, len(tests))
    for i, test in enumerate(tests):
        xs = [j + i * width for j in range(len(runs))]
        ax.bar(xs, [bleu.get((run, test), 0.0) for run in runs], width, label=test)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(runs))])
    ax.set_xticklabels(runs, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("sacreBLEU")
    ax.legend()
    ax.set_title("structmt leaderboard")
    save(fig, png_path)


def publish(results_dir: Path) -> None:
    """Render ``LEADERBOARD.md`` and ``leaderboard.png`` from the CSV."""
    csv_path = results_dir / "leaderboard.csv"
    write_markdown(csv_path, results_dir / "LEADERBOARD.md")
    write_chart(csv_path, results_dir / "leaderboard.png")


def main(argv: list[str] | None = None) -> None:
    """``structmt-leaderboard``: re-render the leaderboard and (re)build its W&B table."""
    import argparse

    from ..console import add_verbose_option, setup
    from .tracking import DEFAULT_PROJECT, log_leaderboard

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--results-dir", type=Path, default=REPO_ROOT / "results")
    p.add_argument("--wandb", action="store_true", help="also rebuild the W&B leaderboard table")
    p.add_argument("--wandb-dir", type=Path, default=REPO_ROOT / "runs" / "wandb")
    p.add_argument("--project", default=DEFAULT_PROJECT)
    p.add_argument("--headline", metavar="SCHEDULE", help="print the README headline table of this schedule")
    p.add_argument("--data", default="multi30k_en_de")
    add_verbose_option(p)
    a = p.parse_args(argv)
    setup(a.verbose)
    csv_path = a.results_dir / "leaderboard.csv"
    if not csv_path.exists():
        raise SystemExit(f"error: {csv_path} does not exist; run an experiment first (make demo)")
    if a.headline:
        print(headline(read_rows(csv_path), a.data, a.headline))
        return
    publish(a.results_dir)
    print(render_markdown(read_rows(csv_path)))
    if a.wandb:
        folder = log_leaderboard(read_rows(csv_path), COLUMNS, a.wandb_dir, a.project)
        print(f"W&B leaderboard table: {folder} (upload an offline run with: wandb sync {folder})")


if __name__ == "__main__":
    main()
