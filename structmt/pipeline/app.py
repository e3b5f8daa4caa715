"""``structmt-run``: the Hydra app.  One run = prepare (cached) → train → decode →
score → leaderboard / W&B; ``-m`` sweeps (``+sweep=wr_small``, ``+sweep=optuna_wr``),
launchers are swapped by config (``hydra/launcher=slurm``, ``local_jobs``).

Configs live in ``conf/``; structured configs (the dataclasses below) check
types, and :func:`validate` checks ranges, so a bad override fails before any
work starts, naming the key.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from omegaconf import MISSING, DictConfig, OmegaConf

from ..console import setup
from ..paths import REPO_ROOT
from .evaluation import run_experiment
from .spec import DataSpec, ModelSpec, RunSpec, Schedule

LOGGER_MODES = ("auto", "offline", "online", "disabled")


@dataclass
class LoggerConf:
    mode: str = "auto"
    project: str = "structmt"


@dataclass
class RunConf:
    data: DataSpec = MISSING
    model: ModelSpec = MISSING
    train: Schedule = MISSING
    logger: LoggerConf = field(default_factory=LoggerConf)
    runs_dir: str = "runs"
    results_dir: str = "results"
    baseline: bool = True


ConfigStore.instance().store(name="structmt_schema", node=RunConf)


class ConfigError(ValueError):
    """A configuration value out of range; the message names the key."""


def validate(cfg: Any) -> None:
    """Range checks that types alone cannot express (raises :class:`ConfigError` naming the key)."""
    checks = [
        ("train.max_update", cfg.train.max_update > 0, "must be > 0"),
        ("train.lr", cfg.train.lr > 0, "must be > 0"),
        ("train.warmup", cfg.train.warmup >= 0, "must be >= 0"),
        ("train.max_tokens", cfg.train.max_tokens > 0, "must be > 0"),
        ("train.dropout", 0 <= cfg.train.dropout < 1, "must lie in [0, 1)"),
        ("train.threads", cfg.train.threads > 0, "must be > 0"),
        ("train.beam", cfg.train.beam > 0, "must be > 0"),
        ("data.vocab_size", cfg.data.vocab_size > 0, "must be > 0"),
        ("logger.mode", cfg.logger.mode in LOGGER_MODES, f"must be one of {', '.join(LOGGER_MODES)}"),
    ]
    bad = [f"{key}={OmegaConf.select(cfg, key)!r} {why}" for key, ok, why in checks if not ok]
    model: ModelSpec = OmegaConf.to_object(cfg.model)  # type: ignore[assignment]
    bad += model.problems()  # the structure options: one schema, one set of checks (attention/options.py)
    start = cfg.train.finetune_from
    if start.endswith(".pt") and not Path(start).expanduser().is_file():
        bad.append(f"train.finetune_from={start!r}: no such checkpoint file")
    if cfg.data.mirror and not Path(cfg.data.mirror).expanduser().is_dir():
        bad.append(f"data.mirror={cfg.data.mirror!r} is not a folder; give the folder holding the corpus files")
    if bad:
        raise ConfigError("invalid configuration: " + "; ".join(bad))


def specs(cfg: Any) -> tuple[RunSpec, RunSpec | None]:
    """The run of ``cfg`` and, for structured models, its dense baseline (same data and schedule)."""
    data: DataSpec = OmegaConf.to_object(cfg.data)  # type: ignore[assignment]
    model: ModelSpec = OmegaConf.to_object(cfg.model)  # type: ignore[assignment]
    schedule: Schedule = OmegaConf.to_object(cfg.train)  # type: ignore[assignment]
    spec = RunSpec(data=data, model=model, schedule=schedule)
    if not (cfg.baseline and model.structured):
        return spec, None
    dense_arch = model.arch.removeprefix("structured_")
    return spec, replace(spec, model=ModelSpec(arch=dense_arch))


def _path(value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else Path.cwd() / p


def run(cfg: Any) -> float:
    """Run one configuration; returns its BLEU on the first test set (the sweep objective)."""
    validate(cfg)
    if cfg.logger.mode != "auto":
        os.environ["WANDB_MODE"] = cfg.logger.mode
    runs_dir, results_dir = _path(cfg.runs_dir), _path(cfg.results_dir)
    spec, baseline = specs(cfg)
    if baseline is not None:
        run_experiment(baseline, runs_dir=runs_dir, results_dir=results_dir, wandb_project=cfg.logger.project)
    rows = run_experiment(
        spec, runs_dir=runs_dir, results_dir=results_dir, baseline=baseline, wandb_project=cfg.logger.project
    )
    return float(rows[0]["bleu"])


@hydra.main(version_base="1.3", config_path=str(REPO_ROOT / "conf"), config_name="structmt")
def main(cfg: DictConfig) -> float:
    # Hydra has set up logging for this job: console output as every entry point has it
    # (Hydra's job log file stays); hydra.verbose=true shows all, as -v does elsewhere
    verbose = HydraConfig.get().verbose is True
    setup(verbose=verbose)
    try:
        return run(cfg)
    except Exception as err:
        if verbose:
            raise
        message = f"error: {err} (hydra.verbose=true shows the traceback)"
        if HydraConfig.get().mode == RunMode.MULTIRUN:  # Hydra names the job's overrides; the sweep goes on
            raise CompactHydraException(message) from None
        print(message, file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
