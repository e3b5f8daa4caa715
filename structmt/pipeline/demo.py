"""``make demo``: the dense baseline and the default structured model on Multi30k en→de,
same schedule (trained side by side, one thread each), scored on test_2016_flickr and
test_2017_flickr with sacreBLEU, then the leaderboard."""

from __future__ import annotations

import argparse
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from ..data.fetch import DataError
from .experiment import REPO_ROOT, ModelSpec, RunSpec, Schedule, evaluate_run, prepare_data, train_run
from .leaderboard import read_rows

#: the demo schedule: short enough for ~20 minutes on 2 CPU cores
DEMO = Schedule(name="cpu_demo", max_update=500, lr=0.005, warmup=250, threads=1)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--max-update", type=int, default=DEMO.max_update)
    p.add_argument("--runs-dir", type=Path, default=REPO_ROOT / "runs")
    p.add_argument("--results-dir", type=Path, default=REPO_ROOT / "results")
    a = p.parse_args(argv)
    logging.getLogger("filelock").setLevel(logging.WARNING)
    schedule: Schedule = replace(DEMO, max_update=a.max_update)
    dense = RunSpec(model=ModelSpec(arch="transformer_multi30k"), schedule=schedule)
    structured = RunSpec(model=ModelSpec(arch="structured_transformer_multi30k"), schedule=schedule)
    start = time.time()
    try:
        prepare_data(dense, a.runs_dir)
        with ThreadPoolExecutor(max_workers=2) as pool:
            for job in [pool.submit(train_run, spec, runs_dir=a.runs_dir) for spec in (dense, structured)]:
                job.result()
        rows = evaluate_run(dense, runs_dir=a.runs_dir, results_dir=a.results_dir)
        rows += evaluate_run(structured, runs_dir=a.runs_dir, results_dir=a.results_dir, baseline=dense)
    except DataError as err:
        raise SystemExit(f"error: {err}") from None
    ids = {r["run_id"] for r in rows}
    print(f"\nLeaderboard rows of this demo ({time.time() - start:.0f} s):\n")
    print(f"{'run':42} {'test set':17} {'BLEU':>5} {'chrF':>5} {'p vs dense':>10}  hypothesis")
    for r in read_rows(a.results_dir / "leaderboard.csv"):
        if r["run_id"] in ids:
            print(
                f"{r['run_id']:42} {r['test_set']:17} {r['bleu']:>5} {r['chrf']:>5} {r['p_value_vs_dense']:>10}  "
                f"{r['hypothesis']}"
            )
    raw = a.runs_dir / "data" / "multi30k_en_de" / "raw"
    print(f"\nRe-score a row: sacrebleu {raw}/test.de -i <hypothesis>   ({raw}/test1.de for test_2017_flickr)")
    print(f"Full leaderboard: {a.results_dir / 'LEADERBOARD.md'} and leaderboard.png")


if __name__ == "__main__":
    main()
