"""The BLEU leaderboard: ``results/leaderboard.csv`` (one row per run and test set),
rendered to ``results/LEADERBOARD.md``.

Rows are keyed by ``(run_id, test_set)``: appending a row that exists replaces
nothing and adds nothing.  Writers hold a file lock and replace the file
atomically, so concurrent sweep jobs never lose or duplicate a row.
"""

from __future__ import annotations

import csv
import io
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
    git_commit: str
    #: the kept hypotheses (relative to the repository when inside it)
    hypothesis: str


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


def add_rows(csv_path: Path, rows_to_add: Sequence[Row]) -> int:
    """Add rows not yet present (by ``(run_id, test_set)``); returns how many were added.
    Columns a mapping lacks are left empty."""
    new_rows = [_as_dict(r) for r in rows_to_add]
    unknown = {k for row in new_rows for k in row} - set(COLUMNS)
    if unknown:
        raise ValueError(f"leaderboard rows have unknown columns {sorted(unknown)}")
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(csv_path) + ".lock", timeout=120):
        rows = read_rows(csv_path)
        seen = {(r["run_id"], r["test_set"]) for r in rows}
        added = [r for r in new_rows if (str(r["run_id"]), str(r["test_set"])) not in seen]
        if added:
            write_text_atomic(csv_path, _render_csv(rows + added))
        return len(added)


def render_markdown(rows: list[dict[str, str]], title: str = "Leaderboard") -> str:
    """A markdown table per test set, best BLEU first."""
    out = [f"# {title}", "", "Generated from `results/leaderboard.csv` by `structmt.pipeline.leaderboard`.", ""]
    for test in sorted({r["test_set"] for r in rows}):
        out += [
            f"## {test}",
            "",
            "| run | arch | w | r | heads | cross | BLEU | chrF | p vs dense | updates | train s | tok/s | commit |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        subset = sorted((r for r in rows if r["test_set"] == test), key=lambda r: -float(r["bleu"] or 0))
        for r in subset:
            out.append(
                f"| {r['run_id']} | {r['arch']} | {r['window']} | {r['rare']} | {r['heads']} | {r.get('cross', '')} | "
                f"{r['bleu']} | "
                f"{r['chrf']} | {r['p_value_vs_dense']} | {r['updates']} | {r['train_seconds']} | "
                f"{r['train_tokens_per_s']} | {r['git_commit'][:8]} |"
            )
        sigs = sorted({r["bleu_signature"] for r in subset})
        out += ["", "BLEU signature: " + "; ".join(f"`{s}`" for s in sigs), ""]
    return "\n".join(out) + "\n"


def headline(rows: list[dict[str, str]], data: str, schedule: str) -> str:
    """The README's headline table: one line per model and test set of one data set and schedule."""
    subset = [r for r in rows if r["data"] == data and r["schedule"] == schedule]
    lines = [
        "| test set | model | w | r | BLEU | chrF | p vs dense | 95% CI | updates | train h | train tok/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(subset, key=lambda r: (r["test_set"], bool(r["window"]), r["run_id"])):
        lines.append(
            f"| {r['test_set']} | {r['arch']} | {r['window'] or '–'} | {r['rare'] or '–'} | {r['bleu']} | "
            f"{r['chrf']} | {r['p_value_vs_dense'] or '–'} | {('±' + r['bleu_ci95']) if r['bleu_ci95'] else '–'}"
            f" | {r['updates']} | {float(r['train_seconds']) / 3600:.2f} | {r['train_tokens_per_s']} |"
        )
    sigs = sorted({r["bleu_signature"] for r in subset})
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

    from .tracking import DEFAULT_PROJECT, log_leaderboard

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--results-dir", type=Path, default=REPO_ROOT / "results")
    p.add_argument("--wandb", action="store_true", help="also rebuild the W&B leaderboard table")
    p.add_argument("--wandb-dir", type=Path, default=REPO_ROOT / "runs" / "wandb")
    p.add_argument("--project", default=DEFAULT_PROJECT)
    p.add_argument("--headline", metavar="SCHEDULE", help="print the README headline table of this schedule")
    p.add_argument("--data", default="multi30k_en_de")
    a = p.parse_args(argv)
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
