"""``make demo``: the dense baseline and the default structured model on Multi30k en→de,
same schedule, scored on test_2016_flickr and test_2017_flickr, then the leaderboard."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from ..data.fetch import DataError
from .experiment import REPO_ROOT, ModelSpec, RunSpec, Schedule, run_experiment
from .leaderboard import read_rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--max-update", type=int, default=Schedule.max_update)
    p.add_argument("--runs-dir", type=Path, default=REPO_ROOT / "runs")
    p.add_argument("--results-dir", type=Path, default=REPO_ROOT / "results")
    a = p.parse_args(argv)
    logging.getLogger("filelock").setLevel(logging.WARNING)
    schedule = Schedule(max_update=a.max_update)
    dense = RunSpec(model=ModelSpec(arch="transformer_multi30k"), schedule=schedule)
    structured = RunSpec(model=ModelSpec(arch="structured_transformer_multi30k"), schedule=schedule)
    start = time.time()
    try:
        rows = run_experiment(dense, runs_dir=a.runs_dir, results_dir=a.results_dir)
        rows += run_experiment(structured, runs_dir=a.runs_dir, results_dir=a.results_dir, baseline=dense)
    except DataError as err:
        raise SystemExit(f"error: {err}") from None
    ids = {r["run_id"] for r in rows}
    print(f"\nLeaderboard rows of this demo ({time.time() - start:.0f} s):\n")
    print(f"{'run':48} {'test set':18} {'BLEU':>6} {'chrF':>6} {'p vs dense':>10}  hypothesis")
    for r in read_rows(a.results_dir / "leaderboard.csv"):
        if r["run_id"] in ids:
            print(
                f"{r['run_id']:48} {r['test_set']:18} {r['bleu']:>6} {r['chrf']:>6} {r['p_value_vs_dense']:>10}  "
                f"{r['hypothesis']}"
            )
    print(
        f"\nRe-score any row: sacrebleu {a.runs_dir}/data/multi30k_en_de/raw/test.de -i <hypothesis>  "
        "(test1.de for test_2017_flickr)"
    )
    print(f"Full leaderboard: {a.results_dir / 'LEADERBOARD.md'}")


if __name__ == "__main__":
    main()
