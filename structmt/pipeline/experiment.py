"""One experiment = prepare (cached) → train → decode → score → leaderboard.

A run's id is derived from its resolved settings, so re-running the same
settings finds the finished run (and skips it) or resumes it from its last
checkpoint.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock

from ..attention.structure import roles_from_file
from ..data.cli import prepare_dataset, test_sets
from ..data.files import write_text_atomic
from ..data.prepare import PrepConfig, read_lines
from ..paths import REPO_ROOT
from . import leaderboard, tracking
from .steps import Score, decode, parse_train_log, score, train
from .translate import model_dir


@dataclass
class ModelSpec:
    """The architecture and, for structured models, the attention structure."""

    arch: str = "structured_transformer_multi30k"
    window: int = 3
    rare: int = 2
    heads: str = "auto"
    error: str = "none"
    #: a roles JSON file (``structmt-analyze`` writes results/roles.json); replaces ``heads``
    heads_from: str = ""
    #: structured cross-attention: band half-width around j = round(cross_slope * i); -1 = dense
    cross_window: int = -1
    #: source/target length ratio of that band's centre line
    cross_slope: float = 1.0

    @property
    def structured(self) -> bool:
        return self.arch.startswith("structured_")

    def roles_path(self) -> Path | None:
        """The roles file, checked (a relative path is taken from the current directory, then the repository)."""
        if not (self.structured and self.heads_from):
            return None
        places = (Path(self.heads_from).expanduser(), REPO_ROOT / self.heads_from)
        found = next((p for p in places if p.is_file()), None)
        for block in ("encoder", "decoder"):
            roles_from_file(found or self.heads_from, block, option="model.heads_from")
        return found.resolve()

    def heads_label(self) -> str:
        """The role mix as the leaderboard shows it."""
        return f"from:{Path(self.heads_from).name}" if self.heads_from else self.heads

    def cross_label(self) -> str:
        """The cross-attention band as the leaderboard shows it ('' = dense)."""
        return f"w{self.cross_window}/slope{self.cross_slope:g}" if self.structured and self.cross_window >= 0 else ""

    def fairseq_args(self, roles: Path | None = None) -> list[str]:
        """The ``--struct-*`` options; ``roles`` is the run's own copy of the roles file."""
        if not self.structured:
            return []
        heads = ["--struct-heads-from", str(roles)] if roles else ["--struct-heads", self.heads]
        return [
            "--struct-window",
            str(self.window),
            "--struct-rare",
            str(self.rare),
            *heads,
            "--struct-error",
            self.error,
            "--struct-cross-window",
            str(self.cross_window),
            "--struct-cross-slope",
            str(self.cross_slope),
        ]


@dataclass
class Schedule:
    """Optimisation settings shared by the runs that are compared with each other."""

    name: str = "cpu_demo"
    max_update: int = 1200
    lr: float = 0.003
    warmup: int = 300
    max_tokens: int = 4096
    dropout: float = 0.3
    label_smoothing: float = 0.1
    seed: int = 1
    threads: int = 2
    beam: int = 5
    #: fairseq-fixed drops a final batch whose size is not a multiple of this; 1 keeps every sentence
    batch_multiple: int = 1
    save_interval: int = 200
    update_freq: int = 1
    #: more fairseq-train options, e.g. distributed training: ["--distributed-world-size", "8"]
    extra_args: list[str] = field(default_factory=list)

    def fairseq_args(self) -> list[str]:
        # fmt: off
        return [
            "--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--lr", str(self.lr),
            "--lr-scheduler", "inverse_sqrt", "--warmup-updates", str(self.warmup),
            "--max-tokens", str(self.max_tokens), "--max-update", str(self.max_update),
            "--dropout", str(self.dropout), "--criterion", "label_smoothed_cross_entropy",
            "--label-smoothing", str(self.label_smoothing), "--seed", str(self.seed), "--num-workers", "0",
            "--required-batch-size-multiple", str(self.batch_multiple), "--no-epoch-checkpoints",
            "--save-interval-updates", str(self.save_interval), "--keep-interval-updates", "1",
            "--disable-validation", "--log-interval", "50", "--update-freq", str(self.update_freq),
            *self.extra_args,
        ]
        # fmt: on


@dataclass
class DataSpec:
    name: str = "multi30k_en_de"
    src: str = "en"
    tgt: str = "de"
    vocab_size: int = 8000
    mirror: str | None = None
    base_url: str | None = None
    max_train_lines: int = 0  # 0 = all; slices are for smoke tests
    max_eval_lines: int = 0


@dataclass
class RunSpec:
    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    schedule: Schedule = field(default_factory=Schedule)

    def run_id(self) -> str:
        """Stable id from the settings that change the result (not the thread count)."""
        settings = asdict(self)
        settings["schedule"].pop("threads")
        settings["schedule"].pop("save_interval")
        settings["data"].pop("mirror")
        settings["data"].pop("base_url")
        if not self.model.structured:
            settings["model"] = {"arch": self.model.arch}
        elif roles := self.model.roles_path():
            # the roles themselves, not where the file lies, identify the run
            settings["model"]["heads_from"] = hashlib.sha256(roles.read_bytes()).hexdigest()
        else:
            settings["model"].pop("heads_from")  # ids of runs from before the option existed stay valid
        if self.model.structured and self.model.cross_window < 0:
            settings["model"].pop("cross_window")  # likewise for dense cross-attention
            settings["model"].pop("cross_slope")
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
        m = self.model
        shape = "dense"
        if m.structured:
            shape = f"w{m.window}-r{m.rare}" + ("-roles" if m.heads_from else "")
            shape += f"-x{m.cross_window}" if m.cross_window >= 0 else ""
        return f"{self.data.name}-{self.schedule.name}-{shape}-{digest}"


@functools.cache
def git_commit() -> str:
    """The commit of the code this process runs (read once, at its first use: runs and benchmarks call it
    when they start); ``+dirty`` if tracked files outside ``results/`` differ from it."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _count_params(train_log: Path) -> int:
    found = re.findall(r"num\. shared model params: ([\d,]+)", train_log.read_text(encoding="utf-8", errors="replace"))
    return int(found[-1].replace(",", "")) if found else 0


def paired_bootstrap(baseline_hyp: Path, system_hyp: Path, ref: Path, n_samples: int = 1000) -> tuple[float, float]:
    """sacreBLEU's paired bootstrap resampling: (p-value, 95% CI half-width of the system's BLEU)."""
    from sacrebleu.metrics import BLEU
    from sacrebleu.significance import PairedTest

    refs = read_lines(ref)
    systems = [("baseline", read_lines(baseline_hyp)), ("system", read_lines(system_hyp))]
    test = PairedTest(systems, {"BLEU": BLEU(references=[refs])}, references=None, test_type="bs", n_samples=n_samples)
    _, results = test()
    res = results["BLEU"][1]
    return round(float(res.p_value), 4), round(float(res.ci), 2)


def keep_model_files(bin_dir: Path, run_dir: Path, src: str, tgt: str) -> None:
    """Copy the SentencePiece model and dictionaries into the run, so it translates on its own."""
    folder = model_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(bin_dir.parent / "spm" / "spm.model", folder / "spm.model")
    for lang in (src, tgt):
        shutil.copyfile(bin_dir / f"dict.{lang}.txt", folder / f"dict.{lang}.txt")


def prepare_data(spec: RunSpec, runs_dir: Path) -> Path:
    """The binarized data of ``spec`` (prepared once, cached under ``runs_dir/data``)."""
    d = spec.data
    cfg = PrepConfig(
        src=d.src,
        tgt=d.tgt,
        vocab_size=d.vocab_size,
        mirror=d.mirror,
        max_train_lines=d.max_train_lines,
        max_eval_lines=d.max_eval_lines,
    )
    # one folder per preparation setting, so concurrent jobs with other settings never share stages
    variant = {"vocab_size": d.vocab_size, "max_train_lines": d.max_train_lines, "max_eval_lines": d.max_eval_lines}
    default = {"vocab_size": DataSpec.vocab_size, "max_train_lines": 0, "max_eval_lines": 0}
    folder = d.name if variant == default else f"{d.name}-{hashlib.sha256(repr(variant).encode()).hexdigest()[:6]}"
    return prepare_dataset(d.name, runs_dir / "data" / folder, cfg, d.base_url)


def train_run(spec: RunSpec, *, runs_dir: Path, log: Any = print) -> dict[str, Any]:
    """Train (or resume, or skip when finished) the model of ``spec``; returns its training metrics.

    Holds the run's lock, so two jobs of a sweep never train the same run at once.
    """
    git_commit()  # pin the commit of the code that trains
    bin_dir = prepare_data(spec, runs_dir)
    with run_lock(runs_dir, spec.run_id()):
        return _train_locked(spec, runs_dir, bin_dir, log)


def run_lock(runs_dir: Path, run_id: str) -> FileLock:
    runs_dir.mkdir(parents=True, exist_ok=True)
    return FileLock(str(runs_dir / f".{run_id}.lock"))


def _train_locked(spec: RunSpec, runs_dir: Path, bin_dir: Path, log: Any) -> dict[str, Any]:
    run_id = spec.run_id()
    run_dir = runs_dir / run_id
    metrics_path = run_dir / "train.json"
    if metrics_path.exists():
        metrics = json.loads(metrics_path.read_text())
        if metrics["updates"] >= spec.schedule.max_update:
            log(f"[{run_id}] trained earlier ({metrics['updates']} updates); skipping training")
            return metrics
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "spec.json", json.dumps(asdict(spec), indent=2) + "\n")
    keep_model_files(bin_dir, run_dir, spec.data.src, spec.data.tgt)
    log(f"[{run_id}] training {spec.model.arch} for {spec.schedule.max_update} updates (log: {run_dir / 'train.log'})")
    checkpoint = run_dir / "checkpoints" / "checkpoint_last.pt"
    if checkpoint_updates(checkpoint) >= spec.schedule.max_update:
        # finished, but killed before train.json: fairseq would run one more update on resume
        trained = parse_train_log(run_dir / "train.log", checkpoint)
    else:
        env = dict(os.environ, OMP_NUM_THREADS=str(spec.schedule.threads))
        roles = spec.model.roles_path()
        if roles is not None:  # the run keeps its own copy: decoding and translation load it from there
            shutil.copyfile(roles, run_dir / "roles.json")
            roles = run_dir / "roles.json"
        args = spec.model.fairseq_args(roles) + spec.schedule.fairseq_args()
        trained = train(bin_dir, run_dir, spec.model.arch, args, env)
    metrics = asdict(trained) | {"checkpoint": str(trained.checkpoint)}
    write_text_atomic(metrics_path, json.dumps(metrics) + "\n")
    log(f"[{run_id}] trained: {trained.updates} updates, {trained.tokens_per_second:.0f} target tokens/s")
    return metrics


def checkpoint_updates(checkpoint: Path) -> int:
    """Number of updates stored in a fairseq checkpoint (0 when there is none)."""
    if not checkpoint.exists():
        return 0
    import torch

    import structmt  # noqa: F401  (allowlists the classes fairseq checkpoints need)

    state = torch.load(checkpoint, map_location="cpu", mmap=True)
    return int(state["optimizer_history"][-1]["num_updates"])


def run_experiment(
    spec: RunSpec,
    *,
    runs_dir: Path,
    results_dir: Path,
    baseline: RunSpec | None = None,
    log: Any = print,
    wandb_project: str = tracking.DEFAULT_PROJECT,
) -> list[dict[str, Any]]:
    """Run (or resume, or skip) one experiment and add its rows to the leaderboard."""
    train_run(spec, runs_dir=runs_dir, log=log)
    return evaluate_run(
        spec, runs_dir=runs_dir, results_dir=results_dir, baseline=baseline, log=log, wandb_project=wandb_project
    )


def evaluate_run(
    spec: RunSpec,
    *,
    runs_dir: Path,
    results_dir: Path,
    baseline: RunSpec | None = None,
    log: Any = print,
    wandb_project: str = tracking.DEFAULT_PROJECT,
) -> list[dict[str, Any]]:
    """Decode and score a trained run, add its leaderboard rows, log it to W&B (skipped when done)."""
    with run_lock(runs_dir, spec.run_id()):
        return _evaluate_locked(spec, runs_dir, results_dir, baseline, log, wandb_project)


def _evaluate_locked(
    spec: RunSpec, runs_dir: Path, results_dir: Path, baseline: RunSpec | None, log: Any, wandb_project: str
) -> list[dict[str, Any]]:
    run_id = spec.run_id()
    run_dir = runs_dir / run_id
    done = run_dir / "result.json"
    if done.exists():
        log(f"[{run_id}] evaluated earlier; skipping")
        return json.loads(done.read_text())["rows"]
    bin_dir = prepare_data(spec, runs_dir)
    raw = bin_dir.parent / "raw"
    metrics = json.loads((run_dir / "train.json").read_text())
    checkpoint = Path(metrics["checkpoint"])

    rows = []
    hyp_dir = results_dir / "hyps"
    for subset, test_name in test_sets(spec.data.name).items():
        hyp = decode(
            bin_dir,
            checkpoint,
            subset,
            run_dir / f"{test_name}.{spec.data.tgt}",
            beam=spec.schedule.beam,
            log=run_dir / "decode.log",
        )
        ref = raw / f"{subset}.{spec.data.tgt}"
        s: Score = score(hyp, ref)
        # the leaderboard keeps the first evaluation of a run id; a re-run elsewhere (a fresh clone
        # reproducing it) keeps its hypotheses in its run folder and leaves the committed file alone
        kept = hyp_dir / f"{run_id}.{test_name}.{spec.data.tgt}"
        if not kept.exists():
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(hyp, kept)
        elif kept.read_bytes() != hyp.read_bytes():
            kept = hyp
        p_value, ci = "", ""
        if baseline is not None and spec.model.structured:
            base_hyp = runs_dir / baseline.run_id() / f"{test_name}.{spec.data.tgt}"
            if base_hyp.exists():
                p_value, ci = paired_bootstrap(base_hyp, hyp, ref)
        log(f"[{run_id}] {test_name}: BLEU {s.bleu} chrF {s.chrf} ({s.bleu_signature})")
        rows.append(
            {
                "run_id": run_id,
                "data": spec.data.name,
                "schedule": spec.schedule.name,
                "direction": f"{spec.data.src}-{spec.data.tgt}",
                "test_set": test_name,
                "arch": spec.model.arch,
                "window": spec.model.window if spec.model.structured else "",
                "rare": spec.model.rare if spec.model.structured else "",
                "heads": spec.model.heads_label() if spec.model.structured else "",
                "cross": spec.model.cross_label(),
                "params": _count_params(run_dir / "train.log"),
                "updates": metrics["updates"],
                "train_seconds": round(float(metrics["wall_seconds"]), 1),
                "train_tokens_per_s": round(float(metrics["tokens_per_second"]), 1),
                "bleu": s.bleu,
                "chrf": s.chrf,
                "bleu_signature": s.bleu_signature,
                "chrf_signature": s.chrf_signature,
                "p_value_vs_dense": p_value,
                "bleu_ci95": ci,
                "seed": spec.schedule.seed,
                "git_commit": git_commit(),
                "hypothesis": str(kept.relative_to(REPO_ROOT)) if kept.is_relative_to(REPO_ROOT) else str(kept),
            }
        )
    csv_path = results_dir / "leaderboard.csv"
    leaderboard.add_rows(csv_path, rows)
    leaderboard.publish(results_dir)
    folder = tracking.log_experiment(
        run_id,
        asdict(spec),
        run_dir / "train.log",
        rows,
        runs_dir / "wandb",
        project=wandb_project,
        group=f"{spec.data.name}-{spec.schedule.name}",
    )
    if folder is not None:
        log(f"[{run_id}] W&B ({tracking.wandb_mode()}): {folder}")
    write_text_atomic(done, json.dumps({"rows": rows}, indent=2) + "\n")
    return rows
