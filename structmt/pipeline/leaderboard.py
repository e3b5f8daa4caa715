"""The BLEU leaderboard rendered: ``results/LEADERBOARD.md`` (every evaluation, re-runs included), the
README's headline tables (mean ± sd over seeds), the chart, and ``structmt-leaderboard``.  The file
itself, ``results/leaderboard.csv``, and its rules: :mod:`structmt.leaderboard_csv` (its names are
importable from here too).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import re
import statistics
from collections.abc import Sequence
from pathlib import Path

from ..files import DataError, write_text_atomic
from ..leaderboard_csv import (
    BOOTSTRAP_SAMPLES,
    COLUMNS,
    P_FLOOR,
    LeaderboardRow,
    add_rows,
    lock,
    p_text,
    read_rows,
    score_text,
    short_commit,
    training,
)
from ..paths import RESULTS_DIR, RUNS_DIR, ResultsFolder

__all__ = ["COLUMNS", "LeaderboardRow", "add_rows", "read_rows", "short_commit"]  # the file's, for callers of both

log = logging.getLogger(__name__)
#: the data set of ``--headline`` (and of a README table's marker) when none is named
DEFAULT_DATA = "multi30k_en_de"


def rerun_name(first: str, hypotheses: bytes) -> str:
    """The file name a re-run's ``hypotheses`` are kept under beside the first evaluation's file ``first``
    (``<run>.<test>.<lang>``): ``<run>.<test>.<sha256[:8]>.<lang>``, named by their content."""
    stem, _, lang = first.rpartition(".")
    return f"{stem}.{hashlib.sha256(hypotheses).hexdigest()[:8]}.{lang}"


def is_first_evaluation(row: dict[str, str]) -> bool:
    """Whether ``row``'s hypotheses are kept under the run's own name, ``<run>.<test>.<lang>``, which only a run's
    first evaluation takes (a re-run's: :func:`rerun_name`)."""
    name = Path(row.get("hypothesis", "")).name
    return re.fullmatch(rf"{re.escape(row['run_id'])}\.[^.]+\.[^.]+", name) is not None


def evaluations(rows: list[dict[str, str]]) -> dict[tuple[str, str], list[dict[str, str]]]:
    """The rows of each ``(run_id, test_set)``, first evaluation first, the re-runs after it in the file's order.
    The first is the row whose hypotheses have the run's own file name (:func:`is_first_evaluation`) wherever it
    stands in the file (a hand-sorted CSV would otherwise average a re-run as the seed's score and pair p-values
    with it); without one, the file's first row."""
    out: dict[tuple[str, str], list[dict[str, str]]] = {}
    for r in rows:
        out.setdefault((r["run_id"], r["test_set"]), []).append(r)
    return {key: sorted(evals, key=lambda r: not is_first_evaluation(r)) for key, evals in out.items()}


def render_markdown(rows: list[dict[str, str]], title: str = "Leaderboard") -> str:
    """A markdown table per test set, best BLEU first; a re-run is listed under its first evaluation."""
    out = [
        f"# {title}",
        "",
        "Generated from `results/leaderboard.csv` by `structmt.pipeline.leaderboard`. One row per evaluation: "
        "a re-run whose hypotheses differ from an earlier evaluation of the same run (another machine or commit) "
        "is its own row, marked *re-run*. *trained on*: the machine of the session that finished the training, "
        "which its seconds and tokens/s were measured on (a run resumed on another machine: its training log names "
        "each session's; – where it was not recorded, before 2026-12-06: the training logs kept in `results/logs/` "
        "name the machines of the runs they hold); *scored at* and *scored on* are the commit and machine that "
        "decoded and scored. *p vs dense*: sacreBLEU's paired bootstrap p-value (`sacrebleu --paired-bs`, "
        f"{BOOTSTRAP_SAMPLES} resamples; ≤ {P_FLOOR:g}: no resample as far out) against the dense run of the same "
        "seed; a p below 0.05 is not a test at level 0.05: measured on one pair of runs whose hypotheses were "
        "mixed at random, it fell there about twice as often as a 5 % test may (the repository's "
        "results/README.md, *Reading the p-values*).",
        "",
    ]
    runs = evaluations(rows)
    for test in sorted({r["test_set"] for r in rows}):
        out += [
            f"## {test}",
            "",
            "| run | arch | w | r | heads | cross | seed | BLEU | chrF | p vs dense | updates | train s | tok/s "
            "| trained on | scored at | scored on |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        firsts = sorted((e for (_, t), e in runs.items() if t == test), key=lambda e: -float(e[0]["bleu"] or 0))
        for evals in firsts:
            for i, r in enumerate(evals):
                run = r["run_id"] if i == 0 else f"↳ *re-run* {i}"
                out.append(
                    f"| {run} | {r['arch']}{f' {options}' if (options := r['options']) else ''} | {r['window']} | "
                    f"{r['rare']} | {r['heads']} | {r['cross']} | "
                    f"{r['seed']} | {score_text(r['bleu'])} | {score_text(r['chrf'])} | "
                    f"{p_text(r['p_value_vs_dense'])} | {r['updates']} | "
                    f"{r['train_seconds']} | {r['train_tokens_per_s']} | {r.get('train_machine') or '–'} | "
                    f"{short_commit(r['git_commit'])} | {r.get('machine') or '–'} |"
                )
        sigs = sorted({r["bleu_signature"] for r in rows if r["test_set"] == test})
        out += ["", "BLEU signature: " + "; ".join(f"`{s}`" for s in sigs), ""]
    return "\n".join(out) + "\n"


def mean_sd(values: Sequence[float]) -> str:
    """``mean ± sd`` (sample standard deviation) to 2 decimals; one value: just that value."""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


#: columns that the seeds of one setting share (besides the labels a headline row is grouped by): scores of
#: another sacreBLEU signature (tokenizer, version) are not averaged with them
SEED_INVARIANT = ("direction", "params", "updates", "bleu_signature", "chrf_signature")


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


def _rerun(earlier: list[dict[str, str]], rerun: dict[str, str]) -> str:
    """A re-run in a headline cell: its seed, BLEU, and whether the model was trained again (a training commit and
    time that no ``earlier`` evaluation of the run has: other weights under the same run id) or a model already
    evaluated decoded again, with its commit."""
    trained = training(rerun) not in [training(r) for r in earlier]
    commit = short_commit((trained and rerun.get("train_commit")) or rerun["git_commit"])
    return f"{rerun['seed']}: {score_text(rerun['bleu'])} ({'trained' if trained else 'decoded'} again, {commit})"


def headline(rows: list[dict[str, str]], data: str, schedule: str) -> str:
    """The README's headline table of one data set and schedule: per test set and model, BLEU and chrF as
    mean ± sd over seeds (each run's first evaluation), each seed's BLEU with its paired bootstrap p-value
    against the dense run of the same seed, each seed's commits (``trained → scored`` where the row names the
    training commit), and the re-runs the leaderboard also holds (each with its seed, BLEU, commit, and whether
    the model was trained again or decoded again; the mean is of first evaluations only).

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
    signatures: dict[tuple[str, str], list[str]] = {}  # (BLEU, chrF) → the table rows scored with them
    for key in sorted(groups, key=lambda k: (k[0], k[1] == "structured", k[2:])):
        test, kind, arch, window, rare, heads, cross, options = key
        evals = sorted(groups[key], key=lambda e: int(e[0]["seed"]))
        firsts = [e[0] for e in evals]
        extras = "".join(
            f" {label}" for label in (heads, cross and f"cross {cross}", options) if label not in ("", "auto")
        )
        shape = f" w={window} r={rare}" if window else ""
        _check_seeds_of_one_setting(firsts, f"headline of {schedule} on {data}, {test}, {arch}{extras}{shape}")
        signatures.setdefault((firsts[0]["bleu_signature"], firsts[0]["chrf_signature"]), []).append(
            f"{test} {kind}{shape}"
        )
        per_seed = ", ".join(
            f"{r['seed']}: {score_text(r['bleu'])}"
            + (f" (p {p_text(r['p_value_vs_dense'], 3)})" if r["p_value_vs_dense"] != "" else "")
            for r in firsts
        )
        commits = [
            f"{r['seed']}: "
            + (f"{short_commit(r['train_commit'])} → " if r.get("train_commit") else "")
            + short_commit(r["git_commit"])
            for r in firsts
        ]
        lines.append(
            f"| {test} | {arch}{extras} | {window or '–'} | {rare or '–'} | {len(firsts)} | "
            f"{mean_sd([float(r['bleu']) for r in firsts])} | {mean_sd([float(r['chrf']) for r in firsts])} | "
            f"{per_seed} | {firsts[0]['updates']} | "
            f"{', '.join(commits)} | "
            f"{', '.join(_rerun(e[:i], e[i]) for e in evals for i in range(1, len(e))) or '–'} |"
        )
    several = len(signatures) > 1  # then each names the table rows scored with it
    notes = [
        f"BLEU signature: `{bleu}`; chrF signature: `{chrf}`" + (f" ({', '.join(labels)})" if several else "")
        for (bleu, chrf), labels in signatures.items()
    ]
    notes.append("Mean ± sample standard deviation over the seeds' scores as recorded (two decimals each).")
    return "\n".join(lines) + "\n\n" + "\n\n".join(notes) + "\n"


#: the line above a README table that :func:`publish` keeps equal to ``structmt-leaderboard --headline``'s rows
HEADLINE_MARKER = re.compile(r"<!-- structmt-leaderboard --headline (?P<schedule>\S+)(?: --data (?P<data>\S+))? -->")


def refresh_headlines(text: str, rows: list[dict[str, str]]) -> str:
    """``text`` (a README) with each table below a :data:`HEADLINE_MARKER` line rewritten from the leaderboard
    ``rows``: each of its rows becomes the ``--headline`` row of the same test set, model, w and r (the README
    chooses which rows it shows; the leaderboard fills them in).  A table that is not the ``--headline`` table, or
    a row it no longer prints, is a ``ValueError`` naming the line."""
    lines = text.split("\n")
    top = headline([], "", "").split("\n")[:2]
    for i, line in enumerate(lines):
        if not (m := HEADLINE_MARKER.fullmatch(line)):
            continue
        schedule, data = m["schedule"], m["data"] or DEFAULT_DATA
        command = f"structmt-leaderboard --headline {schedule}" + (f" --data {data}" if m["data"] else "")
        if lines[i + 1 : i + 3] != top:
            raise ValueError(f"line {i + 2}: below its marker (line {i + 1}) is not the table `{command}` prints")
        printed = {_cells(r): r for r in headline(rows, data, schedule).split("\n")[2:] if r.startswith("|")}
        j = i + 3
        while j < len(lines) and lines[j].startswith("|"):
            if (key := _cells(lines[j])) not in printed:
                raise ValueError(f"line {j + 1}: `{command}` prints no row of {' / '.join(key)} (any more)")
            lines[j] = printed[key]
            j += 1
    return "\n".join(lines)


def _cells(row: str) -> tuple[str, ...]:
    """A headline table row's test set, model, w and r: the run setting it reports."""
    return tuple(cell.strip() for cell in row.split("|")[1:5])


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


def publish(results_dir: Path) -> list[str]:
    """Render what is made from the CSV, holding its lock (no row is added between reading the CSV and writing
    them, so what the last publish writes shows every row): ``LEADERBOARD.md`` and ``leaderboard.png``; then
    ``BENCHMARKS.md`` where the folder has one (its cross-band verdicts quote the leaderboard's BLEU) and the
    headline tables of the ``README.md`` beside the folder (:func:`refresh_headlines`; the repository's, for
    ``results/``). So a re-run that ``make demo`` records leaves no page saying less than the leaderboard.
    Returns why either of the last two could not be written (each also logged as a warning)."""
    results = ResultsFolder(results_dir)
    problems = []
    with lock(results.leaderboard):
        write_markdown(results.leaderboard, results.leaderboard_page)
        write_chart(results.leaderboard, results.leaderboard_chart)
        if results.benchmarks_page.exists():
            from ..bench.report import write_benchmarks

            try:
                write_benchmarks(results_dir)
            except DataError as err:
                problems.append(f"{results.benchmarks_page} is not rendered again: {err}")
        readme = results.path.resolve().parent / "README.md"
        if readme.exists():
            try:
                text = readme.read_text(encoding="utf-8")
                new = refresh_headlines(text, read_rows(results.leaderboard))
            except ValueError as err:  # UnicodeDecodeError too
                problems.append(f"{readme}'s headline tables are not rewritten: {readme.name} {err}")
            else:
                if new != text:
                    write_text_atomic(readme, new)
                    log.info(f"{readme}: the headline tables rewritten from {results.leaderboard}")
    for problem in problems:
        log.warning(problem)
    return problems


def main(argv: list[str] | None = None) -> None:
    """``structmt-leaderboard``: render the leaderboard's pages again (LEADERBOARD.md and its chart, BENCHMARKS.md,
    the README's headline tables) and (re)build its W&B table."""
    import argparse

    from ..console import add_verbose_option, setup
    from .tracking import DEFAULT_PROJECT, WandbSettings, log_leaderboard, project_problem

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument(
        "--results-dir", type=Path, default=RESULTS_DIR, help="the folder of leaderboard.csv (default: results/)"
    )
    p.add_argument("--wandb", action="store_true", help="also rebuild the W&B leaderboard table")
    p.add_argument(
        "--wandb-dir", type=Path, default=RUNS_DIR / "wandb", help="where W&B writes its files (default: runs/wandb)"
    )
    p.add_argument("--project", default=DEFAULT_PROJECT, help=f"the W&B project (default: {DEFAULT_PROJECT})")
    p.add_argument("--headline", metavar="SCHEDULE", help="print the README headline table of this schedule")
    p.add_argument("--data", help="the data set of --headline (default: multi30k_en_de)")
    add_verbose_option(p)
    a = p.parse_args(argv)
    setup(a.verbose)
    for option, value in (("--headline", a.headline), ("--data", a.data)):
        if value is not None and not value.strip():  # an unset variable in a script: not "no option"
            p.error(f"{option} is empty; give a {'schedule' if option == '--headline' else 'data set'} name")
    if a.headline and a.wandb:
        p.error("--headline only prints a table; rebuild the W&B table by a run with --wandb and without --headline")
    if a.data is not None and not a.headline:
        p.error("--data chooses the data set of --headline; pass --headline SCHEDULE with it")
    a.data = a.data or DEFAULT_DATA
    if a.wandb and (problem := project_problem(a.project)):
        p.error(f"--project {a.project!r} {problem}")
    csv_path = ResultsFolder(a.results_dir).leaderboard
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
    if problems := publish(a.results_dir):
        raise SystemExit("error: " + "; ".join(problems))
    print(render_markdown(read_rows(csv_path)))
    if a.wandb:
        folder = log_leaderboard(read_rows(csv_path), COLUMNS, a.wandb_dir, WandbSettings(project=a.project))
        if folder is None:
            raise SystemExit(
                "error: the W&B leaderboard table was not logged (W&B disabled, or failed: the warning above)"
            )
        print(f"W&B leaderboard table: {folder} (upload an offline run with: wandb sync {folder})")


if __name__ == "__main__":
    main()
