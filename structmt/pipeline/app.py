"""``structmt-run``: the Hydra app.  One run = prepare (cached) → train → decode →
score → leaderboard / W&B; ``-m`` sweeps (``+sweep=wr_small``, ``+sweep=optuna_wr``),
launchers are swapped by config (``hydra/launcher=slurm``, ``local_jobs``).

Configs live in ``conf/``; structured configs (the dataclasses below) check
types, and :func:`validate` checks keys, ranges and what else can be checked
without training, so a bad override fails before any work starts, naming the key.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import math
import os
import re
import shlex
import sys
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, get_type_hints

import hydra
from fairseq.models import ARCH_CONFIG_REGISTRY, ARCH_MODEL_REGISTRY
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import CompactHydraException, HydraException
from hydra.types import RunMode
from omegaconf import MISSING, DictConfig, OmegaConf

from ..attention.options import PREFIX, RUN_NAMES, flag, spec_fields
from ..console import say_once, setup
from ..data.datasets import DATASETS, wrong_source_option
from ..data.fetch import MANIFESTS, read_checksums
from ..data.prepare import MULTI30K_SPLITS
from ..data.wmt import load_manifest
from ..models.structured_transformer import block_structures, too_many_rare_columns
from ..paths import REPO_ROOT, checkout_problem
from .evaluation import run_experiment, valid_bleu
from .spec import (
    FINETUNE_SCHEDULE,
    FINETUNE_START,
    MAX_SEED,
    PRECISIONS,
    DataSpec,
    ModelSpec,
    RunSpec,
    Schedule,
    averaging_problems,
    named_for_start,
    own_name,
    read_spec,
)
from .tracking import MODES, WandbSettings, project_problem


@dataclass
class RunConf:
    data: DataSpec = MISSING
    model: ModelSpec = MISSING
    train: Schedule = MISSING
    logger: WandbSettings = field(default_factory=WandbSettings)
    runs_dir: str = "runs"
    results_dir: str = "results"
    baseline: bool = True


def _without_fairseqs_configs() -> None:
    """Take fairseq's own Hydra configs out of Hydra's ConfigStore: importing fairseq stores its whole config
    there (groups ``model`` with hubert and wav2vec, ``task``, ``optimizer``…), which ``structmt-run --help``
    then listed and ``model=hubert`` composed into a validation error.  structmt-run composes only ``conf/``
    (fairseq itself runs in subprocesses, which store their own).  Done when structmt-run starts, not at
    import: a process that imports this module and loads fairseq models in-process keeps fairseq's configs."""
    from fairseq.dataclass.configs import FairseqConfig

    repo = ConfigStore.instance().repo
    for name in ("config", *FairseqConfig.__dataclass_fields__):
        repo.pop(f"{name}.yaml", None)
        group = repo.get(name)
        if isinstance(group, dict) and all(getattr(n, "provider", None) == "fairseq" for n in group.values()):
            del repo[name]


ConfigStore.instance().store(name="structmt_schema", node=RunConf)


class ConfigError(ValueError):
    """A configuration value out of range; the message names the key."""


def validate(cfg: Any) -> None:
    """Range checks that types alone cannot express (raises :class:`ConfigError` naming the key)."""
    checks = [
        ("train.max_update", cfg.train.max_update > 0, "must be > 0"),
        ("train.lr", 0 < cfg.train.lr < math.inf, "must be a finite number > 0"),
        ("train.warmup", cfg.train.warmup >= 1, "must be >= 1 (fairseq's inverse_sqrt schedule divides by it)"),
        (
            "train.save_interval",
            cfg.train.save_interval >= 0,
            "must be >= 0 (updates between checkpoints; 0: at the end of each epoch only)",
        ),
        ("train.max_tokens", cfg.train.max_tokens > 0, "must be > 0"),
        ("train.dropout", 0 <= cfg.train.dropout < 1, "must lie in [0, 1)"),
        ("train.label_smoothing", 0 <= cfg.train.label_smoothing < 1, "must lie in [0, 1)"),
        (
            "train.seed",
            0 <= cfg.train.seed <= MAX_SEED,
            "must lie in [0, 2**31 - 1] (fairseq-train seeds numpy with it plus the epoch)",
        ),
        ("train.batch_multiple", cfg.train.batch_multiple >= 1, "must be >= 1"),
        ("train.update_freq", cfg.train.update_freq >= 1, "must be >= 1"),
        ("train.threads", cfg.train.threads > 0, "must be > 0"),
        ("train.world_size", cfg.train.world_size >= 1, "must be >= 1 (the GPUs to train on; 1 on a CPU)"),
        ("train.beam", cfg.train.beam > 0, "must be > 0"),
        ("train.lenpen", math.isfinite(cfg.train.lenpen), "must be a finite number (fairseq's default: 1.0)"),
        ("train.precision", cfg.train.precision in PRECISIONS, f"must be one of {', '.join(PRECISIONS)}"),
        ("train.average_last", cfg.train.average_last >= 1, "must be >= 1 (1: the last checkpoint, not averaged)"),
        ("data.vocab_size", cfg.data.vocab_size > 0, "must be > 0"),
        ("data.max_train_lines", cfg.data.max_train_lines >= 0, "must be >= 0 (0 = all)"),
        ("data.max_eval_lines", cfg.data.max_eval_lines >= 0, "must be >= 0 (0 = all)"),
        ("logger.mode", cfg.logger.mode in MODES, f"must be one of {', '.join(MODES)}"),
        (
            "train.name",
            re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+=-]*", cfg.train.name) is not None,
            "must be letters, digits and . _ + = - (it names run folders, hypothesis files and W&B runs)",
        ),
        ("logger.project", not project_problem(cfg.logger.project), project_problem(cfg.logger.project)),
    ]
    bad = unknown_keys(cfg)
    bad += [f"{key}={OmegaConf.select(cfg, key)!r} {why}" for key, ok, why in checks if not ok]
    bad += averaging_problems(cfg.train.average_last, cfg.train.save_interval, cfg.train.max_update)
    model: ModelSpec = OmegaConf.to_object(cfg.model)  # type: ignore[assignment]
    schedule: Schedule = OmegaConf.to_object(cfg.train)  # type: ignore[assignment]
    bad += model_problems(model, schedule.extra_args)
    bad += extra_args_problems(schedule)
    bad += data_problems(OmegaConf.to_object(cfg.data))  # type: ignore[arg-type]
    start = cfg.train.finetune_from
    if start.endswith(".pt") and not Path(start).expanduser().is_file():
        bad.append(f"train.finetune_from={start!r}: no such checkpoint file")
    if cfg.train.name == FINETUNE_SCHEDULE and not start:
        bad.append(
            "train=finetune starts from a trained model: set train.finetune_from=<the id of a finished dense run> "
            "(it is also the baseline) or a .pt checkpoint (with baseline=false); make finetune does it for you"
        )
    if start.endswith(".pt") and cfg.baseline and model.structured:
        bad.append(
            f"train.finetune_from={start!r}: a checkpoint file names no dense run to compare with; give the dense "
            "run's id instead, or set baseline=false"
        )
    if cfg.train.precision == "fp16" and not _cuda():
        bad.append("train.precision='fp16' needs a CUDA GPU (fairseq's --fp16); bf16 also trains on a CPU")
    if cfg.train.world_size > 1 and (problem := world_size_problem(cfg.train.world_size)):
        bad.append(f"train.world_size={cfg.train.world_size}: {problem}")
    if cfg.data.mirror and not Path(cfg.data.mirror).expanduser().is_dir():
        bad.append(f"data.mirror={cfg.data.mirror!r} is not a folder; give the folder holding the corpus files")
    for key in ("runs_dir", "results_dir"):  # found before training, not when its results are written
        if problem := folder_problem(cfg[key]):
            bad.append(f"{key}={cfg[key]!r}: {problem}")
    if bad:
        raise ConfigError("invalid configuration: " + "; ".join(bad))


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def world_size_problem(world_size: int) -> str:
    """Why fairseq-train would not train on ``world_size`` GPUs here ("" when it would): it starts one process
    per GPU of this machine; in a SLURM job of one task per node it trains on every GPU of every node, whatever
    it is told (so the job must show exactly ``world_size``)."""
    import torch

    gpus = torch.cuda.device_count()
    if os.environ.get("SLURM_JOB_NODELIST") and os.environ.get("SLURM_NTASKS_PER_NODE", "1") == "1":
        nodes = int(os.environ.get("SLURM_NNODES", "1"))
        if gpus * nodes != world_size:
            return (
                f"this SLURM job shows {gpus} GPU(s) on {nodes} node(s), and fairseq trains on all of them in a job "
                "of one task per node: request as many (hydra.launcher.gpus_per_node)"
            )
        return ""
    if gpus < world_size:
        return f"this machine shows {gpus} GPU(s) (CUDA_VISIBLE_DEVICES), and fairseq trains one process per GPU"
    return ""


def folder_problem(value: str) -> str:
    """Why ``runs_dir`` or ``results_dir`` set to ``value`` cannot be used, or "": an empty value (it would be the
    checkout itself, its run folders and data beside the code) or a folder that cannot be written."""
    if not value.strip():
        return "empty; give a folder (a relative one lies under the repository checkout)"
    return unwritable(repo_path(value))


def unwritable(folder: Path) -> str:
    """Why files cannot be written in ``folder`` (made where missing), or ""."""
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        return f"{existing} is a file; give a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot write in {existing}; give a folder you can write to"
    return ""


def _not_a_key(path: str, where: str, known: list[str]) -> str:
    return f"{path} is not a key {where} (valid keys: {', '.join(known)})"


def unknown_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    """Keys that the schema does not declare: ``+train.max_updat=5`` adds one, and ``OmegaConf.to_object``
    would drop it without a word."""
    known = [f.name for f in fields(OmegaConf.get_type(cfg))]  # type: ignore[arg-type]
    bad = []
    for key in cfg:
        if key not in known:
            group = f"of {prefix[:-1]}" if prefix else "at the top level"
            bad.append(_not_a_key(f"{prefix}{key}", group, known))
        elif isinstance(cfg[key], DictConfig) and is_dataclass(OmegaConf.get_type(cfg[key])):
            bad += unknown_keys(cfg[key], f"{prefix}{key}.")
    return bad


def model_problems(model: ModelSpec, extra_args: list[str]) -> list[str]:
    """An unregistered ``model.arch``, structure options set on a dense model, invalid structure options, and
    role mixes that do not fit the architecture's heads and layers (checked as the model's build checks them,
    on fairseq's architecture defaults and ``train.extra_args``, without building it)."""
    if model.arch not in ARCH_MODEL_REGISTRY:
        structured = sorted(a for a in ARCH_MODEL_REGISTRY if a.startswith("structured_"))
        return [
            f"model.arch={model.arch!r} is not a registered fairseq architecture; the structured ones are "
            f"{', '.join(structured)} (each one's dense baseline: the name without 'structured_')"
        ]
    if not model.structured:
        changed = [f"model.{n}={getattr(model, n)!r}" for n, _, f in spec_fields() if getattr(model, n) != f.default]
        if not changed:
            return []
        hint = f" such as structured_{model.arch}" if f"structured_{model.arch}" in ARCH_MODEL_REGISTRY else ""
        return [
            f"{', '.join(changed)}: structure options apply only to structured architectures "
            f"(model.arch=structured_*{hint}), not to model.arch={model.arch}"
        ]
    if bad := model.problems():  # the structure options: one schema, one set of checks (attention/options.py)
        return bad
    parser = argparse.ArgumentParser(argument_default=argparse.SUPPRESS, allow_abbrev=False, exit_on_error=False)
    ARCH_MODEL_REGISTRY[model.arch].add_args(parser)  # as fairseq's parse_args_and_arch, then its arch function
    try:
        args, _ = parser.parse_known_args(extra_args)
    except argparse.ArgumentError as err:
        return [f"train.extra_args: {err}"]
    ARCH_CONFIG_REGISTRY[model.arch](args)
    options = model.options(model.roles_path())
    try:
        structures = [s for b in options.blocks() for s in block_structures(args, options, b, RUN_NAMES) or []]
    except ValueError as err:
        key = "heads_from" if model.heads_from else "heads"
        return [f"model.{key}={getattr(model, key)!r} does not fit model.arch={model.arch}: {err}"]
    if problem := too_many_rare_columns(options, any(s.uses_rare for s in structures), args, RUN_NAMES):
        return [f"model.rare={model.rare} does not fit model.arch={model.arch}: {problem}"]
    return []


#: fairseq-train options the pipeline sets besides ``Schedule.fairseq_args`` and ``ModelSpec.fairseq_args``
#: (``fairseq_cli.train`` and ``training._train_locked``), with the key that sets them ('' = fixed); a test
#: compares it with the command those build
_SET_ELSEWHERE = {
    "--user-dir": "",
    "--arch": "model.arch",
    "--save-dir": "runs_dir",
    "--log-format": "",
    "--finetune-from-model": "train.finetune_from",
}
#: options fairseq takes from the data folder, whose direction ``data.src``/``data.tgt`` choose: one passed to
#: fairseq-train alone (fairseq-generate infers the direction again) would decode with the other side
_FROM_DATA = {"--source-lang": "data.src", "--target-lang": "data.tgt"}
#: fairseq's short option names (``-a transformer``, ``-ade``) and the options they stand for
_SHORT = {"-a": "--arch", "-s": "--source-lang", "-t": "--target-lang"}
#: ``Schedule.fairseq_args`` options not named after their ``train.*`` key
_RENAMED = {
    "--warmup-updates": "warmup",
    "--required-batch-size-multiple": "batch_multiple",
    "--save-interval-updates": "save_interval",
    "--keep-interval-updates": "average_last",  # the checkpoints kept: those averaged
    "--distributed-world-size": "world_size",
}


def pipeline_options(schedule: Schedule) -> dict[str, str]:
    """Every fairseq-train option the pipeline passes → the config key that sets it ('' = fixed by the pipeline)."""
    keys = {f.name for f in fields(Schedule)}
    options = dict(_SET_ELSEWHERE) | _FROM_DATA | {flag(PREFIX + name): f"model.{name}" for name, _, _ in spec_fields()}
    for arg in replace(schedule, extra_args=[], precision="fp32").fairseq_args():
        if arg.startswith("--"):
            name = _RENAMED.get(arg, arg[2:].replace("-", "_"))
            options[arg] = f"train.{name}" if name in keys else ""
    return options | {arg: "train.precision" for args in PRECISIONS.values() for arg in args}


def extra_args_problems(schedule: Schedule) -> list[str]:
    """``train.extra_args`` that set an option a config key sets (fairseq would take the last one, while the
    leaderboard row records the key's value) or one the pipeline's own steps rely on (``--save-dir``,
    ``--log-format``, ...). Other fixed options (``--log-interval``, ``--optimizer``) may be changed: the
    extra arguments are part of the run's id."""
    options = pipeline_options(schedule)
    bad = []
    for arg in schedule.extra_args:
        option = arg.split("=", 1)[0] if arg.startswith("--") else arg[:2]  # -a transformer, -atransformer
        named = f"{option} ({_SHORT[option]})" if option in _SHORT else option
        option = _SHORT.get(option, option)
        if option in options and (options[option] or option in _SET_ELSEWHERE):
            key = options[option]
            use = f"; set {key} instead" if key else " (its steps rely on its value)"
            bad.append(f"train.extra_args sets {named}, which the pipeline sets itself{use}")
    return bad


def data_problems(data: DataSpec) -> list[str]:
    """A data set the pipeline cannot prepare, or a language pair it does not have."""
    if data.name not in DATASETS:
        return [
            f"data.name={data.name!r} is not a data set the pipeline prepares; choose from {', '.join(DATASETS)} "
            "(data=<config> picks one of conf/data)"
        ]
    if data.src == data.tgt:
        return [f"data.src and data.tgt are both {data.src!r}; give two languages"]
    misplaced = wrong_source_option(data.name, data.mirror, data.base_url, lambda option: f"data.{option}")
    if misplaced:
        return [misplaced]
    if data.name != "multi30k_en_de":
        manifest = load_manifest(data.name)
        pair = (manifest["src"], manifest["tgt"])
        if (data.src, data.tgt) != pair:
            return [f"data.src/data.tgt={data.src}→{data.tgt}: {data.name} has {'→'.join(pair)} only"]
        return []
    names = read_checksums(MANIFESTS / "multi30k.sha256")  # the files the pipeline can fetch and verify
    langs = sorted({name.split(".")[1] for name in names})
    langs = [lang for lang in langs if all(f"{stem}.{lang}.gz" in names for stem in MULTI30K_SPLITS.values())]
    return [
        f"data.{key}={lang!r}: Multi30k has every split ({', '.join(MULTI30K_SPLITS.values())}) only in "
        f"{', '.join(langs)}"
        for key, lang in (("src", data.src), ("tgt", data.tgt))
        if lang not in langs
    ]


def specs(cfg: Any) -> tuple[RunSpec, RunSpec | None]:
    """The run of ``cfg`` and, for structured models, its dense baseline: the same data and schedule, or for a
    fine-tuned model (``train.finetune_from`` = a run id) the dense run it starts from, as ``make finetune``."""
    data: DataSpec = OmegaConf.to_object(cfg.data)  # type: ignore[assignment]
    model: ModelSpec = OmegaConf.to_object(cfg.model)  # type: ignore[assignment]
    given: Schedule = OmegaConf.to_object(cfg.train)  # type: ignore[assignment]
    schedule = own_name(given)
    if schedule.name != given.name:
        say_once(
            f"schedule {schedule.name}: {given.name} with other settings, named for them (its rows are never "
            f"averaged with {given.name}'s as seeds of one setting)"
        )
    spec = RunSpec(data=data, model=model, schedule=schedule)
    start = None
    if schedule.finetune_from and not schedule.finetune_from.endswith(".pt"):  # a run: named for it, baseline or not
        runs_dir = repo_path(cfg.runs_dir)
        schedule.finetune_checkpoint(runs_dir)  # a finished run of that id, or a clear error
        start = read_spec(runs_dir / schedule.finetune_from)
        # where this machine finds the data is this configuration's, not the one the dense run recorded
        start = replace(start, data=replace(start.data, mirror=data.mirror, base_url=data.base_url))
        if start.run_id() != schedule.finetune_from:
            raise ConfigError(
                f"train.finetune_from={schedule.finetune_from}: its spec.json gives the run id {start.run_id()} "
                "(a folder renamed, made by other code, or named under the id rule before 3f98fbd, which gave a "
                "model written two ways two ids: then rename the folder to that id); give the run's own id"
            )
        if (named := named_for_start(schedule, start.schedule)) != schedule:
            say_once(
                f"schedule {named.name}: a fine-tune of {schedule.finetune_from}, not the dense {FINETUNE_START} "
                f"run of seed {schedule.seed} that {schedule.name} starts from (its rows are never averaged with "
                f"{schedule.name}'s)"
            )
            spec = replace(spec, schedule=named)
    if not (cfg.baseline and model.structured):
        return spec, None
    if start is not None:
        if start.model.structured:
            raise ConfigError(
                f"train.finetune_from={schedule.finetune_from} is a structured run: the baseline is a dense one; "
                "set baseline=false"
            )
        if start.data != data:
            raise ConfigError(
                f"train.finetune_from={schedule.finetune_from} was trained on other data ({start.data}); the "
                f"fine-tune's data ({data}) must be the same to compare with it, or set baseline=false"
            )
        for key in ("beam", "lenpen"):  # the p-value would mix the decodings into the models' difference
            if getattr(start.schedule, key) != getattr(schedule, key):
                raise ConfigError(
                    f"train.{key}={getattr(schedule, key)}, but train.finetune_from={schedule.finetune_from} was "
                    f"decoded with {key} {getattr(start.schedule, key)}: the p-value against it pairs the two "
                    f"decodings; decode with its {key}, or set baseline=false"
                )
        return spec, start
    return spec, replace(spec, model=ModelSpec(arch=model.dense_arch))


def repo_path(value: str) -> Path:
    """``value`` (``~`` expanded); relative to the repository checkout, as every structmt command's defaults
    (``structmt-leaderboard``, ``structmt-sweep-report``, ``make``), whatever the current directory."""
    p = Path(value).expanduser()
    return p if p.is_absolute() else REPO_ROOT / p


# conf/structmt.yaml puts Hydra's own output folders under ${structmt_path:${runs_dir}}
OmegaConf.register_new_resolver("structmt_path", lambda value: str(repo_path(value)), replace=True)


def run(cfg: Any, objective: bool = False) -> float | None:
    """Run one configuration; with ``objective`` (a sweep's member), return its BLEU on the validation set."""
    validate(cfg)
    wandb: WandbSettings = OmegaConf.to_object(cfg.logger)  # type: ignore[assignment]
    runs_dir, results_dir = repo_path(cfg.runs_dir), repo_path(cfg.results_dir)
    spec, baseline = specs(cfg)
    if baseline is not None:
        run_experiment(baseline, runs_dir=runs_dir, results_dir=results_dir, wandb=wandb)
    run_experiment(
        spec, runs_dir=runs_dir, results_dir=results_dir, baseline=baseline, wandb=wandb, objective=objective
    )
    return valid_bleu(spec, runs_dir=runs_dir) if objective else None  # scored by run_experiment: read back


@hydra.main(version_base="1.3", config_path=str(REPO_ROOT / "conf"), config_name="structmt")
def hydra_main(cfg: DictConfig) -> float | None:
    # Hydra has set up logging for this job: console output as every entry point has it
    # (Hydra's job log file stays); hydra.verbose=true shows all, as -v does elsewhere
    hydra_cfg = HydraConfig.get()
    verbose, multirun = hydra_cfg.verbose is True, hydra_cfg.mode == RunMode.MULTIRUN
    setup(verbose=verbose)
    if not multirun and hydra_cfg.sweeper.get("params"):
        # +sweep=... without -m: Hydra runs the one point of the base config, in silence
        print(
            "error: this configuration sweeps "
            + ", ".join(f"{k}={v}" for k, v in hydra_cfg.sweeper.params.items())
            + " (a +sweep=... config): add -m to run the sweep",
            file=sys.stderr,
        )
        raise SystemExit(1)
    launcher = hydra_cfg.runtime.choices.get("hydra/launcher")
    if not multirun and launcher not in (None, "basic"):
        # Hydra launches only sweeps: without -m the job ran here, a 100k-update training on a login node
        print(
            f"error: hydra/launcher={launcher} launches only with -m (one job is a sweep of one point): add -m",
            file=sys.stderr,
        )
        raise SystemExit(1)
    try:
        return run(cfg, objective=multirun)
    except Exception as err:
        if verbose:
            raise
        message = f"error: {err} (hydra.verbose=true shows the traceback)"
        if multirun:  # the sweep goes on; Hydra keeps the error and raises only a batch's first, at its end
            # now, on the console and in the job's log (a SLURM task's .err file): another point's error
            # would otherwise hide it, and the first would show only when the batch's last point ends
            point = " ".join(hydra_cfg.overrides.task)
            logging.getLogger("structmt.pipeline.app").error(f"point #{hydra_cfg.job.num} ({point}): {err}")
            raise CompactHydraException(message) from None
        print(message, file=sys.stderr)
        raise SystemExit(1) from None


def misspelt_keys(argv: list[str]) -> list[str]:
    """Overrides ``group.key=value`` of a config group (``data``, ``model``, ``train``, ``logger``) whose key the
    group does not have, and ``key=value`` of a key the top level does not have (``basline=false``): Hydra's own
    error suggests ``+group.key=value``, which would add the misspelt key; this says which keys there are (as
    :func:`unknown_keys` does for an added one)."""
    groups = {name: kind for name, kind in get_type_hints(RunConf).items() if is_dataclass(kind)}
    top = [f.name for f in fields(RunConf)]
    # conf/'s groups: one outside the defaults (sweep) is added with +, as Hydra's own error says
    top_or_group = set(top) | {d.name for d in (REPO_ROOT / "conf").iterdir() if d.is_dir()}
    bad = []
    for arg in argv:
        path, equals, _ = arg.partition("=")
        group, dot, key = path.partition(".")
        bare = equals and not dot and "/" not in path and not arg.startswith(("-", "+", "~"))
        if bare and path not in top_or_group:
            bad.append(_not_a_key(path, "at the top level", top))
        if not equals or not dot or arg.startswith(("-", "+", "~")) or group not in groups:
            continue
        known = [f.name for f in fields(groups[group])]
        if key.partition(".")[0] not in known:
            bad.append(_not_a_key(path, f"of {group}", known))
    return bad


def _say_when_no_trial_completed() -> None:
    """Wrap the Optuna sweeper's ``sweep`` (idempotent): a study whose every trial failed (``max_failure_rate: 1.0``
    lets it go on) asked Optuna for its best trial and ended in a traceback of "No trials are completed yet",
    after each trial's own error. It ends with one line saying so instead; a study some of whose trials failed
    ends with an error too (exit 1, as the basic sweeper's with a failed point), once its best is reported. Optuna's
    own log lines go through the console's handler (no colour codes in a log file; shown with hydra.verbose)."""
    try:
        import optuna
        from hydra.core.utils import JobStatus
        from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl
    except ImportError:  # no Optuna sweeper: +sweep=optuna_wr says so itself
        return
    original = OptunaSweeperImpl.sweep
    if getattr(original, "says_no_trial_completed", False):
        return

    @functools.wraps(original)
    def sweep(self: Any, arguments: list[str]) -> None:
        optuna.logging.disable_default_handler()
        optuna.logging.enable_propagation()
        launched: list[Any] = []
        launch = self.launcher.launch

        def recorded(overrides: Any, initial_job_idx: int) -> Any:
            returns = launch(overrides, initial_job_idx=initial_job_idx)
            launched.extend(returns)
            return returns

        self.launcher.launch = recorded
        try:
            original(self, arguments)
        except ValueError as err:
            if "No trials are completed yet" not in str(err):
                raise
            raise SystemExit(
                "error: every trial of the Optuna study failed (each one's error is printed above): mend what they "
                "say and run the sweep again"
            ) from None
        finally:
            self.launcher.launch = launch
        if failed := [r for r in launched if r.status == JobStatus.FAILED]:
            raise SystemExit(
                f"error: {len(failed)} of {len(launched)} trials of the Optuna study failed (each one's error is "
                "printed above); its best is of the others"
            )

    sweep.says_no_trial_completed = True  # type: ignore[attr-defined]
    OptunaSweeperImpl.sweep = sweep  # type: ignore[method-assign]


def unquoted_equals(argv: list[str]) -> list[str]:
    """Overrides whose value holds an ``=`` Hydra cannot read unquoted, as the run ids of schedules named for their
    settings do (``train.finetune_from=...-smoke+max_update=40-dense-1a2b3c4d``): Hydra's own error ("mismatched
    input '='") says neither which override nor what to do."""
    bad = []
    for arg in argv:
        key, equals, value = arg.partition("=")
        if arg.startswith("-") or not equals or "=" not in value or value[:1] in "'\"":
            continue
        try:
            OverridesParser.create().parse_override(arg)
        except HydraException:
            listed = value.startswith("[") and value.endswith("]")  # a list, or a sweep's values: each part quoted
            parts = (value[1:-1] if listed else value).split(",")
            parts = [f'"{part}"' if "=" in part else part for part in parts]
            quoted = f"{key}=" + ("[{}]" if listed else "{}").format(",".join(parts))
            advice = "quote each part of it that holds '=' (\"...\")"
            if not ("{" in value or "[" in value[1:]):  # a dict or a nested list: quoting would read it as text
                with contextlib.suppress(HydraException):
                    OverridesParser.create().parse_override(quoted)
                    advice = f"quote it: {shlex.quote(quoted)}"
            bad.append(f"{key}={value}: Hydra reads the '=' in its value as syntax; {advice}")
    return bad


def main() -> None:
    """``structmt-run``: Hydra composes ``conf/`` (and nothing fairseq stored) and runs :func:`hydra_main`."""
    if problem := checkout_problem("structmt-run"):
        raise SystemExit(f"error: {problem}")
    if verbose := [arg for arg in sys.argv[1:] if arg in ("-v", "--verbose")]:  # as the other commands take it:
        # Hydra's hydra.verbose=true, after the other overrides (Hydra reads them as one list after its options)
        sys.argv[1:] = [arg for arg in sys.argv[1:] if arg not in verbose] + ["hydra.verbose=true"]
    if bad := misspelt_keys(sys.argv[1:]):
        raise SystemExit("error: invalid configuration: " + "; ".join(bad))
    if bad := unquoted_equals(sys.argv[1:]):
        raise SystemExit("error: invalid configuration: " + "; ".join(bad))
    for arg in sys.argv[1:]:  # Hydra makes its folders under runs_dir before the run's checks (a traceback)
        if arg.lstrip("+").startswith("runs_dir="):
            try:
                value = OverridesParser.create().parse_override(arg).value()  # as Hydra reads it: '' is empty
            except HydraException:
                continue  # Hydra's own error says what is wrong with it
            if isinstance(value, str) and (problem := folder_problem(value)):
                raise SystemExit(f"error: invalid configuration: runs_dir={value!r}: {problem}")
    cfg = [a for a in sys.argv[1:] if a in ("-c", "--cfg") or re.fullmatch(r"(--cfg=|-c)(job|hydra|all)", a)]
    if {"-m", "--multirun"} & set(sys.argv[1:]) and cfg:
        raise SystemExit(  # Hydra's own refusal comes with a traceback
            "error: -m and --cfg cannot be combined: drop -m to print the configuration (--cfg hydra shows the "
            "launcher and the sweep's parameters)"
        )
    _without_fairseqs_configs()
    _say_when_no_trial_completed()
    hydra_main()


if __name__ == "__main__":
    main()
