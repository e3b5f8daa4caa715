"""Results that survive a second look: re-runs are recorded, never dropped; the headline is a
mean over seeds; the paired bootstrap is sacreBLEU's; a finished checkpoint is adopted;
fine-tuning starts from the named run; the length ratio counts what fairseq counts."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from structmt.data.prepare import fetch_multi30k
from structmt.paths import DataFolder
from structmt.pipeline import leaderboard
from structmt.pipeline.evaluation import keep_hypotheses, keep_training_log, paired_bootstrap
from structmt.pipeline.recipes import HEADLINE, RECIPES, load_schedule, pair, summary
from structmt.pipeline.spec import ModelSpec, RunSpec, Schedule

REPO = Path(__file__).resolve().parents[1]


def _row(run: str, seed: int, bleu: float, **extra) -> dict:
    structured = "-w3-" in run
    return {
        "run_id": run,
        "data": "m",
        "schedule": "s",
        "test_set": "test_2016_flickr",
        "arch": "structured_t" if structured else "t",
        "window": 3 if structured else "",
        "rare": 2 if structured else "",
        "heads": "auto" if structured else "",
        "bleu": bleu,
        "chrf": 50.0 + seed,
        "bleu_signature": "sig",
        "chrf_signature": "csig",
        "p_value_vs_dense": 0.1 * seed if structured else "",
        "updates": 10,
        "seed": seed,
        "git_commit": f"{seed}" * 40,
        "hypothesis": f"results/hyps/{run}.test_2016_flickr.de",
    } | extra


def test_a_rerun_that_differs_is_its_own_row_and_the_markdown_shows_both(tmp_path):
    csv_path = tmp_path / "leaderboard.csv"
    first = _row("m-s-dense-1", 1, 30.0, machine="CPU A")
    assert leaderboard.add_rows(csv_path, [first]) == 1
    assert leaderboard.add_rows(csv_path, [first | {"machine": "CPU B"}]) == 0  # same hypotheses: same result
    rerun = first | {"bleu": 31.5, "hypothesis": "results/hyps/m-s-dense-1.test_2016_flickr.0a1b2c3d.de"}
    rerun |= {"machine": "CPU B", "git_commit": "f" * 40 + "+dirty"}
    assert leaderboard.add_rows(csv_path, [rerun]) == 1
    rows = leaderboard.read_rows(csv_path)
    assert [r["bleu"] for r in rows] == ["30.0", "31.5"]
    md = leaderboard.render_markdown(rows)
    assert "| m-s-dense-1 | t |" in md and "| ↳ *re-run* 1 | t |" in md
    assert "| 30.00 |" in md and "| 31.50 |" in md and "ffffffff+dirty | CPU B |" in md


def test_hypotheses_of_a_rerun_never_overwrite_the_kept_file(tmp_path):
    kept = tmp_path / "hyps" / "run.test_2016_flickr.de"
    a, b = tmp_path / "a.de", tmp_path / "b.de"
    a.write_text("ein Hund\n")
    b.write_text("eine Katze\n")
    assert keep_hypotheses(a, kept) == kept and kept.read_text() == "ein Hund\n"
    assert keep_hypotheses(a, kept) == kept  # the same hypotheses again: the same file
    other = keep_hypotheses(b, kept)
    # named by the first 8 hex digits of the hypotheses' sha256
    assert other.name == "run.test_2016_flickr.ae933f03.de" and other != kept
    assert other.read_text() == "eine Katze\n" and kept.read_text() == "ein Hund\n"
    assert sorted(p.name for p in kept.parent.iterdir()) == sorted([kept.name, other.name])  # no temp files


def test_a_training_log_is_kept_gzipped_by_run_id_and_the_same_log_gives_the_same_bytes(tmp_path):
    run_dir = tmp_path / "runs" / "m-s-dense-1"
    run_dir.mkdir(parents=True)
    log = "# structmt abc on CPU A\n| INFO | train_inner | epoch 001: loss=9.1\n" * 50
    (run_dir / "train.log").write_text(log)
    kept = keep_training_log(run_dir, tmp_path / "logs")
    assert kept == tmp_path / "logs" / "m-s-dense-1.log.gz"
    assert gzip.decompress(kept.read_bytes()).decode() == log
    first = kept.read_bytes()
    assert keep_training_log(run_dir, tmp_path / "logs").read_bytes() == first  # no timestamp inside
    assert first[4:8] == bytes(4)  # gzip's MTIME field: 0 (not this second's), so another day gives the same bytes
    (run_dir / "train.log").write_text(log + "resumed\n")  # a resumed run: the kept log follows it
    assert gzip.decompress(keep_training_log(run_dir, tmp_path / "logs").read_bytes()).decode().endswith("resumed\n")
    assert [p.name for p in (tmp_path / "logs").iterdir()] == ["m-s-dense-1.log.gz"]  # no temp files
    # the run trained again from scratch (its folder deleted, another machine): a log of its own, beside the first
    kept_before = kept.read_bytes()
    (run_dir / "train.log").write_text("# structmt def on CPU B\n| INFO | train_inner | epoch 001: loss=9.3\n")
    again = keep_training_log(run_dir, tmp_path / "logs")
    assert again.name.startswith("m-s-dense-1.") and again.name.endswith(".log.gz") and again != kept
    assert kept.read_bytes() == kept_before
    assert gzip.decompress(again.read_bytes()).decode().startswith("# structmt def on CPU B")
    umask = os.umask(0)
    os.umask(umask)
    assert kept.stat().st_mode & 0o777 == 0o666 & ~umask  # as open() would make it, not mkstemp's 0o600


def test_the_recipe_summary_prints_what_the_leaderboard_holds():
    earlier = _row("m-s-dense-1", 1, 30.0, machine="CPU A")
    now = earlier | {"bleu": 31.5, "hypothesis": "results/hyps/x.de", "machine": "CPU B", "p_value_vs_dense": 0.001}
    text = summary([now], [{k: str(v) for k, v in r.items()} for r in (earlier, now)])
    lines = text.splitlines()
    assert [line[:1] for line in lines[1:3]] == [" ", "*"]  # the earlier row is listed, this one starred
    assert " 30.00 " in lines[1] and "CPU A" in lines[1] and " 31.50 " in lines[2] and "CPU B" in lines[2]
    assert " ≤ 0.001 " in lines[2]  # as LEADERBOARD.md prints it
    assert text.endswith("; the other row is an earlier evaluation of the same runs (re-runs are never dropped)")


def test_the_recipe_summary_lists_the_rows_of_this_evaluations_runs_only():
    """Another run's rows are not listed; every earlier row of these runs is, and counted."""
    earlier = _row("m-s-dense-1", 1, 30.0, machine="CPU A")
    again = earlier | {"hypothesis": "results/hyps/y.de", "machine": "CPU C"}
    now = earlier | {"bleu": 31.5, "hypothesis": "results/hyps/x.de", "machine": "CPU B"}
    other = _row("m-s-dense-2", 2, 29.0, machine="CPU D")
    text = summary([now], [{k: str(v) for k, v in r.items()} for r in (earlier, other, again, now)])
    lines = text.splitlines()
    assert [(line[:1], line.split()[-1]) for line in lines[1:-2]] == [(" ", "A"), (" ", "C"), ("*", "B")]
    assert (
        lines[-1]
        == "* this evaluation; the 2 other rows are earlier evaluations of the same runs (re-runs are never dropped)"
    )


def test_headline_is_the_mean_and_sd_over_seeds_with_each_seeds_p_value():
    rows = [
        _row("m-s-dense-1", 1, 36.0),
        _row("m-s-dense-2", 2, 37.0),
        _row("m-s-dense-3", 3, 38.0, train_commit="a" * 40),
        _row("m-s-w3-r2-1", 1, 36.5),
        _row("m-s-w3-r2-2", 2, 37.5),
        _row("m-s-w3-r2-3", 3, 37.0),
        _row("m-s-w3-r2-3", 3, 99.0, hypothesis="elsewhere.de"),  # a re-run (decoded again): listed, not averaged
        _row("m-s-dense-3", 3, 35.0, train_commit="b" * 40, hypothesis="retrained.de"),  # trained again
        _row("m-other-dense-1", 1, 10.0) | {"schedule": "other"},
    ]
    text = leaderboard.headline([{k: str(v) for k, v in r.items()} for r in rows], "m", "s")
    assert text.splitlines()[2:4] == [
        "| test_2016_flickr | t | – | – | 3 | 37.00 ± 1.00 | 52.00 ± 1.00 | 1: 36.00, 2: 37.00, 3: 38.00 | 10 "
        "| 1: 11111111, 2: 22222222, 3: aaaaaaaa → 33333333 | 3: 35.00 (trained again, bbbbbbbb) |",
        "| test_2016_flickr | structured_t | 3 | 2 | 3 | 37.00 ± 0.50 | 52.00 ± 1.00 "
        "| 1: 36.50 (p 0.100), 2: 37.50 (p 0.200), 3: 37.00 (p 0.300) | 10 "
        "| 1: 11111111, 2: 22222222, 3: 33333333 | 3: 99.00 (decoded again, 33333333) |",
    ]
    assert "10.0" not in text and "35.0 ±" not in text
    assert text.endswith("BLEU signature: `sig`; chrF signature: `csig`\n\nMean ± sample standard deviation over the "
                         "seeds' scores as recorded (two decimals each).\n")  # fmt: skip


def test_a_p_value_at_the_bootstraps_floor_is_printed_as_a_bound():
    """1000 resamples give no p below 1/1001, stored as 0.001: "no resample as far out", printed ≤ 0.001 (a
    printed 0.001 read as a measured value); the next value up, 2/1001, is a value."""
    from structmt.leaderboard_csv import p_text

    assert [p_text(v) for v in ("0.001", 0.001, "0.002", "0.1479", "1.0", "")] == [
        "≤ 0.001", "≤ 0.001", "0.002", "0.1479", "1.0", "",
    ]  # fmt: skip
    assert (p_text("0.0019", 3), p_text("0.043", 3), p_text("0.001", 3)) == ("0.002", "0.043", "≤ 0.001")
    assert (p_text("0.043", relation=True), p_text("0.001", relation=True)) == ("= 0.043", "≤ 0.001")
    rows = [
        _row("m-s-dense-1", 1, 36.0),
        _row("m-s-w3-r2-1", 1, 38.0) | {"p_value_vs_dense": "0.001"},
        _row("m-s-w3-r2-2", 2, 37.0) | {"p_value_vs_dense": "0.002"},
    ]
    text = leaderboard.headline([{k: str(v) for k, v in r.items()} for r in rows], "m", "s")
    assert "| 1: 38.00 (p ≤ 0.001), 2: 37.00 (p 0.002) |" in text


def _bootstrap_by_hand(base: list[str], system: list[str], refs: list[str], n: int) -> tuple[float, float]:
    """sacreBLEU's paired bootstrap written out: the same resamples (its default seed), BLEU of each."""
    from sacrebleu.metrics import BLEU

    idxs = np.random.default_rng(12345).choice(len(refs), size=(n, len(refs)), replace=True)
    metric = BLEU()

    def bleu(hyps: list[str], sample: np.ndarray) -> float:
        return metric.corpus_score([hyps[i] for i in sample], [[refs[i] for i in sample]]).score

    observed = abs(bleu(system, np.arange(len(refs))) - bleu(base, np.arange(len(refs))))
    sys_scores = np.array([bleu(system, s) for s in idxs])
    diffs = np.abs(sys_scores - np.array([bleu(base, s) for s in idxs]))
    p = (np.sum(diffs - diffs.mean() > observed) + 1) / (n + 1)
    ordered = np.sort(sys_scores)
    return round(float(p), 4), round(float(0.5 * (ordered[n - n // 40 - 1] - ordered[n // 40])), 2)


@pytest.mark.parametrize("user_seed", [None, "none", "7"])
def test_paired_bootstrap_is_sacrebleus_test_with_the_system_and_baseline_in_place(tmp_path, monkeypatch, user_seed):
    """sacreBLEU's test with its default seed, whatever SACREBLEU_SEED the user's environment sets (with "none"
    or another seed the recorded p-values and CIs were drawn from other resamples: neither reproducible nor the
    ones ``sacrebleu --paired-bs`` gives)."""
    if user_seed is None:
        monkeypatch.delenv("SACREBLEU_SEED", raising=False)
    else:
        monkeypatch.setenv("SACREBLEU_SEED", user_seed)
    rng = np.random.default_rng(0)
    words = "ein Hund läuft über die grüne Wiese und eine Katze schläft im warmen Haus".split()
    refs = [" ".join(rng.choice(words, 8)) for _ in range(40)]
    good = [r if i % 3 else " ".join(r.split()[:5]) for i, r in enumerate(refs)]  # mostly right
    bad = [" ".join(rng.choice(words, 8)) for _ in range(40)]  # unrelated
    files = {}
    for name, lines in (("ref", refs), ("good", good), ("bad", bad)):
        files[name] = tmp_path / f"{name}.de"
        files[name].write_text("\n".join(lines) + "\n")
    got = paired_bootstrap(files["bad"], files["good"], files["ref"], n_samples=200)
    assert got == _bootstrap_by_hand(bad, good, refs, 200)
    assert got[0] < 0.01  # a real difference
    swapped = paired_bootstrap(files["good"], files["bad"], files["ref"], n_samples=200)
    assert swapped[1] != got[1]  # the CI is the system's, not the baseline's
    # no difference at all: p = 1 (sacreBLEU alone gives its smallest p-value, 1 / 201, as if it were significant)
    same = paired_bootstrap(files["good"], files["good"], files["ref"], n_samples=200)
    assert _bootstrap_by_hand(good, good, refs, 200)[0] == round(1 / 201, 4)
    assert same == (1.0, _bootstrap_by_hand(good, good, refs, 200)[1])
    one_word = [*good[:-1], good[-1] + " Haus"]
    (tmp_path / "near.de").write_text("\n".join(one_word) + "\n")
    assert paired_bootstrap(files["good"], tmp_path / "near.de", files["ref"], n_samples=200) == _bootstrap_by_hand(
        good, one_word, refs, 200
    )


def test_the_p_value_calibration_script_reports_the_leaderboards_p_and_the_two_sided_one(tmp_path, monkeypatch):
    """scripts/pvalue_calibration.py: its first column is the leaderboard's p (sacreBLEU's), its second the
    two-sided bootstrap p of the same resamples, and its A/A table counts both over pairs whose sentences were
    swapped at random (all written out here)."""
    from sacrebleu.metrics import BLEU

    monkeypatch.delenv("SACREBLEU_SEED", raising=False)
    rng = np.random.default_rng(1)
    words = "ein Hund läuft über die grüne Wiese und eine Katze schläft im warmen Haus".split()
    refs = [" ".join(rng.choice(words, 8)) for _ in range(60)]
    base = [r if i % 4 else " ".join(r.split()[:4]) for i, r in enumerate(refs)]
    system = [r if i % 5 else " ".join(r.split()[:4]) for i, r in enumerate(refs)]  # a little better
    for name, lines in (("ref", refs), ("base", base), ("system", system)):
        (tmp_path / f"{name}.de").write_text("\n".join(lines) + "\n")
        (tmp_path / f"{name}-short.de").write_text("\n".join(lines[:40]) + "\n")  # a second pair, shorter
    script = Path(__file__).resolve().parents[1] / "scripts" / "pvalue_calibration.py"
    pairs = [
        ["--pair", *(str(tmp_path / f"{name}{part}.de") for name in ("ref", "base", "system"))]
        for part in ("", "-short")
    ]
    out = subprocess.run(
        [sys.executable, str(script), *pairs[0], *pairs[1], "--replicates", "2"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    idxs = np.random.default_rng(12345).choice(len(refs), size=(1000, len(refs)), replace=True)
    metric = BLEU()  # references given with each call: one metric for all (half the time of one per call)

    def bleu(hyps: list[str], sample) -> float:
        return metric.corpus_score([hyps[i] for i in sample], [[refs[i] for i in sample]]).score

    def p_values(one: list[str], other: list[str]) -> tuple[float, float]:
        d = np.array([bleu(other, s) - bleu(one, s) for s in idxs])
        observed = abs(bleu(other, range(len(refs))) - bleu(one, range(len(refs))))
        return (np.sum(np.abs(d) - np.abs(d).mean() > observed) + 1) / 1001, (
            np.sum(np.abs(d - d.mean()) >= observed) + 1
        ) / 1001

    sacrebleu_p, two_sided = p_values(base, system)
    leaderboards = paired_bootstrap(*(tmp_path / f"{name}.de" for name in ("base", "system", "ref")))[0]
    assert round(sacrebleu_p, 4) == leaderboards and sacrebleu_p < two_sided
    delta = bleu(system, range(len(refs))) - bleu(base, range(len(refs)))
    assert f"| {delta:+.2f} | {sacrebleu_p:.4f} | {two_sided:.4f} |" in out
    swaps = np.random.default_rng(0)
    found = []
    for _ in range(2):
        swap = swaps.random(len(refs)) < 0.5
        one = [s if w else b for b, s, w in zip(base, system, swap, strict=True)]
        other = [b if w else s for b, s, w in zip(base, system, swap, strict=True)]
        found.append(p_values(one, other))
    for name, values in (
        ("sacreBLEU paired-bs", [f[0] for f in found]),
        ("two-sided bootstrap", [f[1] for f in found]),
    ):
        rates = f"{np.mean(np.array(values) < 0.05):.3f} | {np.mean(np.array(values) < 0.01):.3f}"
        assert f"| {name} | {rates} | {np.median(values):.3f} |" in out
    # --replicates 0: the pairs' table alone, the same rows
    alone = subprocess.run(
        [sys.executable, str(script), *pairs[0], *pairs[1], "--replicates", "0"], capture_output=True, text=True
    ).stdout
    assert alone == out.split("\n\nA/A")[0] + "\n" and alone.count("\n| ref") == 2


@pytest.mark.parametrize("logged", [20, 15])
def test_a_finished_checkpoint_is_adopted_without_training_again(tmp_path, monkeypatch, logged):
    """A run killed after its last checkpoint but before train.json: the next call adopts the checkpoint, with
    the checkpoint's updates (fairseq saves it before it logs the last summary, so the kill may cut that off),
    and the commit and machine of the process that trained it (train.log's last session, without what its line
    says after the machine), not its own."""
    from structmt.pipeline import training

    spec = RunSpec(schedule=Schedule(max_update=20))
    run_dir = tmp_path / spec.run_id()
    (run_dir / "checkpoints").mkdir(parents=True)
    torch.save({"optimizer_history": [{"num_updates": 20}]}, run_dir / "checkpoints" / "checkpoint_last.pt")
    (run_dir / "train.log").write_text(
        f"\n# structmt {'0' * 40} on CPU A (AVX2)\n# structmt {'1' * 40} on CPU B (AVX512), NVIDIA H100; fine-tuning "
        "from /runs/dense/checkpoints/checkpoint_last.pt (sha256 ab12)\n"
        f"2026-01-01 | INFO | train | epoch 001 | loss 9.1 | wps 1500.5 | ups 1 | num_updates {logged} | lr 0.001 | "
        "train_wall 12 | wall 13\n"
    )
    monkeypatch.setattr(training, "prepare_data", lambda spec, runs_dir: DataFolder(tmp_path))
    monkeypatch.setattr(training, "keep_model_files", lambda *a: None)
    monkeypatch.setattr(training, "train", lambda *a, **k: pytest.fail("trained again"))
    metrics = training.train_run(spec, runs_dir=tmp_path, log=lambda msg: None)
    assert metrics["updates"] == 20 and metrics["tokens_per_second"] == pytest.approx(1500.5)
    assert (metrics["git_commit"], metrics["machine"]) == ("1" * 40, "CPU B (AVX512), NVIDIA H100")
    assert json.loads((run_dir / "train.json").read_text()) == metrics


def test_a_resumed_runs_wall_clock_adds_each_processs_clock(tmp_path):
    """fairseq's wall clock starts again in a resumed process; a summary that adds no update is ignored."""
    from structmt.fairseq_cli import parse_train_log

    def summary(epoch: int, wps: float, updates: int, train_wall: int, wall: int) -> str:
        return (
            f"x | INFO | train | epoch {epoch:03d} | loss 5 | wps {wps} | ups 1 | num_updates {updates} | lr 0.1 | "
            f"train_wall {train_wall} | wall {wall}\n"
        )

    log = tmp_path / "train.log"
    log.write_text(
        "# structmt aaa on CPU A\n"
        + summary(1, 100.0, 10, 50, 60)
        + summary(2, 200.0, 20, 50, 115)  # killed after this, in epoch 3
        + "# structmt bbb on CPU A\n"
        + summary(3, 400.0, 30, 100, 110)  # the resumed process: its clock starts again
        + "# structmt bbb on CPU A\n"
        + summary(3, 999.0, 30, 1, 5)  # resumed once more when already finished: no update added
    )
    result = parse_train_log(log, tmp_path / "checkpoint_last.pt")
    assert result.updates == 30 and result.wall_seconds == 115 + 110
    assert result.tokens_per_second == pytest.approx((100 * 50 + 200 * 50 + 400 * 100) / 200)


def test_the_wall_clock_is_the_checkpoints_training_time_less_the_fine_tunes_start(tmp_path):
    """fairseq restores its ``wall`` clock stopped when it resumes within an epoch: the log says ``wall 0`` for
    the rest of the run (a SLURM requeue recorded 0.0 s). The checkpoint's cumulative training time is the
    wall-clock, less what a fine-tune carried over from its start; where that is not known, the log's clock."""
    from structmt.fairseq_cli import parse_train_log

    log = tmp_path / "train.log"
    log.write_text(
        "x | INFO | train | epoch 002 | loss 5 | wps 100 | ups 1 | num_updates 20 | lr 0.1 | train_wall 50 | wall 7\n"
    )
    ckpt = tmp_path / "checkpoint_last.pt"
    torch.save({"optimizer_history": [{"num_updates": 20}], "extra_state": {"previous_training_time": 72.5}}, ckpt)
    assert parse_train_log(log, ckpt).wall_seconds == 72.5
    assert parse_train_log(log, ckpt, carried=30.0).wall_seconds == 42.5
    assert parse_train_log(log, ckpt, carried=None).wall_seconds == 7  # a fine-tune's start time not recorded


def test_the_updates_and_rate_are_the_epoch_summaries_not_the_records_between_them(tmp_path):
    """A ``train_inner`` record has the same keys as an epoch's summary: counted too, the rate mixed the mean of a
    few updates into the epoch's."""
    from structmt.fairseq_cli import parse_train_log

    log = tmp_path / "train.log"
    log.write_text(
        "x | INFO | train_inner | epoch 001:  10 / 20 loss=6, wps=999, ups=1, num_updates=10, train_wall=5, wall=6\n"
        "x | INFO | train | epoch 001 | loss 5 | wps 100 | ups 1 | num_updates 20 | train_wall 10 | wall 12\n"
    )
    result = parse_train_log(log, tmp_path / "checkpoint_last.pt")
    assert (result.updates, result.wall_seconds, result.tokens_per_second) == (20, 12, 100.0)


def test_the_parameter_count_is_the_one_fairseq_train_logs(tmp_path):
    from structmt.fairseq_cli import parse_param_count

    log = tmp_path / "train.log"
    log.write_text("x | INFO | fairseq_cli.train | num. shared model params: 9,845,760 (num. trained: 9,845,760)\n")
    assert parse_param_count(log) == 9845760
    log.write_text("x | INFO | fairseq_cli.train | training on 1 devices (GPUs/TPUs)\n")
    assert parse_param_count(log) == 0


def test_a_fine_tune_records_its_starts_training_time_once_and_never_reads_the_start_again(tmp_path, monkeypatch):
    """The start (the dense run's checkpoint_last.pt) may be gone, or trained again under its id, by the time a
    resumed fine-tune ends: its time is recorded at the first launch; a run from scratch carried nothing."""
    from structmt.pipeline import training

    start = tmp_path / "dense.pt"
    torch.save({"optimizer_history": [{"num_updates": 9}], "extra_state": {"previous_training_time": 30.0}}, start)
    tuned = RunSpec(schedule=Schedule(finetune_from=str(start)))
    run_dir = tmp_path / "run"
    assert training.carried_seconds(RunSpec(), run_dir) == 0.0
    assert training.carried_seconds(tuned, run_dir) is None  # not recorded: the log's clock is used
    calls: list = []

    class Trained(Exception):
        pass

    def train(*args):
        calls.append(args)
        raise Trained

    monkeypatch.setattr(training, "train", train)
    monkeypatch.setattr(training, "prepare_data", lambda spec, runs_dir: DataFolder(tmp_path))
    monkeypatch.setattr(training, "keep_model_files", lambda *a: None)
    run_dir = tmp_path / tuned.run_id()
    with pytest.raises(Trained):
        training.train_run(tuned, runs_dir=tmp_path, log=lambda m: None)
    start.unlink()
    assert calls and calls[0][-1] == 30.0 and training.carried_seconds(tuned, run_dir) == 30.0


def test_the_roles_row_is_the_run_of_its_documented_command():
    """results/README.md gives the roles row's command with the archived roles file it was trained from: that
    command's run id is the row's (the id hashes the file's content; today's roles.json is another run, and
    another role mix on the leaderboard)."""
    rows = {r["run_id"] for r in leaderboard.read_rows(REPO / "results" / "leaderboard.csv")}
    archived = "results/archive/roles_a388f44.json"
    assert f"model=structured_multi30k_roles\nmodel.heads_from={archived}`" in (REPO / "results/README.md").read_text()
    cpu_demo = load_schedule("cpu_demo")
    assert RunSpec(model=ModelSpec(heads_from=archived), schedule=cpu_demo).run_id() in rows
    current = RunSpec(model=ModelSpec(heads_from="results/roles.json"), schedule=cpu_demo).run_id()
    assert current.startswith("multi30k_en_de-cpu_demo-w3-r2-roles-") and current in rows  # another run
    demo_roles = "results/archive/roles_cpu_demo_1ef7a82.json"  # the rule of a61ac9f, on the cpu_demo dense model
    readme = " ".join((REPO / "results/README.md").read_text().split())
    assert f"model=structured_multi30k_roles model.heads_from={demo_roles} logger=wandb_offline" in readme
    assert RunSpec(model=ModelSpec(heads_from=demo_roles), schedule=cpu_demo).run_id() in rows
    files = (archived, "results/roles.json", demo_roles, "results/analysis_cpu_demo/roles.json")
    labels = {ModelSpec(heads_from=f).heads_label() for f in files}
    assert labels == {"roles:fe15b689", "roles:09613f93", "roles:59e8524b", "roles:ff20bc08"}  # never seeds of one
    today = RunSpec(model=ModelSpec(heads_from="results/analysis_cpu_demo/roles.json"), schedule=cpu_demo).run_id()
    assert "model.heads_from=results/analysis_cpu_demo/roles.json logger=wandb_offline" in readme and today in rows
    assert {
        r["heads"] for r in leaderboard.read_rows(REPO / "results" / "leaderboard.csv") if "-roles-" in r["run_id"]
    } == labels


def test_finetune_recipe_starts_the_structured_model_from_the_dense_reproduce_run(tmp_path):
    dense, structured = pair("finetune", load_schedule(RECIPES["finetune"]))
    assert dense.schedule.name == "reproduce" and dense.model.arch == "transformer_multi30k"
    assert structured.schedule.finetune_from == dense.run_id() and structured.model.structured
    assert structured.run_id().startswith("multi30k_en_de-finetune-w3-r2-ft-")
    # without the option, ids are those of runs from before it existed (results/ is keyed by them)
    demo = RunSpec(model=ModelSpec(arch="transformer_multi30k"), schedule=load_schedule("cpu_demo"))
    assert demo.run_id() == "multi30k_en_de-cpu_demo-dense-fc731a8c"
    with pytest.raises(FileNotFoundError, match="train.finetune_from=.*no finished run of that id"):
        structured.schedule.finetune_checkpoint(tmp_path)
    (tmp_path / dense.run_id()).mkdir()
    (tmp_path / dense.run_id() / "train.json").write_text("{}")
    start = structured.schedule.finetune_checkpoint(tmp_path)
    assert start == tmp_path / dense.run_id() / "checkpoints" / "checkpoint_last.pt"
    with pytest.raises(FileNotFoundError, match="no such checkpoint file"):
        Schedule(finetune_from=str(tmp_path / "nope.pt")).finetune_checkpoint(tmp_path)


@pytest.mark.parametrize("updates, name", [("5", "reproduce+max_update=5"), ("3500", "reproduce")])
def test_a_recipe_with_other_updates_is_a_schedule_of_its_own(monkeypatch, tmp_path, updates, name):
    """``--max-update`` changes the schedule: its rows must not pass for the recipe's (the headline's)."""
    from structmt.pipeline import recipes

    seen = []
    monkeypatch.setattr(recipes, "compare", lambda dense, structured, **kw: seen.append((dense, structured)) or [])
    argv = ["reproduce", "--max-update", updates, "--allow-dirty", "--train-only", "--runs-dir", str(tmp_path)]
    recipes.main(argv)
    ((dense, structured),) = seen
    assert dense.schedule.name == structured.schedule.name == name
    assert dense.schedule.max_update == structured.schedule.max_update == int(updates)
    assert f"-{name}-" in dense.run_id() and f"-{name}-" in structured.run_id()


def test_length_ratio_counts_pieces_with_end_of_sentence(data_bin):
    from fairseq.data import Dictionary

    from structmt.data.length_ratio import piece_totals

    src, tgt = piece_totals(data_bin, "test", "en", "de")
    for lang, total in (("en", src), ("de", tgt)):
        vocab = Dictionary.load(str(data_bin / f"dict.{lang}.txt"))
        lines = (data_bin.parent / "spm" / f"test.{lang}").read_text().splitlines()
        assert total == sum(len(vocab.encode_line(line, add_if_not_exist=False)) for line in lines)


def test_length_ratio_names_the_split_and_languages_a_data_bin_lacks_and_those_it_holds(data_bin):
    from structmt.data.length_ratio import main

    with pytest.raises(
        SystemExit,
        match=r"holds no train\.en-ro \(.*--tgt ro\); it holds: test\.en-de, test1\.en-de, train\.en-de, valid\.en-de$",
    ):
        main([str(data_bin), "--tgt", "ro"])


def test_length_ratio_prints_source_over_target_as_the_cross_slope(data_bin, capsys):
    """The slope is source pieces over target pieces, with two decimals; the target defaults to de."""
    from structmt.data.length_ratio import main, piece_totals

    src, tgt = piece_totals(data_bin, "test", "en", "de")
    assert src != tgt
    main([str(data_bin), "--split", "test"])
    assert capsys.readouterr().out == f"test: {src} en / {tgt} de tokens; --struct-cross-slope {src / tgt:.2f}\n"


def test_length_ratio_of_a_data_bin_without_binarized_splits_says_so(tmp_path):
    """A folder with the dictionaries only: the error says it holds no split and what to give instead."""
    from structmt.data.length_ratio import main

    (tmp_path / "dict.en.txt").write_text("a 1\n")
    (tmp_path / "dict.de.txt").write_text("a 1\n")
    (tmp_path / "notes.bin").write_text("")  # not a split: no <split>.<src>-<tgt>.<lang> name
    with pytest.raises(SystemExit, match=r"it holds: no binarized split \(give a structmt-prepare data-bin\)$"):
        main([str(tmp_path)])


def test_a_speed_verdict_on_a_cross_band_needs_that_bands_measured_bleu(tmp_path):
    from structmt.bench.report import cross_bleu, train_section

    record = {
        "updates": 60,
        "results": {
            "docs2048": {"dense": 100.0, "structured": 150.0, "ratio": 1.5},
            "docs2048_cross32": {"dense": 100.0, "structured": 400.0, "ratio": 4.0},
            "docs2048_cross4": {"dense": 100.0, "structured": 300.0, "ratio": 3.0},
        },
    }
    base = {"data": "multi30k_en_de", "schedule": "cpu_demo", "seed": 1, "heads": ""}
    rows = [
        _row("d", 1, 14.8) | base | {"window": "", "rare": ""},
        _row("s", 1, 24.1) | base | {"window": 3, "rare": 2, "heads": "auto"},
        _row("x4", 1, 27.1) | base | {"window": 3, "rare": 2, "heads": "auto", "cross": "w4/slope0.97"},
    ]
    leaderboard.add_rows(tmp_path / "leaderboard.csv", rows)
    quality = cross_bleu(tmp_path)
    assert list(quality) == [4] and "BLEU 27.10 on test_2016_flickr" in quality[4]
    assert "without the cross band 24.10, dense 14.80" in quality[4]
    # a re-run of the dense partner on another machine, two dense runs beside a band on a second schedule: all
    # are shown, and only a run evaluated again is called a re-run
    longer = base | {"schedule": "reproduce", "seed": 3}
    more = [
        _row("d", 1, 15.7) | base | {"window": "", "rare": "", "hypothesis": "d.rerun.de"},
        _row("d3", 3, 36.8) | longer | {"window": "", "rare": ""},
        _row("d3b", 3, 37.0) | longer | {"window": "", "rare": ""},
        _row("s3", 3, 38.4) | longer | {"window": 3, "rare": 2, "heads": "auto"},
        _row("x4-3", 3, 39.0) | longer | {"window": 3, "rare": 2, "heads": "auto", "cross": "w4/slope0.97"},
    ]
    leaderboard.add_rows(tmp_path / "leaderboard.csv", more)
    assert cross_bleu(tmp_path)[4] == (
        "BLEU 27.10 on test_2016_flickr (`cpu_demo` schedule, seed 1; without the cross band 24.10, dense 14.80 or "
        "15.70 (re-runs); run `x4`); BLEU 39.00 on test_2016_flickr (`reproduce` schedule, seed 3; without the cross "
        "band 38.40, dense 36.80 or 37.00 (runs d3, d3b); run `x4-3`)"
    )
    # a re-run of the band itself: one entry, both scores (it was listed twice, as if two runs)
    band = {"window": 3, "rare": 2, "heads": "auto", "cross": "w4/slope0.97", "hypothesis": "x4.rerun.de"}
    leaderboard.add_rows(tmp_path / "leaderboard.csv", [_row("x4", 1, 28.0) | base | band])
    quality = cross_bleu(tmp_path)
    assert quality[4].startswith("BLEU 27.10 or 28.00 (re-runs) on test_2016_flickr (`cpu_demo` schedule, seed 1;")
    assert quality[4].count("run `x4`") == 1 and "run `x4-3`" in quality[4]
    # the verdict is on the benchmarked structure's band: a w=5, r=1 band speaks only for a w=5, r=1 benchmark
    other = _row("x4-w5", 1, 20.0) | base | {"window": 5, "rare": 1, "heads": "auto", "cross": "w32/slope0.97"}
    leaderboard.add_rows(tmp_path / "leaderboard.csv", [other])
    sink = {"window": 3, "rare": 2, "heads": "auto", "cross": "w8/slope0.97", "options": "error=sink:1"}
    leaderboard.add_rows(tmp_path / "leaderboard.csv", [_row("x8-sink", 1, 20.0) | base | sink])  # another model
    assert list(cross_bleu(tmp_path)) == [4]
    assert list(cross_bleu(tmp_path, {"window": 5, "rare": 1})) == [32]
    text = "\n".join(train_section(record, quality))
    assert "| docs2048_cross4 | 100 | 300 | 3.00 | ≥ 2.0 | yes |" in text
    assert "| docs2048_cross32 | 100 | 400 | 4.00 | ≥ 2.0 | yes, BLEU not measured |" in text
    assert "Goal docs2048 ≥ 2.0: met by `docs2048_cross4` (3.00); fast enough but no verdict without a " in text
    assert "Cross band W=32: BLEU not measured" in text


def test_a_cross_cell_writes_a_whole_slope_without_a_decimal_point_and_reads_back_its_half_width():
    """``model.cross_slope=1`` and ``=1.0`` are one band: one ``cross`` cell, ``w4/slope1``, whose half-width the
    benchmark report reads back."""
    from structmt.leaderboard_csv import cross_cell, cross_window

    assert cross_cell(4, 1) == cross_cell(4, 1.0) == "w4/slope1"
    assert cross_cell(32, 0.97) == "w32/slope0.97"
    assert [cross_window(c) for c in ("w4/slope1", "w32/slope0.97", "")] == [4, 32, None]


def test_finetune_from_a_dense_run_loads_its_weights_into_the_structured_model(tmp_path):
    """Through the pipeline: a structured run with ``finetune_from`` = a finished dense run starts from that
    run's weights (fairseq's --finetune-from-model: parameter names match), then resumes from its own."""
    from structmt.pipeline.spec import DataSpec
    from structmt.pipeline.training import train_run

    data = DataSpec(vocab_size=500, max_train_lines=300, max_eval_lines=20)
    schedule = Schedule(name="smoke", max_update=3, warmup=1, max_tokens=1024, threads=1, save_interval=100)
    dense = RunSpec(data=data, model=ModelSpec(arch="transformer_tiny"), schedule=schedule)
    tuned = RunSpec(
        data=data,
        model=ModelSpec(arch="structured_transformer_tiny"),
        schedule=Schedule(**{**schedule.__dict__, "finetune_from": dense.run_id()}),
    )
    quiet = lambda msg: None  # noqa: E731
    with pytest.raises(FileNotFoundError, match="no finished run of that id"):
        train_run(tuned, runs_dir=tmp_path, log=quiet)
    train_run(dense, runs_dir=tmp_path, log=quiet)
    assert train_run(tuned, runs_dir=tmp_path, log=quiet)["updates"] == 3
    log = (tmp_path / tuned.run_id() / "train.log").read_text()
    start = tmp_path / dense.run_id() / "checkpoints" / "checkpoint_last.pt"
    assert f"--finetune-from-model {start}" in log and f"loading pretrained model from {start}" in log
    # the log names the weights it started from by content (a run id names settings; a re-trained dense run of
    # the same id has other weights)
    assert f"; fine-tuning from {start} (sha256 {hashlib.sha256(start.read_bytes()).hexdigest()})" in log


def test_every_headline_row_of_the_readme_is_what_the_leaderboard_prints_now():
    """The README's result tables are ``structmt-leaderboard --headline`` rows under a marker naming the command,
    which every publish of the leaderboard rewrites them by: the committed README is what a publish writes (a row
    that a newer seed or re-run changed, a mean, a seed count, a commit, fails here), and no such table lacks its
    marker (it would go stale unseen)."""
    rows = leaderboard.read_rows(REPO / "results" / "leaderboard.csv")
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert leaderboard.refresh_headlines(text, rows) == text, "run structmt-leaderboard: README.md's tables are stale"
    header = leaderboard.headline([], "", "").splitlines()[0]
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("| test set | model |")]
    assert len(starts) == 2, "README.md has a headline table of reproduce and one of cpu_demo"
    for i, schedule in zip(starts, ("reproduce", "cpu_demo"), strict=True):
        assert lines[i] == header, f"README.md line {i + 1}: the header is not the --headline header"
        assert lines[i - 1] == f"<!-- structmt-leaderboard --headline {schedule} -->", f"README.md line {i}"


def _reference(folder: Path, test_set: str) -> Path:
    """The German reference of the Multi30k ``test_set``, found as data preparation finds it (mirror, download,
    offline mirror) and unpacked into ``folder`` once."""
    ref, name = folder / f"{test_set}.de", f"{test_set}.de.gz"
    if not ref.exists():
        paths, _ = fetch_multi30k([name], None, folder / "download")
        ref.write_bytes(gzip.decompress(paths[name].read_bytes()))
    return ref


def test_every_committed_hypothesis_file_is_a_rows_and_every_row_has_its_file():
    """An evaluation killed between keeping its hypotheses and adding its rows leaves a file no row names:
    found here before it is committed (and a row whose file is missing, the other way round)."""
    rows = leaderboard.read_rows(REPO / "results" / "leaderboard.csv")
    named = {r["hypothesis"] for r in rows}
    kept = {f"results/hyps/{p.name}" for p in (REPO / "results" / "hyps").iterdir()}
    assert sorted(kept - named) == [] and sorted(named - kept) == []


def test_every_leaderboard_row_rescores_with_the_sacrebleu_cli_from_its_committed_hypothesis(tmp_path):
    """The goal a reviewer checks by hand: ``sacrebleu REF -i results/hyps/… -b -w 2`` gives each committed
    row's BLEU exactly, the reference being the Multi30k test set (eval sets are never cleaned)."""
    rows = leaderboard.read_rows(REPO / "results" / "leaderboard.csv")
    assert rows and {r["data"] for r in rows} == {"multi30k_en_de"}, "a row on other data needs its reference here"
    differ = []
    for row in rows:
        ref = _reference(tmp_path, row["test_set"])
        cli = [sys.executable, "-m", "sacrebleu", str(ref), "-i", str(REPO / row["hypothesis"]), "-b", "-w", "2"]
        bleu = float(subprocess.run(cli, capture_output=True, text=True, check=True).stdout)
        if bleu != float(row["bleu"]):
            differ.append(f"{row['run_id']} {row['test_set']}: row {row['bleu']}, sacrebleu CLI {bleu}")
    assert not differ, "\n".join(differ)


def test_every_committed_p_value_recomputes_from_the_committed_hypotheses_of_the_run_and_its_dense_partner(tmp_path):
    """A structured row's p-value and CI come back from committed files alone: paired_bootstrap of the dense
    run of the same data, seed and schedule (a fine-tune's: the ``reproduce`` one it started from), scored at
    the same commit, or where the dense run was not scored again then, its first evaluation."""
    rows = leaderboard.read_rows(REPO / "results" / "leaderboard.csv")
    tested, differ = 0, []
    for row in (r for r in rows if r["p_value_vs_dense"] != ""):
        schedule = RECIPES["reproduce"] if row["schedule"] == RECIPES["finetune"] else row["schedule"]
        partners = [
            r
            for r in rows
            if (r["arch"], r["data"], r["test_set"], r["seed"], r["schedule"])
            == (row["arch"].removeprefix("structured_"), row["data"], row["test_set"], row["seed"], schedule)
        ]
        assert partners, f"{row['run_id']} {row['test_set']}: no dense row to compare with"
        dense = next((r for r in partners if r["git_commit"] == row["git_commit"]), partners[0])
        ref = _reference(tmp_path, row["test_set"])
        got = paired_bootstrap(REPO / dense["hypothesis"], REPO / row["hypothesis"], ref)
        if got != (float(row["p_value_vs_dense"]), float(row["bleu_ci95"])):
            differ.append(f"{row['run_id']} {row['test_set']}: row {row['p_value_vs_dense']}, recomputed {got}")
        tested += 1
    assert tested >= 12 and not differ, "\n".join(differ)


def test_the_first_analysis_page_says_it_is_kept_as_written_and_cannot_be_rendered_again(tmp_path):
    """results/ANALYSIS.md predates columns the code reports now and its checkpoint is lost: the page says so, and
    re-rendering refuses, pointing away from results/ (the first line's command would overwrite its roles.json)."""
    from structmt.analysis.report import render_page

    page = (REPO / "results" / "ANALYSIS.md").read_text()
    assert "**Kept as written at 3a6520f, not re-rendered.**" in page.split("\n## ")[0]
    for name in ("ANALYSIS.md", "analysis.json"):
        (tmp_path / name).write_bytes((REPO / "results" / name).read_bytes())
    with pytest.raises(ValueError, match="lacks 'row_stochastic_with_noise'.*with --out-dir a folder of its own, not"):
        render_page(tmp_path)


@pytest.mark.parametrize("folder", ["analysis_seed1", "analysis_seed2", "analysis_seed3", "analysis_cpu_demo"])
def test_each_analysis_page_is_its_json_rendered_by_the_code_now(folder, tmp_path):
    """The page's numbers are its analysis.json's; re-rendering (render_page) changes nothing."""
    from structmt.analysis.report import render_page

    copy = tmp_path / folder
    copy.mkdir()
    for name in ("ANALYSIS.md", "analysis.json"):
        (copy / name).write_bytes((REPO / "results" / folder / name).read_bytes())
    render_page(copy)
    assert (copy / "ANALYSIS.md").read_text() == (REPO / "results" / folder / "ANALYSIS.md").read_text()


def test_the_machine_of_a_row_tells_apart_cpus_of_one_model_name_by_the_kernels_torch_runs(monkeypatch):
    """Two CPUs reporting "AMD EPYC" gave other float results (the demo's 14.84 and 15.72); the machine column
    names the instruction set torch's CPU kernels dispatch to, so such rows can be told apart."""
    from structmt import provenance

    monkeypatch.setattr(provenance, "cpu_model", lambda: "AMD EPYC")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    labels = set()
    for capability in ("AVX512", "AVX2"):
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda c=capability: c)
        labels.add(provenance.machine_label())
    assert labels == {"AMD EPYC (AVX512)", "AMD EPYC (AVX2)"}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # fairseq would train on the GPU: named too
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert provenance.machine_label() == "AMD EPYC (AVX2), NVIDIA H100 80GB HBM3"


def test_the_cpu_model_is_cpuinfos_model_name_else_the_platforms_processor(tmp_path, monkeypatch):
    from structmt import provenance

    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(provenance, "Path", lambda path: cpuinfo if path == "/proc/cpuinfo" else Path(path))
    read = provenance.cpu_model.__wrapped__  # not the process's cached answer
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel\t\t: 17\nmodel name\t: AMD EPYC 9654\n")
    assert read() == "AMD EPYC 9654"
    cpuinfo.write_text("processor\t: 0\nBogoMIPS\t: 50.00\nCPU implementer\t: 0x41\n")  # an ARM CPU: no model name
    monkeypatch.setattr(provenance.platform, "processor", lambda: "aarch64")
    assert read() == "aarch64"
    cpuinfo.unlink()  # no /proc (macOS), and a platform that names no processor
    monkeypatch.setattr(provenance.platform, "processor", lambda: "")
    assert read() == "unknown"


def test_a_benchmark_records_the_commit_of_the_code_it_started_on_not_the_checkouts_now(monkeypatch):
    from structmt import provenance

    monkeypatch.setattr(provenance, "git_commit", lambda: "a" * 40 + "+dirty")  # the checkout changed since
    monkeypatch.setattr(provenance, "read_commit", lambda: "b" * 40)
    assert provenance.machine()["commit"] == "a" * 40 + "+dirty"


def test_the_commands_default_results_folder_is_the_committed_one():
    """``--results-dir``'s default (``results/``): the leaderboard the README reports and new rows join."""
    from structmt.paths import RESULTS_DIR, ResultsFolder

    assert RESULTS_DIR == REPO / "results" and ResultsFolder(RESULTS_DIR).leaderboard.is_file()


def test_every_headline_row_names_clean_commits_and_its_training_log_is_committed():
    """The ``reproduce`` and ``finetune`` rows (the README's headline): each names the full, clean commit that
    trained and the one that scored it, its hypotheses and its run's training log are committed, and the goal
    the README calls met (#15: test_2016_flickr, mean of three seeds, dense >= 36.0, structured >= dense - 0.3)
    still holds over the seeds' first evaluations."""
    rows = leaderboard.read_rows(REPO / "results" / "leaderboard.csv")
    headline = [r for r in rows if r["schedule"] in {RECIPES[recipe] for recipe in HEADLINE}]
    assert headline
    for r in headline:
        for column in ("git_commit", "train_commit"):
            assert re.fullmatch("[0-9a-f]{40}", r[column]), f"{r['run_id']}: {column} {r[column]!r}"
        assert (REPO / r["hypothesis"]).is_file(), r["hypothesis"]
        assert (REPO / "results" / "logs" / f"{r['run_id']}.log.gz").is_file(), f"no training log of {r['run_id']}"
    firsts = [e[0] for e in leaderboard.evaluations(headline).values()]
    means = {}
    for model in ("transformer_multi30k", "structured_transformer_multi30k"):
        seeds = [
            float(r["bleu"])
            for r in firsts
            if (r["schedule"], r["test_set"], r["arch"], r["cross"], r["options"])
            == ("reproduce", "test_2016_flickr", model, "", "")
        ]
        assert len(seeds) == 3, f"{model}: {len(seeds)} seeds"
        means[model] = sum(seeds) / 3
    assert means["transformer_multi30k"] >= 36.0
    assert means["structured_transformer_multi30k"] >= means["transformer_multi30k"] - 0.3
