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

import codecs
import csv
import io
import itertools
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

from filelock import FileLock

from ..files import utf8_error_at, write_text_atomic
from ..paths import RESULTS_DIR, RUNS_DIR


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
    #: the other structure options not at their default (``ModelSpec.options_label``; "" = none, or a dense run)
    options: str = ""


COLUMNS = [f.name for f in fields(LeaderboardRow)]
#: the columns added after the first leaderboards were written (those with a default, all ""): a file without
#: some of the last of them is read with them empty, and written with them
_APPENDED = tuple(f.name for f in fields(LeaderboardRow) if f.default is not MISSING)

#: a row as :func:`add_rows` takes it: a :class:`LeaderboardRow`, or a mapping of some of its columns
Row = LeaderboardRow | Mapping[str, Any]


#: columns that hold numbers: "" (not recorded) is allowed in all of them but ``bleu``
INT_COLUMNS = ("window", "rare", "params", "updates", "seed")
FLOAT_COLUMNS = ("train_seconds", "train_tokens_per_s", "bleu", "chrf", "p_value_vs_dense", "bleu_ci95")


def _number_problem(row: Mapping[str, Any]) -> str:
    """What is wrong with a row's numbers ("" when nothing is)."""
    for column in INT_COLUMNS + FLOAT_COLUMNS:
        value = str(row.get(column, ""))
        if value == "" and column != "bleu":
            continue
        try:
            ok = math.isfinite(int(value) if column in INT_COLUMNS else float(value))
        except ValueError:
            ok = False
        if not ok:
            return f"column {column} is {value!r}, not {'an integer' if column in INT_COLUMNS else 'a number'}"
    return ""


def read_rows(csv_path: Path) -> list[dict[str, str]]:
    """The rows of ``leaderboard.csv``, each with exactly :data:`COLUMNS` (a UTF-8 BOM is accepted; a file from
    before the columns of :data:`_APPENDED` existed has them empty).

    A file the writer would not leave (another header, a row with more or fewer fields, a bad number, one
    evaluation twice, bytes that are not UTF-8) is a ``ValueError`` naming the file and line: rewriting it
    would drop what does not fit, so it is to be fixed by hand first."""
    if not csv_path.exists():
        return []
    data = csv_path.read_bytes().removeprefix(codecs.BOM_UTF8)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line, _ = utf8_error_at(data, e)
        raise ValueError(
            f"{csv_path}: line {line}: byte 0x{data[e.start]:02x} is not UTF-8; save the file as UTF-8"
        ) from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            return []
        width = len(header)
        if header != COLUMNS[:width] or any(c not in _APPENDED for c in COLUMNS[width:]):
            unknown = [c for c in header if c not in COLUMNS]
            missing = [c for c in COLUMNS if c not in header]
            what = f"unknown {unknown}, missing {missing}" if unknown or missing else "repeated or reordered columns"
            raise ValueError(
                f"{csv_path}: line 1: the header is not the leaderboard's columns ({what}); adding a row rewrites "
                "the file with exactly those columns and would lose the others, so fix the header by hand (it is "
                + ",".join(COLUMNS)
                + ") and keep other columns in a file of their own"
            )
        rows: list[dict[str, str]] = []
        seen: dict[tuple[str, str, str], tuple[int, dict[str, str]]] = {}
        line = reader.line_num + 1
        for fields in reader:
            if fields:  # not a blank line
                where = f"{csv_path}: line {line}"
                if len(fields) != width:
                    raise ValueError(
                        f"{where}: {len(fields)} fields where the header has {width} (a stray or missing "
                        "comma, or a field with a comma but no quotes?); fix the line by hand"
                    )
                row = dict(zip(COLUMNS, fields, strict=False)) | {c: "" for c in COLUMNS[width:]}
                if problem := _number_problem(row):
                    raise ValueError(f"{where}: {problem}; fix the value by hand")
                earlier, other = seen.setdefault(_key(row), (line, row))
                if earlier != line:
                    differ = [c for c in COLUMNS if row[c] != other[c]]
                    what = f"differs only in {differ}" if differ else "is identical"
                    raise ValueError(
                        f"{where} records the same evaluation (run_id, test_set, hypothesis) as line {earlier} and "
                        f"{what}: a re-run has its own hypothesis file; delete the line that is wrong"
                    )
                rows.append(row)
            line = reader.line_num + 1
    except csv.Error as e:
        raise ValueError(f"{csv_path}: line {reader.line_num}: {e}; fix the line by hand") from None
    return rows


def _as_dict(row: Row) -> dict[str, Any]:
    return asdict(row) if isinstance(row, LeaderboardRow) else dict(row)


def _render_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="raise", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: row.get(c, "") for c in COLUMNS})
    return buf.getvalue()


def _lock(csv_path: Path) -> FileLock:
    """The lock every writer of ``csv_path`` (and of what is rendered from it) holds."""
    return FileLock(str(csv_path) + ".lock", timeout=120)


def _key(row: Mapping[str, Any]) -> tuple[str, str, str]:
    return str(row["run_id"]), str(row["test_set"]), str(row.get("hypothesis", ""))


def add_rows(csv_path: Path, rows_to_add: Sequence[Row]) -> int:
    """Add rows not yet present (by ``(run_id, test_set, hypothesis)``); returns how many were added.
    Columns a mapping lacks are left empty."""
    new_rows = [_as_dict(r) for r in rows_to_add]
    unknown = {k for row in new_rows for k in row} - set(COLUMNS)
    if unknown:
        raise ValueError(f"leaderboard rows have unknown columns {sorted(unknown)}")
    for row in new_rows:
        if problem := _number_problem(row):
            raise ValueError(f"leaderboard row of {row.get('run_id')} on {row.get('test_set')}: {problem}")
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with _lock(csv_path):
        rows = read_rows(csv_path)
        seen = {_key(r) for r in rows}
        added = []
        for row in new_rows:
            if _key(row) not in seen:
                seen.add(_key(row))
                added.append(row)
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
                    f"| {run} | {r['arch']}{f' {options}' if (options := r['options']) else ''} | {r['window']} | "
                    f"{r['rare']} | {r['heads']} | {r['cross']} | "
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


#: columns that the seeds of one setting share (besides the labels a headline row is grouped by)
SEED_INVARIANT = ("direction", "params", "updates")


def _check_seeds_of_one_setting(firsts: list[dict[str, str]], where: str) -> None:
    """``firsts``: the first evaluations grouped as one setting; each must be a seed of its own."""
    for a, b in itertools.pairwise(firsts):  # sorted by seed
        if int(a["seed"]) == int(b["seed"]):
            raise ValueError(
                f"{where}: runs {a['run_id']} and {b['run_id']} both claim seed {a['seed']}: they are different "
                "settings under one schedule name; give one of them a schedule name of its own"
            )
    for column in SEED_INVARIANT:
        other = next((r for r in firsts if r.get(column, "") != firsts[0].get(column, "")), None)
        if other is not None:
            raise ValueError(
                f"{where}: runs {firsts[0]['run_id']} ({column} {firsts[0].get(column, '')}) and {other['run_id']} "
                f"({column} {other.get(column, '')}) are not seeds of one setting; give one of them a schedule "
                "name of its own"
            )


def headline(rows: list[dict[str, str]], data: str, schedule: str) -> str:
    """The README's headline table of one data set and schedule: per test set and model, BLEU and chrF as
    mean ± sd over seeds (each run's first evaluation), each seed's BLEU with its paired bootstrap p-value
    against the dense run of the same seed, the commits (``trained → scored`` where the row names the training
    commit), and how many re-runs the leaderboard also holds.

    A table row averages the seeds of one setting: two runs of one seed in it (a setting the labels do not
    show, such as ``train.lr``, changes the run id but not the labels), or runs that differ in
    :data:`SEED_INVARIANT` columns, are a ``ValueError`` naming both runs."""
    runs = {k: e for k, e in evaluations(rows).items() if e[0]["data"] == data and e[0]["schedule"] == schedule}
    groups: dict[tuple[str, ...], list[list[dict[str, str]]]] = {}
    for (_, test), evals in runs.items():
        r = evals[0]
        model = (test, "structured" if r["window"] != "" else "dense", r["arch"], r["window"], r["rare"])
        groups.setdefault(model + (r["heads"], r.get("cross", ""), r.get("options", "")), []).append(evals)
    lines = [
        "| test set | model | w | r | seeds | BLEU | chrF | per seed: BLEU (p vs dense) | updates "
        "| commits (trained → scored) "
        "| re-runs |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key in sorted(groups, key=lambda k: (k[0], k[1] == "structured", k[2:])):
        test, _, arch, window, rare, heads, cross, options = key
        evals = sorted(groups[key], key=lambda e: int(e[0]["seed"]))
        firsts = [e[0] for e in evals]
        extras = "".join(f" {label}" for label in (heads, cross, options) if label not in ("", "auto"))
        shape = f" w={window} r={rare}" if window else ""
        _check_seeds_of_one_setting(firsts, f"headline of {schedule} on {data}, {test}, {arch}{extras}{shape}")
        per_seed = ", ".join(
            f"{r['seed']}: {float(r['bleu']):.2f}"
            + (f" (p {float(r['p_value_vs_dense']):.3f})" if r["p_value_vs_dense"] != "" else "")
            for r in firsts
        )
        trained = [f"{short_commit(r['train_commit'])} → " if r.get("train_commit") else "" for r in firsts]
        commits = sorted({t + short_commit(r["git_commit"]) for t, r in zip(trained, firsts, strict=True)})
        lines.append(
            f"| {test} | {arch}{extras} | {window or '–'} | {rare or '–'} | {len(firsts)} | "
            f"{mean_sd([float(r['bleu']) for r in firsts])} | {mean_sd([float(r['chrf']) for r in firsts])} | "
            f"{per_seed} | {firsts[0]['updates']} | "
            f"{', '.join(commits)} | "
            f"{sum(len(e) - 1 for e in evals)} |"
        )
    sigs = sorted({e[0]["bleu_signature"] for e in runs.values()})
    return "\n".join(lines) + "\n\nBLEU signature: " + "; ".join(f"`{s}`" for s in sigs) + "\n"


def write_markdown(csv_path: Path, md_path: Path) -> str:
    text = render_markdown(read_rows(csv_path))
    write_text_atomic(md_path, text)
    return text


#: runs per test set that ``leaderboard.png`` shows (the best; ``LEADERBOARD.md`` lists them all), so the figure
#: stays within a bounded size however many runs the CSV holds
CHART_RUNS = 25


def write_chart(csv_path: Path, png_path: Path, top: int = CHART_RUNS) -> None:
    """BLEU of the ``top`` best runs (their first evaluations, as the markdown) per test set: one panel each."""
    from ..figures import pyplot, save

    plt = pyplot()
    per_test: dict[str, list[tuple[float, str]]] = {}
    for (run, test), evals in evaluations(read_rows(csv_path)).items():
        per_test.setdefault(test, []).append((float(evals[0]["bleu"]), run))
    tests = sorted(per_test) or ["(no runs)"]
    shown = max([min(top, len(v)) for v in per_test.values()] + [1])
    fig, axes = plt.subplots(1, len(tests), figsize=(6.5 * len(tests), 1.2 + 0.28 * shown), squeeze=False)
    for ax, test in zip(axes[0], tests, strict=True):
        ranked = sorted(per_test.get(test, []), reverse=True)
        best = ranked[:top][::-1]  # best at the top
        bars = ax.barh(range(len(best)), [b for b, _ in best])
        ax.bar_label(bars, fmt="%.2f", fontsize=6, padding=2)
        ax.set_yticks(range(len(best)), [run for _, run in best], fontsize=6)
        ax.set_xlabel("sacreBLEU")
        more = f", best {top} of {len(ranked)} runs" if len(ranked) > top else ""
        ax.set_title(f"{test}{more}", fontsize=8)
    fig.suptitle("structmt leaderboard")
    save(fig, png_path)


def publish(results_dir: Path) -> None:
    """Render ``LEADERBOARD.md`` and ``leaderboard.png`` from the CSV, holding its lock: no row is added
    between reading the CSV and writing them, so what the last publish writes shows every row."""
    csv_path = results_dir / "leaderboard.csv"
    with _lock(csv_path):
        write_markdown(csv_path, results_dir / "LEADERBOARD.md")
        write_chart(csv_path, results_dir / "leaderboard.png")


def main(argv: list[str] | None = None) -> None:
    """``structmt-leaderboard``: re-render the leaderboard and (re)build its W&B table."""
    import argparse

    from ..console import add_verbose_option, setup
    from .tracking import DEFAULT_PROJECT, WandbSettings, log_leaderboard

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--wandb", action="store_true", help="also rebuild the W&B leaderboard table")
    p.add_argument("--wandb-dir", type=Path, default=RUNS_DIR / "wandb")
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
        rows = read_rows(csv_path)
        schedules = sorted({r["schedule"] for r in rows if r["data"] == a.data})
        if not schedules:
            known = ", ".join(sorted({r["data"] for r in rows}))
            raise SystemExit(f"error: {csv_path} has no rows of --data {a.data}; data sets there: {known}")
        if a.headline not in schedules:
            raise SystemExit(
                f"error: {csv_path} has no rows of schedule {a.headline!r} on {a.data}; schedules there: "
                + ", ".join(schedules)
            )
        print(headline(rows, a.data, a.headline))
        return
    publish(a.results_dir)
    print(render_markdown(read_rows(csv_path)))
    if a.wandb:
        folder = log_leaderboard(read_rows(csv_path), COLUMNS, a.wandb_dir, WandbSettings(project=a.project))
        print(f"W&B leaderboard table: {folder} (upload an offline run with: wandb sync {folder})")


if __name__ == "__main__":
    main()
