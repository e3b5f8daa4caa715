"""Ready-made comparisons on Multi30k en→de: the dense baseline and the default
structured model under one schedule, trained side by side (one thread each),
scored on test_2016_flickr and test_2017_flickr with sacreBLEU (paired bootstrap
against the dense run), added to the leaderboard and logged to W&B.

    python -m structmt.pipeline.recipes demo        # make demo: a short schedule
    python -m structmt.pipeline.recipes reproduce --seeds 1 2 3   # make reproduce: the headline table

With several seeds, each seed's pair is trained, decoded and scored by its own
process, started from a clean committed tree (the commit every row records).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..console import add_verbose_option, run_child, setup
from ..fairseq_cli import StepError
from ..files import DataError, int_at_least
from ..leaderboard_csv import p_text, read_rows, score_text, short_commit
from ..paths import RESULTS_DIR, RUNS_DIR, ResultsFolder
from ..provenance import git_commit, why_unknown
from .evaluation import evaluate_run, keep_training_log
from .spec import MAX_SEED, ModelSpec, RunSpec, Schedule, load_schedule, own_name
from .training import data_folder, prepare_data, train_run

log = logging.getLogger(__name__)

#: recipe → its schedule in conf/train (the same files the Hydra app uses); ``finetune`` starts the structured
#: model from the dense ``reproduce`` run of the same seed and trains it on the ``finetune`` schedule
RECIPES = {"demo": "cpu_demo", "reproduce": "reproduce", "finetune": "finetune"}
#: recipes whose rows the README reports: they run only from a clean committed tree (the commit each row names),
#: and their training logs are kept in results/logs
HEADLINE = ("reproduce", "finetune")


def compare(
    dense: RunSpec,
    structured: RunSpec,
    *,
    runs_dir: Path,
    results_dir: Path,
    train_only: bool = False,
    keep_logs: bool = False,
) -> list[dict[str, Any]]:
    """Train both side by side (the dense one first when the structured one starts from it), then evaluate
    (the structured run against the dense one); ``keep_logs`` keeps both training logs in ``results/logs``."""
    prepare_data(dense, runs_dir)
    if structured.schedule.finetune_from == dense.run_id():
        train_run(dense, runs_dir=runs_dir)
        train_run(structured, runs_dir=runs_dir)
    else:
        failed: list[tuple[RunSpec, BaseException]] = []
        with ThreadPoolExecutor(max_workers=2) as pool:
            jobs = {pool.submit(train_run, spec, runs_dir=runs_dir): spec for spec in (dense, structured)}
            for job in as_completed(jobs):  # a failure said when it happens, not when the other training ends
                if (err := job.exception()) is not None:
                    failed.append((jobs[job], err))
                    log.error(f"[{jobs[job].run_id()}] training failed: {err}; the other training goes on")
        if len(failed) == 1:
            raise failed[0][1]
        if failed:
            raise StepError("both trainings failed: " + "; ".join(f"{spec.run_id()}: {err}" for spec, err in failed))
    if train_only:
        return []
    rows = evaluate_run(dense, runs_dir=runs_dir, results_dir=results_dir)
    rows += evaluate_run(structured, runs_dir=runs_dir, results_dir=results_dir, baseline=dense)
    for spec in (dense, structured) if keep_logs else ():
        keep_training_log(runs_dir / spec.run_id(), ResultsFolder(results_dir).logs)
    return rows


def unclean(commit: str) -> str:
    """Why results of the code at ``commit`` (:func:`~structmt.provenance.git_commit`) name no commit ("" when
    they do)."""
    if commit == "unknown":
        return (
            f"this checkout's commit cannot be read ({why_unknown()}); run from a git clone of the project "
            "(for a checkout owned by another user, git config --global --add safe.directory <its path>)"
        )
    if commit.endswith("+dirty"):
        return f"the checkout differs from commit {commit[:12]} (tracked files, or untracked ones among the code)"
    return ""


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m structmt.pipeline.recipes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "recipe",
        choices=sorted(RECIPES),
        help="demo: conf/train/cpu_demo.yaml; reproduce, finetune: conf/train/<recipe>.yaml",
    )
    # fairseq-train takes --max-update 0 as "no limit" and stops a negative one after one update
    p.add_argument("--max-update", type=int_at_least(1), default=None, help="override the schedule's number of updates")
    p.add_argument(
        "--seeds",
        type=int_at_least(0, MAX_SEED),  # fairseq-train seeds numpy with it plus the epoch
        nargs="+",
        default=None,
        help="one comparison per seed, each its own process (default: the schedule's seed, 1)",
    )
    p.add_argument("--train-only", action="store_true", help="train (or resume) the pair; evaluate later")
    p.add_argument(
        "--allow-dirty",
        action="store_true",
        help="run although the checkout differs from its commit (tracked files outside results/, or untracked "
        "code); the rows then say +dirty",
    )
    p.add_argument("--runs-dir", type=Path, default=RUNS_DIR, help="runs, data and W&B files (default: runs/)")
    p.add_argument(
        "--results-dir", type=Path, default=RESULTS_DIR, help="leaderboard, hypotheses and logs (default: results/)"
    )
    add_verbose_option(p)
    a = p.parse_args(argv)
    setup(a.verbose)
    if a.recipe in HEADLINE and not a.allow_dirty and (problem := unclean(git_commit())):
        raise SystemExit(
            f"error: {problem}; the rows would not name the code that made them. Commit (or stash) first, or pass "
            f"--allow-dirty (through make: make {a.recipe} ALLOW_DIRTY=1)."
        )
    if a.seeds is not None and len(a.seeds) > 1:
        failed = []  # a seed that fails leaves the others to run: an overnight run keeps what it can
        for seed in a.seeds:  # one process per seed pair: nothing carries over from one seed to the next
            cmd = [sys.executable, "-m", "structmt.pipeline.recipes", a.recipe, "--seeds", str(seed), *_passed_on(a)]
            if run_child(cmd):
                failed.append(seed)
                log.error(f"seed {seed} failed (command: {' '.join(cmd)}); going on with the other seeds")
        if failed:
            done = [seed for seed in a.seeds if seed not in failed]
            raise SystemExit(
                f"error: seed(s) {' '.join(map(str, failed))} failed (their errors above); "
                + (f"seed(s) {' '.join(map(str, done))} finished" if done else "no seed finished")
            )
        return
    logging.getLogger("filelock").setLevel(logging.WARNING)
    schedule = load_schedule(RECIPES[a.recipe])
    if a.max_update is not None:  # another schedule: its own name, so its rows never pass for the recipe's
        schedule = own_name(replace(schedule, max_update=a.max_update))
    if a.seeds is not None:
        schedule = replace(schedule, seed=a.seeds[0])
    dense, structured = pair(a.recipe, schedule)
    start = time.time()
    try:
        rows = compare(
            dense,
            structured,
            runs_dir=a.runs_dir,
            results_dir=a.results_dir,
            train_only=a.train_only,
            keep_logs=a.recipe in HEADLINE,
        )
    except DataError as err:
        raise SystemExit(f"error: {err}") from None
    if a.train_only:
        return
    print(f"\nThis comparison ({time.time() - start:.0f} s), as the leaderboard has it:\n")
    results = ResultsFolder(a.results_dir)
    board = read_rows(results.leaderboard)
    print(summary(rows, board))
    data, tgt = data_folder(dense, a.runs_dir), dense.data.tgt
    refs = (data.text("test", tgt), data.text("test1", tgt))
    print(f"\nRe-score a row: sacrebleu {refs[0]} -i <hypothesis>   ({refs[1]} for test_2017_flickr)")
    print(f"Full leaderboard ({len(board)} rows): {results.leaderboard_page}, {results.leaderboard_chart.name}")


def pair(recipe: str, schedule: Schedule) -> tuple[RunSpec, RunSpec]:
    """The dense and the structured run of a recipe under ``schedule``."""
    structured = RunSpec(model=ModelSpec(arch="structured_transformer_multi30k"), schedule=schedule)
    if recipe != "finetune":
        return RunSpec(model=ModelSpec(arch="transformer_multi30k"), schedule=schedule), structured
    base = replace(load_schedule(RECIPES["reproduce"]), seed=schedule.seed)
    dense = RunSpec(model=ModelSpec(arch="transformer_multi30k"), schedule=base)
    return dense, replace(structured, schedule=replace(schedule, finetune_from=dense.run_id()))


def summary(rows: list[dict[str, Any]], leaderboard_rows: list[dict[str, str]]) -> str:
    """Every leaderboard row of the runs in ``rows``, this evaluation's marked ``*``: what is printed is what
    ``LEADERBOARD.md`` holds, re-runs of the same run id (another machine or commit) included."""
    mine = {(r["run_id"], r["test_set"], r["hypothesis"]) for r in rows}
    runs = list(dict.fromkeys(r["run_id"] for r in rows))
    lines = [f"  {'run':44} {'test set':17} {'BLEU':>5} {'chrF':>5} {'p vs dense':>10}  commit          machine"]
    others = 0
    for run in runs:
        for r in (r for r in leaderboard_rows if r["run_id"] == run):
            this = (r["run_id"], r["test_set"], r["hypothesis"]) in mine
            others += not this
            lines.append(
                f"{'*' if this else ' '} {r['run_id']:44} {r['test_set']:17} "
                f"{score_text(r['bleu']):>5} {score_text(r['chrf']):>5} "
                f"{p_text(r['p_value_vs_dense']):>10}  {short_commit(r['git_commit']):15} {r.get('machine') or '–'}"
            )
    earlier = (
        "the other row is an earlier evaluation" if others == 1 else f"the {others} other rows are earlier evaluations"
    )
    note = "* this evaluation" + (f"; {earlier} of the same runs (re-runs are never dropped)" if others else "")
    return "\n".join(lines + ["", note])


def _passed_on(a: argparse.Namespace) -> list[str]:
    """The options of this call that each seed's process gets too."""
    out = ["--runs-dir", str(a.runs_dir), "--results-dir", str(a.results_dir)]
    out += ["--max-update", str(a.max_update)] if a.max_update is not None else []
    flags = (("--train-only", a.train_only), ("--allow-dirty", a.allow_dirty), ("--verbose", a.verbose))
    return out + [flag for flag, on in flags if on]


if __name__ == "__main__":
    main()
