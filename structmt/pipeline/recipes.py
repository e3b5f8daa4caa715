"""Ready-made comparisons on Multi30k en→de: the dense baseline and the default
structured model under one schedule, trained side by side (one thread each),
scored on test_2016_flickr and test_2017_flickr with sacreBLEU (paired bootstrap
against the dense run), added to the leaderboard and logged to W&B.

    python -m structmt.pipeline.recipes demo        # make demo: a short schedule
    python -m structmt.pipeline.recipes reproduce   # make reproduce: the README's headline table
"""

from __future__ import annotations

import argparse
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..files import DataError
from ..paths import REPO_ROOT
from .evaluation import evaluate_run
from .leaderboard import read_rows
from .spec import ModelSpec, RunSpec, Schedule
from .training import prepare_data, train_run

#: recipe → its schedule in conf/train (the same files the Hydra app uses)
RECIPES = {"demo": "cpu_demo", "reproduce": "reproduce"}


def load_schedule(name: str) -> Schedule:
    """A schedule from ``conf/train/<name>.yaml``, checked against :class:`Schedule`."""
    from omegaconf import OmegaConf

    merged = OmegaConf.merge(
        OmegaConf.structured(Schedule), OmegaConf.load(REPO_ROOT / "conf" / "train" / f"{name}.yaml")
    )
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def compare(dense: RunSpec, structured: RunSpec, *, runs_dir: Path, results_dir: Path) -> list[dict[str, Any]]:
    """Train both side by side, then evaluate (the structured run against the dense one)."""
    prepare_data(dense, runs_dir)
    with ThreadPoolExecutor(max_workers=2) as pool:
        for job in [pool.submit(train_run, spec, runs_dir=runs_dir) for spec in (dense, structured)]:
            job.result()
    rows = evaluate_run(dense, runs_dir=runs_dir, results_dir=results_dir)
    return rows + evaluate_run(structured, runs_dir=runs_dir, results_dir=results_dir, baseline=dense)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", choices=sorted(RECIPES))
    p.add_argument("--max-update", type=int, default=None, help="override the schedule's number of updates")
    p.add_argument("--runs-dir", type=Path, default=REPO_ROOT / "runs")
    p.add_argument("--results-dir", type=Path, default=REPO_ROOT / "results")
    a = p.parse_args(argv)
    logging.getLogger("filelock").setLevel(logging.WARNING)
    schedule = load_schedule(RECIPES[a.recipe])
    if a.max_update is not None:
        schedule = replace(schedule, max_update=a.max_update)
    dense = RunSpec(model=ModelSpec(arch="transformer_multi30k"), schedule=schedule)
    structured = RunSpec(model=ModelSpec(arch="structured_transformer_multi30k"), schedule=schedule)
    start = time.time()
    try:
        rows = compare(dense, structured, runs_dir=a.runs_dir, results_dir=a.results_dir)
    except DataError as err:
        raise SystemExit(f"error: {err}") from None
    print(f"\nLeaderboard rows of this comparison ({time.time() - start:.0f} s):\n")
    print(f"{'run':42} {'test set':17} {'BLEU':>5} {'chrF':>5} {'p vs dense':>10}  hypothesis")
    for r in rows:
        print(
            f"{r['run_id']:42} {r['test_set']:17} {r['bleu']:>5} {r['chrf']:>5} {r['p_value_vs_dense']:>10}  "
            f"{r['hypothesis']}"
        )
    raw = a.runs_dir / "data" / "multi30k_en_de" / "raw"
    print(f"\nRe-score a row: sacrebleu {raw}/test.de -i <hypothesis>   ({raw}/test1.de for test_2017_flickr)")
    print(
        f"Full leaderboard ({len(read_rows(a.results_dir / 'leaderboard.csv'))} rows): "
        f"{a.results_dir / 'LEADERBOARD.md'}, leaderboard.png"
    )


if __name__ == "__main__":
    main()
