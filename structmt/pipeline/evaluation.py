"""Evaluating a trained run: decode each test set, score it with sacreBLEU (against the
dense baseline too: paired bootstrap), add the leaderboard rows and log the run to W&B;
and one experiment end to end (:func:`run_experiment`: train, then evaluate)."""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ..data.datasets import default_vocab, test_sets
from ..fairseq_cli import StepError, decode, parse_param_count
from ..files import atomic_path, read_lines, write_text_atomic
from ..leaderboard_csv import (
    BOOTSTRAP_SAMPLES,
    BOOTSTRAP_SEED,
    LeaderboardRow,
    fill_empty,
    row_key,
    score_text,
    short_commit,
    training,
)
from ..paths import REPO_ROOT, ResultsFolder, RunFolder
from ..provenance import git_commit, machine_label
from . import leaderboard, tracking
from .spec import RunSpec, Schedule, named_schedule, read_spec
from .training import check_vocabulary, data_label, prepare_data, run_lock, train_run


@dataclass
class Score:
    bleu: float
    chrf: float
    bleu_signature: str
    chrf_signature: str


def bleu_metric(references: list[str] | None = None) -> Any:
    """The BLEU that every score and p-value uses (sacreBLEU's defaults), with ``references`` cached when given:
    one definition, so a p-value never tests another BLEU than the score beside it."""
    from sacrebleu.metrics import BLEU

    return BLEU(references=None if references is None else [references])


def score(hyp: Path, ref: Path) -> Score:
    """sacreBLEU BLEU and chrF of detokenized ``hyp`` against the raw ``ref``, with signatures."""
    from sacrebleu.metrics import CHRF

    hyps, refs = read_lines(hyp), read_lines(ref)
    if len(hyps) != len(refs):
        raise StepError(f"{hyp} has {len(hyps)} lines but the reference {ref} has {len(refs)}")
    bleu, chrf = bleu_metric(), CHRF()
    b, c = bleu.corpus_score(hyps, [refs]), chrf.corpus_score(hyps, [refs])
    return Score(
        bleu=round(b.score, 2),
        chrf=round(c.score, 2),
        bleu_signature=str(bleu.get_signature()),
        chrf_signature=str(chrf.get_signature()),
    )


def paired_bootstrap(
    baseline_hyp: Path, system_hyp: Path, ref: Path, n_samples: int = BOOTSTRAP_SAMPLES
) -> tuple[float, float]:
    """sacreBLEU's paired bootstrap resampling: (p-value, 95% CI half-width of the system's BLEU).

    Two identical hypothesis files get p = 1: there is no difference to test. (sacreBLEU counts resamples whose
    difference exceeds the real one, none when every difference is 0, and so gives such a pair its smallest
    p-value, 1 / (n_samples + 1), as if the difference were significant.)"""
    from sacrebleu.significance import PairedTest

    refs = read_lines(ref)
    systems = [("baseline", read_lines(baseline_hyp)), ("system", read_lines(system_hyp))]
    for path, (_, hyps) in zip((baseline_hyp, system_hyp), systems, strict=True):
        if len(hyps) != len(refs):
            raise StepError(f"{path} has {len(hyps)} lines but the reference {ref} has {len(refs)}")
    test = PairedTest(systems, {"BLEU": bleu_metric(refs)}, references=None, test_type="bs", n_samples=n_samples)
    test._seed = BOOTSTRAP_SEED  # sacreBLEU's default, whatever SACREBLEU_SEED says ("none" draws other resamples)
    _, results = test()
    res = results["BLEU"][1]
    p_value = 1.0 if systems[0][1] == systems[1][1] else float(res.p_value)
    return round(p_value, 4), round(float(res.ci), 2)


#: the decoding settings a row's ``options`` names where they are not its schedule's (``beam=2 lenpen=0.6``): a dense
#: row's options hold nothing else
DECODING = ("beam", "lenpen")


def row_labels(spec: RunSpec, test_name: str) -> dict[str, str]:
    """The ``data``, ``test_set`` and ``options`` columns of a row of ``spec``: another direction than the data
    set's name, another vocabulary than its default (``data.vocab_size``), a slice of the training data
    (``data.max_train_lines``) and a slice of the test set (``data.max_eval_lines``) are named
    (``multi30k_en_de-de-en``, ``multi30k_en_de-vocab1000-train2000``, ``test_2016_flickr[:100]``), and so are
    structure options without a column of their own and a beam or length penalty other than the schedule's
    (``beam=2``, ``lenpen=0.6``; its ``conf/train`` file's, else the default's), so such rows are never compared
    with, or averaged into, rows of the full data, the named direction or the default model.
    (Rows stored before a label existed get it when they are added again.)"""
    d, n = spec.data, spec.data.max_eval_lines
    data = data_label(d) + (f"-vocab{d.vocab_size}" if d.vocab_size != default_vocab(d.name) else "")
    usual = named_schedule(spec.schedule.name) or Schedule()
    decoding = [
        f"{key}={getattr(spec.schedule, key)}" for key in DECODING if getattr(spec.schedule, key) != getattr(usual, key)
    ]
    return {
        "data": data + (f"-train{d.max_train_lines}" if d.max_train_lines else ""),
        "test_set": f"{test_name}[:{n}]" if n else test_name,
        "options": " ".join(o for o in (spec.model.options_label(), *decoding) if o),
    }


def named_test_set(label: str) -> str:
    """The test set a row's ``test_set`` label names (``test_2016_flickr[:100]`` → ``test_2016_flickr``)."""
    return label.partition("[")[0]


def keep_hypotheses(hyp: Path, kept: Path) -> Path:
    """Keep ``hyp`` as ``kept`` (the leaderboard's file); returns where it was kept.

    The first evaluation of a run takes ``kept``'s name.  A re-run whose hypotheses differ
    (another machine or commit) never overwrites it: it is kept beside it, named by the
    digest of its content (``<run>.<test>.<sha256[:8]>.<lang>``), and becomes its own row.
    """
    data = hyp.read_bytes()
    if kept.exists() and kept.read_bytes() != data:
        kept = kept.with_name(leaderboard.rerun_name(kept.name, data))
    if not kept.exists():
        with atomic_path(kept) as tmp:
            tmp.write_bytes(data)
    return kept


def row_file(text: str) -> Path:
    """The file a row's ``hypothesis`` column names (relative to the repository, or absolute)."""
    path = Path(text)
    return path if path.is_absolute() else REPO_ROOT / path


def row_text(path: Path) -> str:
    """``path`` as a row's ``hypothesis`` column names it: relative to the repository where it is inside (however
    it was spelt: relative to the current directory, or through a link), else absolute."""
    path = path.resolve()
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def _kept_here(rows: list[dict[str, Any]], run: RunFolder, results: ResultsFolder, tgt: str) -> list[dict[str, Any]]:
    """The stored ``rows`` of an evaluated run as ``results``' leaderboard holds them: a row kept in another
    results folder gets its hypotheses kept in this one's ``hyps/`` too (:func:`keep_hypotheses`), so it never
    names a file of a folder that may be removed. The file is the row's own, else the run folder's decoding."""
    out = []
    for row in rows:
        path = row_file(row["hypothesis"])
        if path.parent.resolve() != results.hyps.resolve():
            decoded = run.decoded(named_test_set(row["test_set"]), tgt)
            source = path if path.is_file() else decoded
            if not source.is_file():
                raise StepError(
                    f"the hypotheses of {row['run_id']} on {row['test_set']} are gone: neither {path} "
                    f"nor {decoded} exists; remove {run.result} to decode it again"
                )
            row = row | {"hypothesis": row_text(keep_hypotheses(source, results.hyps / path.name))}
        out.append(row)
    return out


def first_evaluation(board: list[dict[str, str]], run_id: str, test_set: str) -> dict[str, str] | None:
    """The leaderboard's first row of ``run_id`` on ``test_set`` (its others are re-runs), or None."""
    rows = leaderboard.evaluations(board).get((run_id, test_set))
    return rows[0] if rows else None


def dense_partner_hypotheses(
    board: list[dict[str, str]], base: RunFolder, test_set: str, test_name: str, tgt: str
) -> Path | None:
    """What a structured run's first evaluation pairs its p-value with: the hypotheses of its dense partner's first
    evaluation on the leaderboard (the dense row the headline shows beside it), else, the partner not on it yet,
    its run folder's decoding; None where neither exists. A dense run decoded again with other hypotheses
    (retrained, another machine) is a re-run of its own: pairing the first structured evaluation with it would
    give a p-value against another dense model than the one shown. (A structured re-run pairs with the dense run
    decoded beside it, a re-run alike.)"""
    row = first_evaluation(board, base.path.name, test_set)
    if row is None:
        decoded = base.decoded(test_name, tgt)
        return decoded if decoded.is_file() else None
    path = row_file(row["hypothesis"])
    if not path.is_file():
        raise StepError(
            f"the dense partner's first evaluation on {test_set} names {path}, which is gone: restore it (git "
            "checkout -- results/hyps), so the p-value pairs with the dense row the leaderboard shows"
        )
    return path


def keep_training_log(run_dir: Path, logs_dir: Path) -> Path:
    """Keep a run's fairseq training log as ``<logs_dir>/<run id>.log.gz`` (gzip without a timestamp, so the
    same log gives the same bytes); returns its path. A resumed run's log holds every session that trained it,
    each headed by the commit and machine that ran it, and replaces the kept one it continues. The log of
    another training of the same run id (trained again from scratch, on another machine, say) never
    overwrites the kept one: it is kept beside it as ``<run id>.<sha256[:8]>.log.gz``."""
    log = RunFolder(run_dir).train_log.read_bytes()
    kept = logs_dir / f"{run_dir.name}.log.gz"
    if kept.exists() and not log.startswith(gzip.decompress(kept.read_bytes())):
        kept = logs_dir / f"{run_dir.name}.{hashlib.sha256(log).hexdigest()[:8]}.log.gz"
    with atomic_path(kept) as tmp, open(tmp, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
            gz.write(log)
    return kept


def run_experiment(
    spec: RunSpec,
    *,
    runs_dir: Path,
    results_dir: Path,
    baseline: RunSpec | None = None,
    log: Any = print,
    wandb: tracking.WandbSettings | None = None,
    objective: bool = False,
) -> list[dict[str, Any]]:
    """Run (or resume, or skip) one experiment and add its rows to the leaderboard; with ``objective`` (a sweep's
    member), score it on the validation set before the evaluation, so that its W&B run has the sweep's objective."""
    train_run(spec, runs_dir=runs_dir, log=log)
    if objective:
        valid_bleu(spec, runs_dir=runs_dir, log=log)
    return evaluate_run(spec, runs_dir=runs_dir, results_dir=results_dir, baseline=baseline, log=log, wandb=wandb)


def evaluate_run(
    spec: RunSpec,
    *,
    runs_dir: Path,
    results_dir: Path,
    baseline: RunSpec | None = None,
    log: Any = print,
    wandb: tracking.WandbSettings | None = None,
) -> list[dict[str, Any]]:
    """Decode and score a trained run, add its leaderboard rows, log it to W&B (skipped when done)."""
    run_id = spec.run_id()  # once: it hashes the roles file's content, which another job may rewrite meanwhile
    with run_lock(runs_dir, run_id):
        return _evaluate_locked(spec, run_id, runs_dir, results_dir, baseline, log, wandb)


def valid_bleu(spec: RunSpec, *, runs_dir: Path, log: Any = print) -> float:
    """BLEU of a trained run on the validation set: a sweep's objective (choosing (w, r) by test BLEU would leave
    no unseen data to report the choice on).  Decoded once; the score is kept in ``<run>/valid.json``."""
    run_id = spec.run_id()
    run = RunFolder(runs_dir / run_id)
    with run_lock(runs_dir, run_id):
        if not run.valid_score.exists():
            data = prepare_data(spec, runs_dir)
            check_vocabulary(data, run.path, (spec.data.src, spec.data.tgt))
            out = run.decoded("valid", spec.data.tgt)
            hyp = decode(
                data.bin,
                run.model_checkpoint(spec.schedule.average_last),
                "valid",
                out,
                beam=spec.schedule.beam,
                lenpen=spec.schedule.lenpen,
                log=run.decode_log,
            )
            s = score(hyp, data.text("valid", spec.data.tgt))
            write_text_atomic(run.valid_score, json.dumps(asdict(s), indent=2) + "\n")
            log(f"[{run_id}] valid: BLEU {score_text(s.bleu)} (the sweep objective)")
        return float(json.loads(run.valid_score.read_text())["bleu"])


def wandb_run_id(run_id: str, hypotheses: list[Path]) -> str:
    """The W&B run of one evaluation, ``<run_id>-<digest of its hypotheses' content>``: an evaluation whose output
    differs (another machine or commit, in this results folder or another) is a W&B run of its own, never
    resumed over the first one's scores; the same output again is the same W&B run."""
    digest = hashlib.sha256()
    for hyp in hypotheses:
        digest.update(hashlib.sha256(hyp.read_bytes()).digest())
    return f"{run_id}-{digest.hexdigest()[:8]}"


def _evaluate_locked(
    spec: RunSpec,
    run_id: str,
    runs_dir: Path,
    results_dir: Path,
    baseline: RunSpec | None,
    log: Any,
    wandb: tracking.WandbSettings | None,
) -> list[dict[str, Any]]:
    run, results = RunFolder(runs_dir / run_id), ResultsFolder(results_dir)
    done, csv_path = run.result, results.leaderboard
    if done.exists():
        # the rows still go to this leaderboard (another results_dir, or a lost CSV); add_rows adds each row once.
        # Rows of a slice or another direction, stored before those were named, get their labels
        stored = json.loads(done.read_text())
        rows_done = [row | row_labels(spec, named_test_set(row["test_set"])) for row in stored["rows"]]
        rows_done = _kept_here(rows_done, run, results, spec.data.tgt)
        if baseline is not None and spec.model.structured:
            rows_done = _late_p_values(spec, runs_dir, results_dir, baseline, rows_done, log)
            late = [{k: r[k] for k in ("p_value_vs_dense", "bleu_ci95")} for r in rows_done]
            if [r["p_value_vs_dense"] for r in rows_done] != [r["p_value_vs_dense"] for r in stored["rows"]]:
                stored["rows"] = [r | p for r, p in zip(stored["rows"], late, strict=True)]
                if stored.get("wandb") is not None:  # its W&B summary gets the p-values too (the same W&B run):
                    stored["wandb"] = None  # logged again below; until that succeeds, by every later evaluation
                write_text_atomic(done, json.dumps(stored, indent=2) + "\n")
        added = leaderboard.add_rows(csv_path, rows_done)
        filled = fill_empty(csv_path, rows_done, ("p_value_vs_dense", "bleu_ci95"))
        if added or filled:
            leaderboard.publish(results_dir)
        log(f"[{run_id}] evaluated earlier; skipping" + (f" (added its {added} rows to {csv_path})" if added else ""))
        # not logged then (logger=none, or it failed), or logged before the run had a validation score (a sweep
        # member since, or scored by older code after its evaluation): now, the same W&B run
        valid_missing = run.valid_score.exists() and not stored.get("wandb_valid")
        if "wandb" in stored and (stored["wandb"] is None or valid_missing):
            folder = _log_wandb(spec, run, rows_done, runs_dir, wandb, stored["wandb_id"], log)
            if folder is not None:
                stored |= {"wandb": folder, "wandb_valid": run.valid_score.exists()}
                write_text_atomic(done, json.dumps(stored, indent=2) + "\n")
        return rows_done
    data = prepare_data(spec, runs_dir)
    check_vocabulary(data, run.path, (spec.data.src, spec.data.tgt))  # decoded with the ids it was trained on
    metrics = json.loads(run.metrics.read_text())
    # the run folder's own (train.json's path is where it was trained): its last, or its last ones averaged
    checkpoint = run.model_checkpoint(spec.schedule.average_last)

    rows: list[LeaderboardRow] = []
    base = RunFolder(runs_dir / baseline.run_id()) if baseline is not None and spec.model.structured else None
    board = leaderboard.read_rows(csv_path) if csv_path.is_file() else []
    for subset, test_name in test_sets(spec.data.name).items():
        labels = row_labels(spec, test_name)
        earlier = first_evaluation(board, run_id, labels["test_set"])
        if earlier is not None and not row_file(earlier["hypothesis"]).is_file():
            # the first name would be taken again, and a re-run's other hypotheses would pass for the first's
            raise StepError(
                f"the leaderboard's first row of {run_id} on {labels['test_set']} names {earlier['hypothesis']}, "
                "which is gone: restore it (git checkout -- results/hyps) before evaluating the run again, so "
                "that a re-run is told apart from its first evaluation"
            )
        hyp = decode(
            data.bin,
            checkpoint,
            subset,
            run.decoded(test_name, spec.data.tgt),
            beam=spec.schedule.beam,
            lenpen=spec.schedule.lenpen,
            log=run.decode_log,
        )
        ref = data.text(subset, spec.data.tgt)
        s = score(hyp, ref)
        first = results.hyps / f"{run_id}.{test_name}.{spec.data.tgt}"
        kept = keep_hypotheses(hyp, first)
        p_value, ci = "", ""
        if base is not None:
            if earlier is None:  # the first evaluation: against the dense row the leaderboard shows beside it
                base_hyp = dense_partner_hypotheses(board, base, labels["test_set"], test_name, spec.data.tgt)
            else:  # a re-run: against the dense run as decoded beside it (a re-run too, where that differs)
                decoded = base.decoded(test_name, spec.data.tgt)
                base_hyp = decoded if decoded.is_file() else None
            if base_hyp is not None:
                p_value, ci = paired_bootstrap(base_hyp, hyp, ref)
            else:
                log(
                    f"[{run_id}] {test_name}: no hypotheses of the dense run {base.path.name} (evaluate it "
                    "first); the p-value against it is left empty"
                )
        log(f"[{run_id}] {test_name}: BLEU {score_text(s.bleu)} chrF {score_text(s.chrf)} ({s.bleu_signature})")
        rows.append(
            LeaderboardRow(
                run_id=run_id,
                data=labels["data"],
                schedule=spec.schedule.name,
                direction=f"{spec.data.src}-{spec.data.tgt}",
                test_set=labels["test_set"],
                arch=spec.model.arch,
                window=spec.model.window if spec.model.structured else "",
                rare=spec.model.rare if spec.model.structured else "",
                heads=spec.model.heads_label() if spec.model.structured else "",
                cross=spec.model.cross_label(),
                params=parse_param_count(run.train_log),
                updates=metrics["updates"],
                train_seconds=round(float(metrics["wall_seconds"]), 1),
                train_tokens_per_s=round(float(metrics["tokens_per_second"]), 1),
                bleu=s.bleu,
                chrf=s.chrf,
                bleu_signature=s.bleu_signature,
                chrf_signature=s.chrf_signature,
                p_value_vs_dense=p_value,
                bleu_ci95=ci,
                seed=spec.schedule.seed,
                git_commit=git_commit(),
                hypothesis=row_text(kept),
                train_commit=metrics.get("git_commit", ""),
                machine=machine_label(),
                options=labels["options"],
                train_machine=metrics.get("machine", ""),
            )
        )
    leaderboard.add_rows(csv_path, rows)
    stored = {row_key(r): r for r in board}  # as read above: the run's lock keeps its rows as they were
    kept: dict[tuple[str, str, str], list[str]] = {}  # an earlier training's (commit, machine, s): its test sets
    for row in rows:  # a training again (its folder deleted, another machine) that decoded the same hypotheses
        old = stored.get(row_key(asdict(row)))
        if old is not None and training(old)[1] and training(old) != training(asdict(row)):
            earlier = (old["train_commit"], old["train_machine"], old["train_seconds"])
            kept.setdefault(earlier, []).append(row.test_set)
    this = rows[0]  # every row of this evaluation carries its training's numbers
    for (commit, machine, seconds), tests in kept.items():
        log(
            f"[{run_id}] {', '.join(tests)}: the same hypotheses as the leaderboard's "
            f"{'row' if len(tests) == 1 else 'rows'} of an earlier training (trained at "
            f"{short_commit(commit) or 'an unrecorded commit'} on {machine or 'an unrecorded machine'} in {seconds} "
            f"s), which it keeps; this training's numbers ({this.train_seconds} s, {this.train_tokens_per_s} "
            f"tokens/s on {this.train_machine}) are in {run.metrics}"
        )
    leaderboard.publish(results_dir)
    records = [asdict(row) for row in rows]
    wandb_id = wandb_run_id(run_id, [row_file(r["hypothesis"]) for r in records])
    folder = _log_wandb(spec, run, records, runs_dir, wandb, wandb_id, log)
    logged = {"wandb": folder, "wandb_id": wandb_id, "wandb_valid": folder is not None and run.valid_score.exists()}
    write_text_atomic(done, json.dumps({"rows": records} | logged, indent=2) + "\n")
    return records


def _late_p_values(
    spec: RunSpec, runs_dir: Path, results_dir: Path, baseline: RunSpec, rows: list[dict[str, Any]], log: Any
) -> list[dict[str, Any]]:
    """``rows`` of an evaluated structured run with the p-values and CIs that were left empty (its dense partner
    had no hypotheses then: evaluated later, or first run with ``baseline=false``) computed now where the partner
    has them (:func:`dense_partner_hypotheses`), from the row's kept hypotheses."""
    if all(r["p_value_vs_dense"] != "" for r in rows):
        return rows
    subsets = {name: subset for subset, name in test_sets(spec.data.name).items()}
    data = prepare_data(spec, runs_dir)
    base = RunFolder(runs_dir / baseline.run_id())
    csv_path = ResultsFolder(results_dir).leaderboard
    board = leaderboard.read_rows(csv_path) if csv_path.is_file() else []
    out = []
    for row in rows:
        name = named_test_set(row["test_set"])
        if row["p_value_vs_dense"] != "":
            out.append(row)
            continue
        base_hyp = dense_partner_hypotheses(board, base, row["test_set"], name, spec.data.tgt)
        if base_hyp is not None:
            p_value, ci = paired_bootstrap(
                base_hyp, row_file(row["hypothesis"]), data.text(subsets[name], spec.data.tgt)
            )
            log(f"[{row['run_id']}] {row['test_set']}: p-value against the dense run, left empty before: {p_value}")
            row = row | {"p_value_vs_dense": p_value, "bleu_ci95": ci}
        out.append(row)
    return out


def _log_wandb(
    spec: RunSpec,
    run: RunFolder,
    records: list[dict[str, Any]],
    runs_dir: Path,
    wandb: tracking.WandbSettings | None,
    wandb_id: str,
    log: Any,
) -> str | None:
    """Log an evaluation (its leaderboard ``records``) to W&B; returns its local W&B folder (None: not logged, a
    later evaluation tries again). The config carries the labels the leaderboard tells runs apart by (a roles
    file's digest, the options without a column, the data's vocabulary and slice), and the group is the rows'
    ``data`` column and schedule: a sweep's points and their dense baseline are one group, and runs of other data
    or schedules, which the leaderboard never compares, are never in it.
    A dense run's ``model`` is its ``arch`` alone, as its rows leave ``window`` and ``rare`` empty: W&B's
    charts never plot it at the structure options' defaults."""
    run_id, labels = records[0]["run_id"], {k: records[0][k] for k in ("data", "heads", "cross", "options")}
    # the settings as training had them: those outside the run id (RunSpec.run_id: threads, which its tokens/s
    # depend on, ...) may differ in the command that evaluates or logs it again
    trained = read_spec(run.path) if run.spec.is_file() else spec
    # the model as its run id names it (ModelSpec.effective): two spellings of one model are one run, and W&B's
    # filters and charts group them as one setting
    config = asdict(replace(trained, model=trained.model.effective())) | {"run_id": run_id, "leaderboard": labels}
    if not spec.model.structured:
        config["model"] = {"arch": spec.model.arch}
    else:  # as the rows label it: a roles file's digest (its mix replaces model.heads, "auto" in the settings)
        config["model"]["heads"] = labels["heads"]
    folder = tracking.log_experiment(
        run_id,
        config,
        run.train_log,
        records,
        runs_dir / "wandb",
        wandb,
        group=f"{labels['data']}-{spec.schedule.name}",
        wandb_id=wandb_id,
        valid=json.loads(run.valid_score.read_text()) if run.valid_score.exists() else None,  # a sweep member
    )
    if folder is None:
        return None
    mode = "offline" if folder.name.startswith("offline-") else "online"  # an online failure is logged offline
    log(f"[{run_id}] W&B ({mode}): {folder}")
    return str(folder)
