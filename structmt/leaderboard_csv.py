"""``results/leaderboard.csv``, the file: its columns (:class:`LeaderboardRow`), reading it strictly
(:func:`read_rows`) and adding rows to it under a lock (:func:`add_rows`), and the cells other code
reads back (:func:`short_commit`, :func:`cross_cell` / :func:`cross_window`).

Rows are keyed by ``(run_id, test_set, hypothesis)``: evaluating a run again with the same hypotheses
adds nothing, while a re-run whose hypotheses differ (another machine, another commit) keeps its own
hypothesis file and becomes a row of its own; no result is ever replaced or dropped (a value left empty,
such as a p-value against a dense run not yet evaluated, can be filled in later: :func:`fill_empty`).  Writers hold a
file lock and replace the file atomically, so concurrent sweep jobs never lose or duplicate a row.
The pipeline writes it and renders it (:mod:`structmt.pipeline.leaderboard`); the benchmark report
reads it too, so it lives beside both.
"""

from __future__ import annotations

import codecs
import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

from filelock import FileLock

from .files import decode_utf8, link_target, write_text_atomic


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
    #: sacreBLEU's paired bootstrap (:data:`BOOTSTRAP_SAMPLES` resamples) against the dense run of the same data
    #: and schedule ("" without one); the pages print it with :func:`p_text`
    p_value_vs_dense: float | str
    bleu_ci95: float | str
    seed: int
    #: the commit of the code that decoded and scored (``+dirty``: with uncommitted changes)
    git_commit: str
    #: the kept hypotheses (relative to the repository when inside it)
    hypothesis: str
    #: the commit of the code that trained ("" for rows from before it was recorded)
    train_commit: str = ""
    #: the machine of the evaluation (``provenance.machine_label``): its CPU with the instruction set torch's kernels
    #: use (the CPU alone before 2026-12-05), and its GPU where fairseq-generate used one ("" before it was recorded)
    machine: str = ""
    #: the other structure options not at their default (``ModelSpec.options_label``; "" = none, or a dense run),
    #: and ``beam=N`` for a decoding beam other than the schedule's
    options: str = ""
    #: the machine that trained (``train.json``'s: the session that trained the last update; a run resumed on another
    #: machine ran its earlier sessions elsewhere), which its seconds and tokens/s were measured on ("" before it was
    #: recorded, 2026-12-06)
    train_machine: str = ""


COLUMNS = [f.name for f in fields(LeaderboardRow)]
#: the columns added after the first leaderboards were written (those with a default, all ""): a file without
#: some of the last of them is read with them empty, and written with them
_APPENDED = tuple(f.name for f in fields(LeaderboardRow) if f.default is not MISSING)

#: a row as :func:`add_rows` takes it: a :class:`LeaderboardRow`, or a mapping of some of its columns
Row = LeaderboardRow | Mapping[str, Any]


#: columns that hold numbers: "" (not recorded) is allowed in all of them but ``bleu``
INT_COLUMNS = ("window", "rare", "params", "updates", "seed")
#: the paired bootstrap behind ``p_value_vs_dense``: sacreBLEU's ``--paired-bs`` at its defaults, its resamples and
#: their seed (``sacrebleu --paired-bs`` without SACREBLEU_SEED)
BOOTSTRAP_SAMPLES, BOOTSTRAP_SEED = 1000, 12345
#: its smallest p-value, 1 / (BOOTSTRAP_SAMPLES + 1) (no resample as far out as the observed difference), as a row
#: stores it (4 decimals: 0.001)
P_FLOOR = round(1 / (BOOTSTRAP_SAMPLES + 1), 4)


def score_text(value: float | str) -> str:
    """A BLEU or chrF score as every page and summary prints it, to 2 decimals as sacreBLEU does (a row stores the
    float, ``24.6``); "" without one."""
    return "" if value == "" else f"{float(value):.2f}"


def p_text(value: float | str, decimals: int | None = None, relation: bool = False) -> str:
    """A row's ``p_value_vs_dense`` as a page prints it: ``≤ 0.001`` at :data:`P_FLOOR` (that is all it says), else
    the value (to ``decimals``), after ``= `` with ``relation``; "" without one."""
    if value == "":
        return ""
    if float(value) <= P_FLOOR:
        return f"≤ {P_FLOOR:g}"
    text = f"{float(value):.{decimals}f}" if decimals is not None else str(value)
    return f"= {text}" if relation else text


FLOAT_COLUMNS = ("train_seconds", "train_tokens_per_s", "bleu", "chrf", "p_value_vs_dense", "bleu_ci95")


def _field_problem(row: Mapping[str, Any]) -> str:
    """What is wrong with a row's fields ("" when nothing is): a field with spaces around it (a hand edit, ``a, b``;
    the labels are compared as they are: ``" 3"`` would drop a seed from the headline, and int() would accept it),
    or a number that is not one."""
    for column, value in row.items():
        if str(value) != str(value).strip():
            return f"column {column} is {str(value)!r}, with spaces around it"
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
    p = str(row.get("p_value_vs_dense", ""))
    if p != "" and not 0 < float(p) <= 1:
        return f"column p_value_vs_dense is {p!r}, not a p-value (0 < p <= 1)"
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
    text = decode_utf8(data, str(csv_path), "save the file as UTF-8", ValueError)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            return []
        width = len(header)
        if header != COLUMNS[:width] or any(c not in _APPENDED for c in COLUMNS[width:]):
            unknown = [c for c in header if c not in COLUMNS]
            last = max((COLUMNS.index(c) for c in header if c in COLUMNS), default=-1)
            tail = COLUMNS[last + 1 :] if all(c in _APPENDED for c in COLUMNS[last + 1 :]) else []  # may be left out
            missing = [c for c in COLUMNS if c not in header and c not in tail]
            what = f"unknown {unknown}, missing {missing}" if unknown or missing else "repeated or reordered columns"
            raise ValueError(
                f"{csv_path}:1: the header is not the leaderboard's columns ({what}); adding a row rewrites "
                "the file with exactly those columns and would lose the others, so fix the header by hand (it is "
                + ",".join(COLUMNS)
                + ") and keep other columns in a file of their own"
            )
        rows: list[dict[str, str]] = []
        seen: dict[tuple[str, str, str], tuple[int, dict[str, str]]] = {}
        line = reader.line_num + 1
        for fields in reader:
            if fields:  # not a blank line
                where = f"{csv_path}:{line}"
                if len(fields) != width:
                    raise ValueError(
                        f"{where}: {len(fields)} fields where the header has {width} (a stray or missing "
                        "comma, or a field with a comma but no quotes?); fix the line by hand"
                    )
                row = dict(zip(COLUMNS, fields, strict=False)) | {c: "" for c in COLUMNS[width:]}
                if problem := _field_problem(row):
                    raise ValueError(f"{where}: {problem}; fix the value by hand")
                earlier, other = seen.setdefault(row_key(row), (line, row))
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
        raise ValueError(f"{csv_path}:{reader.line_num}: {e}; fix the line by hand") from None
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


def lock(csv_path: Path) -> FileLock:
    """The lock every writer of ``csv_path`` (and of what is rendered from it) holds: beside the file itself, so
    checkouts whose ``results/leaderboard.csv`` links to one shared file share it."""
    return FileLock(str(link_target(csv_path)) + ".lock", timeout=120)


def row_key(row: Mapping[str, Any]) -> tuple[str, str, str]:
    """What tells the rows apart: ``(run_id, test_set, hypothesis)``."""
    return str(row["run_id"]), str(row["test_set"]), str(row.get("hypothesis", ""))


#: the cells of a row that its hypotheses and references determine: a row added again must have the same
SCORES = ("bleu", "chrf", "bleu_signature", "chrf_signature")


def add_rows(csv_path: Path, rows_to_add: Sequence[Row]) -> int:
    """Add rows not yet present (by ``(run_id, test_set, hypothesis)``); returns how many were added.
    Columns a mapping lacks are left empty. A row present already whose scores (:data:`SCORES`) differ from the
    one given is a ``ValueError`` naming both: the same file scored otherwise (other references, another
    sacreBLEU, or another checkout's file of that name) is never dropped in silence."""
    new_rows = [_as_dict(r) for r in rows_to_add]
    unknown = {k for row in new_rows for k in row} - set(COLUMNS)
    if unknown:
        raise ValueError(f"leaderboard rows have unknown columns {sorted(unknown)}")
    for row in new_rows:
        if problem := _field_problem(row):
            raise ValueError(f"leaderboard row of {row.get('run_id')} on {row.get('test_set')}: {problem}")
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with lock(csv_path):
        rows = read_rows(csv_path)
        seen = {row_key(r): r for r in rows}
        added = []
        for row in new_rows:
            if (old := seen.get(row_key(row))) is None:
                seen[row_key(row)] = row
                added.append(row)
            elif differ := [c for c in SCORES if str(row.get(c, "")) not in ("", str(old.get(c, "")))]:
                scored = "; ".join(f"{c} {old.get(c)} there, {row.get(c)} now" for c in differ)
                raise ValueError(
                    f"{csv_path}: {row['run_id']} on {row['test_set']} with the hypotheses {row.get('hypothesis')} "
                    f"is recorded with other scores ({scored}): the references, sacreBLEU or the file itself "
                    "(another checkout's of that name) differ. The row is kept as it is; evaluate into another "
                    "results folder (results_dir=...), or restore what it was scored against"
                )
        if added:
            write_text_atomic(csv_path, _render_csv(rows + added))
        return len(added)


def fill_empty(csv_path: Path, rows: Sequence[Row], columns: Sequence[str]) -> int:
    """Fill the empty ``columns`` of stored rows (by ``(run_id, test_set, hypothesis)``) with the values ``rows``
    give them: a value left empty when it could not be computed yet (a p-value against a dense run not yet
    evaluated) is completed, a value already there is never changed. Returns how many rows changed."""
    unknown = set(columns) - set(COLUMNS)
    if unknown:
        raise ValueError(f"leaderboard rows have unknown columns {sorted(unknown)}")
    given = {row_key(_as_dict(r)): _as_dict(r) for r in rows}
    with lock(csv_path):
        stored = read_rows(csv_path)
        changed = 0
        for row in stored:
            new = given.get(row_key(row), {})
            fill = {c: str(new[c]) for c in columns if row[c] == "" and str(new.get(c, "")) != ""}
            if fill:
                if problem := _field_problem(row | fill):
                    raise ValueError(f"leaderboard row of {row['run_id']} on {row['test_set']}: {problem}")
                row.update(fill)
                changed += 1
        if changed:
            write_text_atomic(csv_path, _render_csv(stored))
        return changed


def training(row: Mapping[str, Any]) -> tuple[str, str]:
    """Which training of its run id a row's model is: the commit that trained it and the training's time (a run
    id names settings, not weights: trained again, the same id has other weights and another time)."""
    seconds = row.get("train_seconds", "")
    return str(row.get("train_commit", "")), "" if seconds == "" else f"{float(seconds):.1f}"


def short_commit(commit: str) -> str:
    """A commit as tables show it: 8 hex digits, ``+dirty`` kept."""
    sha, _, rest = commit.partition("+")
    return sha[:8] + (f"+{rest}" if rest else "")


def cross_cell(window: int, slope: float) -> str:
    """The ``cross`` cell of a run with a structured cross band of half-width ``window`` and ``slope``."""
    return f"w{window}/slope{slope:g}"


def cross_window(cell: str) -> int | None:
    """The band half-width of a ``cross`` cell (:func:`cross_cell`); None for dense cross-attention ('')."""
    return int(cell[1:].partition("/")[0]) if cell else None
