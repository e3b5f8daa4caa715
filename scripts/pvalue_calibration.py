"""How often the leaderboard's p-value (sacreBLEU's paired bootstrap) calls two equal systems different.

    .venv/bin/python scripts/pvalue_calibration.py --pair REF BASELINE SYSTEM [--pair ...] [--replicates 500]

The p-value of ``p_value_vs_dense`` is sacreBLEU's paired bootstrap (``sacrebleu --paired-bs``; 1000 resamples,
seed 12345): with d* the resampled BLEU differences and Δ the observed one, p = (#{|d*| − mean |d*| > |Δ|} + 1) /
1001. It centres |d*|, not d*: a one-sided tail of a two-sided statistic. Beside it this prints the two-sided
bootstrap p-value of the same resamples, centred as the null hypothesis asks: p = (#{|d* − mean d*| ≥ |Δ|} + 1) /
1001. For each ``--pair`` (the reference, the baseline's and the system's hypotheses, one line each) it prints
both (the first checked equal to ``structmt.pipeline.evaluation.paired_bootstrap``); then, on the first pair, an
A/A experiment: ``--replicates`` times, each sentence's two hypotheses are swapped with probability 1/2, which
makes two systems that differ by chance alone, and it counts how often each p-value falls below 0.05 and 0.01 (a
test at level α does so at most a fraction α of the time; ``--replicates 0``: the pairs' p-values alone). Prints
Markdown; writes nothing.
"""

from __future__ import annotations

import argparse

import numpy as np
from sacrebleu.metrics import BLEU

from structmt.files import existing_file, int_at_least, read_lines
from structmt.leaderboard_csv import BOOTSTRAP_SAMPLES, BOOTSTRAP_SEED
from structmt.pipeline.evaluation import bleu_metric, paired_bootstrap


def _stats(metric: BLEU, hyps: list[str]) -> np.ndarray:
    return np.array(metric._extract_corpus_statistics(hyps, None), dtype="float64")


def _bleu(metric: BLEU, summed: np.ndarray) -> np.ndarray:
    """BLEU of each row of summed sufficient statistics, as sacreBLEU computes it."""
    return np.array([metric._compute_score_from_stats(list(row)).score for row in summed])


def p_values(metric: BLEU, base: np.ndarray, system: np.ndarray, resamples: np.ndarray) -> tuple[float, float]:
    """(sacreBLEU's paired-bootstrap p, the two-sided centred bootstrap p) of ``system`` against ``base``
    (per-sentence sufficient statistics) on ``resamples`` (one row of sentence indices each)."""
    observed = abs(_bleu(metric, system.sum(0, keepdims=True))[0] - _bleu(metric, base.sum(0, keepdims=True))[0])
    d = _bleu(metric, system[resamples].sum(1)) - _bleu(metric, base[resamples].sum(1))
    n = len(resamples)
    sacrebleu_p = (np.sum(np.abs(d) - np.abs(d).mean() > observed) + 1) / (n + 1)
    two_sided = (np.sum(np.abs(d - d.mean()) >= observed) + 1) / (n + 1)
    return float(sacrebleu_p), float(two_sided)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pair", nargs=3, action="append", type=existing_file, required=True,
                   metavar=("REF", "BASELINE", "SYSTEM"), help="a reference and two systems' hypotheses")  # fmt: skip
    p.add_argument("--replicates", type=int_at_least(0), default=500, help="A/A runs on the first pair (0: none)")
    a = p.parse_args(argv)
    print("| reference | baseline | system | ΔBLEU | sacreBLEU paired-bs p | two-sided bootstrap p |")
    print("|---|---|---|---|---|---|")
    first: tuple[BLEU, np.ndarray, np.ndarray, np.ndarray] | None = None  # the A/A's pair, and its resamples
    for ref, base_hyp, system_hyp in a.pair:
        refs = read_lines(ref)
        hyps = [read_lines(base_hyp), read_lines(system_hyp)]
        for path, lines in zip((base_hyp, system_hyp), hyps, strict=True):
            if len(lines) != len(refs):
                p.error(f"{path} has {len(lines)} lines but the reference {ref} has {len(refs)}")
        metric = bleu_metric(refs)
        base, system = _stats(metric, hyps[0]), _stats(metric, hyps[1])
        resamples = np.random.default_rng(BOOTSTRAP_SEED).choice(
            len(refs), size=(BOOTSTRAP_SAMPLES, len(refs)), replace=True
        )
        ours, two_sided = p_values(metric, base, system, resamples)
        if first is None:
            recorded = paired_bootstrap(base_hyp, system_hyp, ref, n_samples=BOOTSTRAP_SAMPLES)[0]
            if recorded != round(ours, 4) and recorded != 1.0:  # 1.0: identical files, as paired_bootstrap says
                raise SystemExit(f"error: sacreBLEU's p here is {ours:.4f}, paired_bootstrap's {recorded}")
            first = (metric, base, system, resamples)
        delta = _bleu(metric, system.sum(0, keepdims=True))[0] - _bleu(metric, base.sum(0, keepdims=True))[0]
        print(f"| {ref.name} | {base_hyp.name} | {system_hyp.name} | {delta:+.2f} | {ours:.4f} | {two_sided:.4f} |")
    assert first is not None
    if not a.replicates:
        return
    metric, base, system, resamples = first
    rng = np.random.default_rng(0)
    found = []
    for _ in range(a.replicates):
        swap = (rng.random(len(base)) < 0.5)[:, None]
        found.append(p_values(metric, np.where(swap, system, base), np.where(swap, base, system), resamples))
    table = np.array(found)
    print(f"\nA/A on the first pair, {a.replicates} replicates (each sentence's hypotheses swapped with probability"
          " 1/2, numpy seed 0): the fraction of p-values below each level")  # fmt: skip
    print("\n| p-value | below 0.05 | below 0.01 | median |\n|---|---|---|---|")
    for name, column in (("sacreBLEU paired-bs", 0), ("two-sided bootstrap", 1)):
        values = table[:, column]
        print(f"| {name} | {np.mean(values < 0.05):.3f} | {np.mean(values < 0.01):.3f} | {np.median(values):.3f} |")


if __name__ == "__main__":
    main()
