"""Training a run: its data (prepared once, cached), then fairseq-train under the run's lock,
resumed from the last checkpoint or skipped when finished; the run folder keeps what it needs
to translate on its own."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from filelock import FileLock

from ..checkpoints import average_checkpoints, checkpoint_updates, last_checkpoints, training_seconds
from ..data.datasets import default_vocab, prepare_dataset
from ..data.prepare import PrepConfig
from ..data.stages import sha256_file
from ..fairseq_cli import StepError, parse_train_log, train
from ..fairseq_fixes import SLIM_OLD_CHECKPOINTS
from ..files import atomic_path, write_text_atomic
from ..paths import DataFolder, RunFolder
from ..provenance import git_commit, machine_label
from .spec import DataSpec, RunSpec, averaging_problems


def copy_atomic(src: Path, dest: Path) -> None:
    """Copy ``src`` to ``dest`` through a temporary file: an interrupted copy leaves no truncated ``dest``."""
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)


def keep_model_files(data: DataFolder, run_dir: Path, src: str, tgt: str) -> None:
    """Copy the SentencePiece model and dictionaries into the run, so it translates on its own."""
    run = RunFolder(run_dir)
    copy_atomic(data.spm_model, run.spm_model)
    for lang in (src, tgt):
        copy_atomic(data.dictionary(lang), run.dictionary(lang))


def check_vocabulary(data: DataFolder, run_dir: Path, langs: tuple[str, ...]) -> None:
    """Refuse a data folder whose dictionaries are not those the run began training with (kept in its folder):
    the data folder prepared again with other settings (``structmt-prepare`` into the pipeline's own folder with
    another ``--vocab-size``, say) would train on, or decode with, other token ids than the model's, silently."""
    run = RunFolder(run_dir)
    for lang in langs:
        kept, now = run.dictionary(lang), data.dictionary(lang)
        if kept.is_file() and now.is_file() and kept.read_bytes() != now.read_bytes():
            raise StepError(
                f"{now} is not the dictionary {run_dir.name} was trained with ({kept}): {data.path} was prepared "
                "again with other settings since (structmt-prepare into it?). Prepare it as the run's data.* "
                f"settings say (remove {data.path}; the pipeline prepares it again), or start the run afresh"
            )


def data_label(d: DataSpec) -> str:
    """The data set and its direction, as data folders and leaderboard rows name them: the name alone when
    it says the direction (``multi30k_en_de`` for en→de), else with the direction (``multi30k_en_de-de-en``)."""
    return d.name if d.name.endswith(f"_{d.src}_{d.tgt}") else f"{d.name}-{d.src}-{d.tgt}"


def data_folder(spec: RunSpec, runs_dir: Path) -> DataFolder:
    """Where the data of ``spec`` is prepared: one folder under ``runs_dir/data`` per preparation setting
    (direction, vocabulary, slices), so concurrent jobs with other settings never share stages; en→de at the
    defaults keeps the name it always had (``runs/data/multi30k_en_de``)."""
    d = spec.data
    variant = {"vocab_size": d.vocab_size, "max_train_lines": d.max_train_lines, "max_eval_lines": d.max_eval_lines}
    default = {"vocab_size": default_vocab(d.name), "max_train_lines": 0, "max_eval_lines": 0}  # as rows label it
    label = data_label(d)
    folder = label if variant == default else f"{label}-{hashlib.sha256(repr(variant).encode()).hexdigest()[:6]}"
    return DataFolder(runs_dir / "data" / folder)


def prepare_data(spec: RunSpec, runs_dir: Path) -> DataFolder:
    """The data of ``spec``, prepared (once: cached in :func:`data_folder`)."""
    d = spec.data
    cfg = PrepConfig(
        src=d.src,
        tgt=d.tgt,
        vocab_size=d.vocab_size,
        mirror=d.mirror,
        max_train_lines=d.max_train_lines,
        max_eval_lines=d.max_eval_lines,
    )
    folder = data_folder(spec, runs_dir)
    prepare_dataset(d.name, folder.path, cfg, d.base_url)
    return folder


def train_run(spec: RunSpec, *, runs_dir: Path, log: Any = print) -> dict[str, Any]:
    """Train (or resume, or skip when finished) the model of ``spec``; returns its training metrics.

    Holds the run's lock, so two jobs of a sweep never train the same run at once.
    """
    s = spec.schedule  # checked by structmt-run's configuration too; here for every other caller, before any work
    if problems := averaging_problems(s.average_last, s.save_interval, s.max_update):
        raise StepError(problems[0])
    git_commit()  # pin the commit of the code that trains
    data = prepare_data(spec, runs_dir)
    run_id = spec.run_id()  # once: it hashes the roles file's content, which another job may rewrite meanwhile
    with run_lock(runs_dir, run_id):
        return _train_locked(spec, run_id, runs_dir, data, log)


def carried_seconds(spec: RunSpec, run_dir: Path) -> float | None:
    """The training time fairseq carried into this run's checkpoints from the one it started from: 0 for a run
    from scratch, the recorded one for a fine-tune, None where none was recorded (a fine-tune begun before
    structmt recorded it: its time is read from the log). Never read from the start file again: it may be gone,
    or a model trained again under the same id."""
    if not spec.schedule.finetune_from:
        return 0.0
    try:
        return float(json.loads(RunFolder(run_dir).finetune_start.read_text())["seconds"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def training_sessions(train_log: Path) -> list[tuple[str, str]]:
    """``(commit, machine)`` of each process that trained a run, in order: the ``# structmt <commit> on
    <machine>`` line it began its part of ``train_log`` with."""
    text = train_log.read_text(encoding="utf-8", errors="replace") if train_log.is_file() else ""
    return re.findall(r"^# structmt (\S+) on ([^;\n]+)", text, re.M)


def trained_commit(finished: str, train_log: Path) -> str:
    """``finished`` (the commit of the process that finished a training), marked ``+dirty`` if a process named
    in ``train_log`` (:func:`training_sessions`) ran a dirty tree."""
    if any(c.endswith("+dirty") for c, _ in training_sessions(train_log)) and not finished.endswith("+dirty"):
        return finished + "+dirty"
    return finished


def average_model(spec: RunSpec, run_id: str, run: RunFolder, log: Any) -> dict[str, Any]:
    """Average the last ``train.average_last`` checkpoints of a trained run into its model (nothing at 1);
    returns what its ``train.json`` records of it: the averaged checkpoint and the updates of those averaged."""
    count = spec.schedule.average_last
    if count <= 1:
        return {}
    chosen = last_checkpoints(run, count, spec.schedule.save_interval)
    updates = average_checkpoints(chosen, run.averaged_checkpoint)
    log(
        f"[{run_id}] averaged its last {count} checkpoints (updates {', '.join(map(str, reversed(updates)))}) "
        f"into {run.averaged_checkpoint.name}, the model it decodes"
    )
    return {"checkpoint": str(run.averaged_checkpoint), "averaged_updates": updates}


def run_lock(runs_dir: Path, run_id: str) -> FileLock:
    runs_dir.mkdir(parents=True, exist_ok=True)
    return FileLock(str(runs_dir / f".{run_id}.lock"))


def _train_locked(spec: RunSpec, run_id: str, runs_dir: Path, data: DataFolder, log: Any) -> dict[str, Any]:
    run_dir = runs_dir / run_id
    run = RunFolder(run_dir)
    if run.metrics.exists():
        metrics = json.loads(run.metrics.read_text())
        if metrics["updates"] >= spec.schedule.max_update:
            log(f"[{run_id}] trained earlier ({metrics['updates']} updates); skipping training")
            if spec.schedule.average_last > 1 and not run.averaged_checkpoint.is_file():  # removed since
                metrics |= average_model(spec, run_id, run, log)
                write_text_atomic(run.metrics, json.dumps(metrics) + "\n")
            return metrics
    run_dir.mkdir(parents=True, exist_ok=True)
    check_vocabulary(data, run_dir, (spec.data.src, spec.data.tgt))  # a resume trains on the ids it began with
    write_text_atomic(run.spec, json.dumps(asdict(spec), indent=2) + "\n")
    keep_model_files(data, run_dir, spec.data.src, spec.data.tgt)
    log(f"[{run_id}] training {spec.model.arch} for {spec.schedule.max_update} updates (log: {run.train_log})")
    checkpoint = run.last_checkpoint
    finished_by = None  # (commit, machine) of the process that trained the last update, where not this one
    if (updates := checkpoint_updates(checkpoint)) >= spec.schedule.max_update:
        # finished, but killed before train.json: fairseq would run one more update on resume. The updates are
        # the checkpoint's: fairseq saves it before it logs the last summary, which the kill may have cut off
        trained = replace(
            parse_train_log(run.train_log, checkpoint, carried=carried_seconds(spec, run_dir)), updates=updates
        )
        finished_by = next(reversed(training_sessions(run.train_log)), None)
    else:
        # the older interval checkpoints, kept for their weights (train.average_last), without optimiser state
        env = dict(os.environ, OMP_NUM_THREADS=str(spec.schedule.threads), **{SLIM_OLD_CHECKPOINTS: "1"})
        roles = spec.model.roles_path()
        if roles is not None:  # the run keeps its own copy: decoding and translation load it from there
            copy_atomic(roles, run.roles)
            roles = run.roles
            if replace(spec, model=replace(spec.model, heads_from=str(roles))).run_id() != run_id:
                roles.unlink()
                raise StepError(
                    f"model.heads_from {spec.model.heads_from} changed after this run began (its id {run_id} "
                    "hashes the roles it had then; another job rewrote the file?): run the command again, "
                    "which trains the roles the file holds now under their own id"
                )
        args = spec.model.fairseq_args(roles) + spec.schedule.fairseq_args()
        header = f"# structmt {git_commit()} on {machine_label()}"
        if (start := spec.schedule.finetune_checkpoint(runs_dir)) is not None:
            args += ["--finetune-from-model", str(start)]  # used only while the run has no checkpoint of its own
            if updates == 0:  # the weights it starts from, by content: a run id names settings, not weights
                header += f"; fine-tuning from {start} (sha256 {sha256_file(start)})"
                # and the training time fairseq carries over from them, for this run's own (carried_seconds)
                write_text_atomic(run.finetune_start, json.dumps({"seconds": training_seconds(start) or 0.0}))
        with open(run.train_log, "a", encoding="utf-8") as f:
            f.write(f"\n{header}\n")
        trained = train(data.bin, run_dir, spec.model.arch, args, env, carried_seconds(spec, run_dir))
    # the code and machine that trained (a resumed run: those that finished it; train.log names each one), with
    # +dirty where any process that trained it ran code of no commit: a clean finish does not make it clean
    commit, machine = finished_by or (git_commit(), machine_label())
    provenance = {"git_commit": trained_commit(commit, run.train_log), "machine": machine}
    metrics = asdict(trained) | {"checkpoint": str(trained.checkpoint)} | provenance
    metrics |= average_model(spec, run_id, run, log)  # every training: a trained-again run's own checkpoints
    write_text_atomic(run.metrics, json.dumps(metrics) + "\n")
    log(f"[{run_id}] trained: {trained.updates} updates, {trained.tokens_per_second:.0f} target tokens/s")
    return metrics
