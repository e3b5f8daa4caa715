"""What a run is: its data, model and schedule (:class:`RunSpec`), and the id derived from them.

A run's id is derived from its resolved settings, so re-running the same
settings finds the finished run (and skips it) or resumes it from its last
checkpoint.  Committed results are keyed by these ids: the algorithm of
:meth:`RunSpec.run_id` must not change their ids. (It changed once, at 3f98fbd, for runs of none of them: one
model written two ways became one id, :meth:`ModelSpec.effective`; a run folder named before under another
spelling is trained again under the new id unless renamed to it.)
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass, field, fields, make_dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from ..attention.options import BLOCKS, PREFIX, RUN_NAMES, StructureConfig, spec_fields, to_fairseq_args
from ..attention.structure import role_mix_text
from ..data.prepare import MULTI30K_VOCAB
from ..data.stages import sha256_file
from ..leaderboard_csv import cross_cell
from ..paths import REPO_ROOT, RunFolder

T = TypeVar("T")

#: the structured-attention options, as ``model.*`` keys (``model.window``, ``model.cross_slope``, ...):
#: names, types and defaults come from the one schema, :class:`StructureConfig`
StructureOptions = make_dataclass("StructureOptions", spec_fields())


#: options that entered every structured run id from the start; the others enter an id only where they
#: change the model (not at their default), so the ids of runs from before they existed stay valid
_ALWAYS_IN_ID = ("window", "rare", "heads", "error")


@dataclass
class ModelSpec(StructureOptions):  # type: ignore[valid-type,misc]
    """The architecture and, for structured models, the attention structure (every
    ``--struct-*`` option of the plugin, without the ``struct_`` prefix)."""

    arch: str = "structured_transformer_multi30k"

    @property
    def structured(self) -> bool:
        return self.arch.startswith("structured_")

    @property
    def dense_arch(self) -> str:
        """The architecture of this model's dense baseline: the name without ``structured_``."""
        return self.arch.removeprefix("structured_")

    def roles_path(self) -> Path | None:
        """The roles file (a relative path is taken from the current directory, then the repository); its content
        is checked with the other options (:meth:`problems`: the blocks ``apply`` structures, as the plugin does)."""
        if not (self.structured and self.heads_from):
            return None
        places = (Path(self.heads_from).expanduser(), REPO_ROOT / self.heads_from)
        found = next((p for p in places if p.is_file()), None)
        if found is None:
            raise ValueError(
                f"model.heads_from {self.heads_from}: no such file (structmt-analyze writes results/roles.json)"
            )
        return found.resolve()

    def options(self, roles: Path | None = None) -> StructureConfig:
        """The plugin's options of this model; ``roles`` replaces ``heads_from`` (the run's own copy)."""
        values = {f"{PREFIX}{name}": getattr(self, name) for name, _, _ in spec_fields()}
        if roles is not None:
            values[f"{PREFIX}heads_from"] = str(roles)
        return StructureConfig(**values)

    def problems(self) -> list[str]:
        """Every invalid structure option, named as ``model.<key>`` (none for a dense model)."""
        if not self.structured:
            return []
        try:
            roles = self.roles_path()
        except ValueError as err:
            return [str(err)]
        return self.options(roles).problems(RUN_NAMES.name)

    def roles_digest(self) -> str:
        """The sha256 of the roles file's content ("" without one): the roles, not where the file lies."""
        roles = self.roles_path()
        return hashlib.sha256(roles.read_bytes()).hexdigest() if roles is not None else ""

    def heads_label(self) -> str:
        """The role mix as the leaderboard shows it; roles from a file by a digest of their content
        (``roles:1a2b3c4d``), whatever the file is called: two analyses' roles.json are two mixes, never two
        seeds of one, and one file copied elsewhere is the same mix (as in the run id)."""
        return f"roles:{self.roles_digest()[:8]}" if self.structured and self.heads_from else self.effective().heads

    def cross_label(self) -> str:
        """The cross-attention band as the leaderboard shows it (``cross_cell``; '' = dense)."""
        return cross_cell(self.cross_window, self.cross_slope) if self.structured and self.cross_window >= 0 else ""

    def options_label(self) -> str:
        """The structure options that change the model and have no leaderboard column of their own, where not at
        their default (``pos_window=2 error=sink:1``; '' for dense models): two runs that differ in them are two
        models, never two seeds of one. (``impl`` picks the kernel that computes the same attention.)"""
        if not self.structured:
            return ""
        own_columns = ("window", "rare", "heads", "heads_from", "cross_window", "cross_slope", "impl")
        model = self.effective()
        return " ".join(
            f"{name}={getattr(model, name)}"
            for name, _, default in spec_fields()
            if name not in own_columns and getattr(model, name) != default.default
        )

    def fairseq_args(self, roles: Path | None = None) -> list[str]:
        """The ``--struct-*`` options not at their default; ``roles`` is the run's own copy of the roles file."""
        return to_fairseq_args(self.options(roles)) if self.structured else []

    def effective(self) -> ModelSpec:
        """This model as its run id and its rows name it: one spelling of its role mix (:func:`role_mix_text`) and
        of its blocks, and the options that change nothing in it at their defaults (the error term's eps without
        an error term, the role mix beside a roles file, the cross slope with dense cross-attention): two specs of
        one model are one run, and their rows seeds of one setting."""
        default = {name: f.default for name, _, f in spec_fields()}
        plain: dict[str, Any] = {}
        if self.heads_from:
            plain["heads"] = default["heads"]
        elif self.heads != "auto":
            with contextlib.suppress(ValueError):  # a mix that does not parse: refused with the other options
                plain["heads"] = role_mix_text(self.heads)
        with contextlib.suppress(ValueError):
            blocks = StructureConfig(struct_apply=self.apply).blocks()
            plain["apply"] = ",".join(block for block in BLOCKS if block in blocks)
        if self.error == "none":
            plain["error_eps"] = default["error_eps"]
        if self.cross_window < 0:
            plain["cross_slope"] = default["cross_slope"]
        return replace(self, **plain)

    def id_settings(self) -> dict[str, Any]:
        """The settings of this model that identify a run."""
        if not self.structured:
            return {"arch": self.arch}
        settings = asdict(self.effective())
        always = set(_ALWAYS_IN_ID) | ({"cross_window", "cross_slope"} if self.cross_window >= 0 else set())
        for name, _, default in spec_fields():
            if name not in always and settings[name] == default.default:
                settings.pop(name)
        if self.heads_from:
            settings["heads_from"] = self.roles_digest()  # the roles themselves identify the run
        return settings


#: the largest ``train.seed``: fairseq seeds numpy with the seed plus the epoch (its batch order), which numpy
#: takes up to 2**32 - 1; a seed near that bound failed epochs into a training
MAX_SEED = 2**31 - 1


@dataclass
class Schedule:
    """Optimisation settings shared by the runs that are compared with each other."""

    #: a schedule of conf/train names itself; one built by hand is "custom" (its other defaults are not cpu_demo's)
    name: str = "custom"
    max_update: int = 1200
    lr: float = 0.003
    warmup: int = 300
    max_tokens: int = 4096
    dropout: float = 0.3
    label_smoothing: float = 0.1
    seed: int = 1
    threads: int = 2
    beam: int = 5
    #: the beam search's length penalty (fairseq-generate's ``--lenpen``: scores divided by length ** lenpen;
    #: fairseq's default 1.0; Vaswani et al. decode WMT with 0.6)
    lenpen: float = 1.0
    #: fairseq-fixed drops a final batch whose size is not a multiple of this; 1 keeps every sentence
    batch_multiple: int = 1
    save_interval: int = 200
    #: the model the pipeline decodes, translates and fine-tunes from: the average of the weights of the last
    #: ``average_last`` checkpoints, ``save_interval`` updates apart (the last one the training's end), as
    #: Vaswani et al. average the last 5 (base) or 20 (big); 1: the last checkpoint alone
    average_last: int = 1
    update_freq: int = 1
    #: GPUs fairseq-train trains on, one process each (``--distributed-world-size``; fairseq's own default, every
    #: GPU the machine shows, would change the batch, and so the model, with the machine under one run id)
    world_size: int = 1
    #: the training's floating-point format: ``fp32``, or fairseq's mixed precision ``fp16`` (a CUDA GPU) or
    #: ``bf16`` (``--fp16`` / ``--bf16``); a run trained otherwise is another model, its schedule named for it
    precision: str = "fp32"
    #: more fairseq-train options, e.g. ["--ddp-backend", "no_c10d"]
    extra_args: list[str] = field(default_factory=list)
    #: start from a trained model's weights (fairseq's ``--finetune-from-model``; optimiser, schedule and data
    #: order start afresh): the id of a finished run in the same runs folder, or a checkpoint file (``.pt``)
    finetune_from: str = ""

    def finetune_checkpoint(self, runs_dir: Path) -> Path | None:
        """The checkpoint that :attr:`finetune_from` names (checked: it must exist, a run must be finished)."""
        if not self.finetune_from:
            return None
        if self.finetune_from.endswith(".pt"):
            path = Path(self.finetune_from).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"train.finetune_from={self.finetune_from}: no such checkpoint file")
            return path.resolve()
        run = RunFolder(runs_dir / self.finetune_from)
        if not run.metrics.is_file():
            raise FileNotFoundError(
                f"train.finetune_from={self.finetune_from}: no finished run of that id in {runs_dir} "
                "(train it first, or give a checkpoint file ending in .pt)"
            )
        return run_model_checkpoint(run.path)

    def log_interval(self) -> int:
        """Updates between fairseq's progress lines (and so the pipeline's): every 2 % of the run, at most 50."""
        return max(1, min(50, self.max_update // 50))

    def fairseq_args(self) -> list[str]:
        if self.precision not in PRECISIONS:
            raise ValueError(f"train.precision={self.precision!r} must be one of {', '.join(PRECISIONS)}")
        # fmt: off
        return [
            "--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--lr", str(self.lr),
            "--lr-scheduler", "inverse_sqrt", "--warmup-updates", str(self.warmup),
            "--max-tokens", str(self.max_tokens), "--max-update", str(self.max_update),
            "--dropout", str(self.dropout), "--criterion", "label_smoothed_cross_entropy",
            "--label-smoothing", str(self.label_smoothing), "--seed", str(self.seed), "--num-workers", "0",
            "--required-batch-size-multiple", str(self.batch_multiple), "--no-epoch-checkpoints",
            "--save-interval-updates", str(self.save_interval), "--keep-interval-updates", str(self.average_last),
            "--disable-validation", "--log-interval", str(self.log_interval()), "--update-freq", str(self.update_freq),
            "--distributed-world-size", str(self.world_size), *PRECISIONS[self.precision], *self.extra_args,
        ]
        # fmt: on


def averaging_problems(count: int, interval: int, max_update: int) -> list[str]:
    """``train.average_last`` checkpoints that the training would not save: they are ``train.save_interval``
    updates apart, the last one at ``train.max_update``."""
    if count <= 1 or max_update <= 0:
        return []
    if interval <= 0:
        return [
            f"train.average_last={count} averages checkpoints train.save_interval updates apart, and "
            f"train.save_interval={interval} saves none: set it > 0"
        ]
    saved = max_update // interval + (max_update % interval > 0)  # every interval, and the last update
    if saved < count:
        return [
            f"train.average_last={count}: train.max_update={max_update} saves {saved} checkpoints "
            f"train.save_interval={interval} updates apart; lower train.save_interval or train.average_last"
        ]
    return []


#: ``train.precision`` → its fairseq-train options
PRECISIONS = {"fp32": [], "fp16": ["--fp16"], "bf16": ["--bf16"]}


#: a file whose change time is this recent may be written again within the same clock tick of its file
#: system (1 s or 2 s on some), unseen by its timestamps: its digest is not cached (git's "racy" files)
RACY_NS = 3_000_000_000


def file_digest(path: Path) -> str:
    """sha256 of a file, read once per (path, size, mtime, ctime, inode): a checkpoint of hundreds of MB
    enters every :meth:`RunSpec.run_id` call of a fine-tuned run. The change time and inode are in the key
    because the modification time alone can be set back (``cp -p``, ``touch -d``) or be coarse; the change
    time moves on every write and cannot be set by the user, and a file replaced by rename has a new inode.
    A file changed in the last :data:`RACY_NS` is read every time."""
    stat = path.stat()
    if time.time_ns() - max(stat.st_mtime_ns, stat.st_ctime_ns) < RACY_NS:
        return sha256_file(path)
    return _cached_digest(str(path), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)


@functools.lru_cache(maxsize=8)
def _cached_digest(path: str, size: int, mtime_ns: int, ctime_ns: int, inode: int) -> str:
    return sha256_file(Path(path))


@dataclass
class DataSpec:
    name: str = "multi30k_en_de"
    src: str = "en"
    tgt: str = "de"
    vocab_size: int = MULTI30K_VOCAB
    mirror: str | None = None
    base_url: str | None = None
    max_train_lines: int = 0  # 0 = all; slices are for smoke tests
    max_eval_lines: int = 0


#: the schedule's settings outside a run's id: they change how it runs, not what it trains
OUTSIDE_ID = ("threads", "save_interval")


def outside_id(schedule: Schedule) -> tuple[str, ...]:
    """:data:`OUTSIDE_ID`, but for ``save_interval`` where ``schedule`` averages checkpoints (``average_last`` > 1):
    the interval then chooses the weights averaged into the model."""
    return OUTSIDE_ID if schedule.average_last <= 1 else tuple(n for n in OUTSIDE_ID if n != "save_interval")


@dataclass
class RunSpec:
    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    schedule: Schedule = field(default_factory=Schedule)

    def run_id(self) -> str:
        """Stable id from the settings that change the result (not the thread count)."""
        settings = asdict(self)
        for name in outside_id(self.schedule):
            settings["schedule"].pop(name)
        settings["data"].pop("mirror")
        settings["data"].pop("base_url")
        # at their defaults, options added later leave out of the id: ids of runs from before them stay valid
        for name, default in (("world_size", 1), ("lenpen", 1.0), ("precision", "fp32"), ("average_last", 1)):
            if settings["schedule"][name] == default:
                settings["schedule"].pop(name)
        if not self.schedule.finetune_from:  # likewise
            settings["schedule"].pop("finetune_from")
        elif self.schedule.finetune_from.endswith(".pt"):  # the weights, not where the file lies
            start = self.schedule.finetune_checkpoint(Path())  # checked: a file's path needs no runs folder
            settings["schedule"]["finetune_from"] = file_digest(start)  # type: ignore[arg-type]
        settings["model"] = self.model.id_settings()
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
        m = self.model
        shape = "dense"
        if m.structured:
            shape = f"w{m.window}-r{m.rare}" + ("-roles" if m.heads_from else "")
            shape += f"-x{m.cross_window}" if m.cross_window >= 0 else ""
        shape += "-ft" if self.schedule.finetune_from else ""
        return f"{self.data.name}-{self.schedule.name}-{shape}-{digest}"


def load_schedule(name: str) -> Schedule:
    """A schedule from ``conf/train/<name>.yaml``, checked against :class:`Schedule`."""
    from omegaconf import OmegaConf

    return checked(Schedule, OmegaConf.load(schedule_file(name)))


#: the schedule made for fine-tuning (``train=finetune``): it takes ``finetune_from`` as its other runs do seeds,
#: where the start is the dense run of :data:`FINETUNE_START` of the same seed (``make finetune``'s); a start of
#: another schedule or seed, or a checkpoint file, names the fine-tune's schedule (:func:`named_for_start`)
FINETUNE_SCHEDULE = "finetune"
FINETUNE_START = "reproduce"


def same_setting(schedule: Schedule) -> tuple[str, ...]:
    """What ``schedule`` may change of its named schedule and keep its name: its seed, what it runs with outside its
    id (:func:`outside_id`), its decoding (``beam``, ``lenpen``: the options label) and its start."""
    return ("name", "seed", *outside_id(schedule), "beam", "lenpen", "finetune_from")


def own_name(schedule: Schedule) -> Schedule:
    """``schedule``, named for the settings where it departs from ``conf/train/<name>.yaml``
    (``cpu_demo+lr=0.001``; a list, a path or a run id by a digest: ``+extra_args=1a2b3c``), so that its rows are
    never averaged with the named schedule's as seeds of one setting. A name without a file is the user's own; a
    name of this form given by hand (``train.name=cpu_demo+lr=0.001``) is named again from its schedule's file, for
    the settings the run has, not the ones the name states."""
    if "+" in schedule.name and named_schedule(schedule.name) is not None:
        return own_name(replace(schedule, name=schedule.name.partition("+")[0]))
    if not schedule_file(schedule.name).is_file():
        return schedule
    named = load_schedule(schedule.name)
    changed = {
        f.name: getattr(schedule, f.name)
        for f in fields(Schedule)
        if f.name not in same_setting(schedule) and getattr(schedule, f.name) != getattr(named, f.name)
    }
    if schedule.finetune_from and (schedule.name != FINETUNE_SCHEDULE or schedule.finetune_from.endswith(".pt")):
        start = Path(schedule.finetune_from).expanduser()  # a file: named for its weights, not where it lies
        weights = schedule.finetune_from.endswith(".pt") and start.is_file()
        changed["finetune_from"] = file_digest(start.resolve()) if weights else schedule.finetune_from
    if not changed:
        return schedule
    return replace(schedule, name="+".join([schedule.name, *(f"{k}={setting_text(v)}" for k, v in changed.items())]))


def setting_text(value: Any) -> str:
    """A setting's value as a schedule name shows it: a number, or a short lower-case word (``bf16``), as it is;
    anything else (a list, a path, a run id) by a 6-hex digest."""
    text = str(value)
    if isinstance(value, (int, float)) and re.fullmatch(r"[0-9A-Za-z.+-]+", text):
        return text
    if isinstance(value, str) and re.fullmatch(r"[a-z0-9]{1,8}", value):
        return value
    return hashlib.sha256(json.dumps(value).encode()).hexdigest()[:6]


def named_for_start(schedule: Schedule, start: Schedule) -> Schedule:
    """A :data:`FINETUNE_SCHEDULE` fine-tune named for its start where that is not the dense
    :data:`FINETUNE_START` run of its own seed (``finetune+finetune_from=1a2b3c``): fine-tunes of other models are
    never averaged as seeds of one setting."""
    finetune = schedule.name.partition("+")[0] == FINETUNE_SCHEDULE  # with other settings too: finetune+lr=0.001
    if not finetune or (start.name, start.seed) == (FINETUNE_START, schedule.seed):
        return schedule
    return replace(schedule, name=f"{schedule.name}+finetune_from={setting_text(schedule.finetune_from)}")


def named_schedule(name: str) -> Schedule | None:
    """The ``conf/train`` schedule called ``name``, or that :func:`own_name` named it from (``cpu_demo+lr=0.001``:
    ``cpu_demo``: each part after a ``+`` a setting of a :class:`Schedule`); None for a name of the user's own."""
    base, *parts = name.split("+")
    keys = {f.name for f in fields(Schedule)}
    if parts and not all(part.partition("=")[0] in keys and "=" in part for part in parts):
        return None  # "smoke+mine": the user's own name, not smoke's
    return load_schedule(base) if schedule_file(base).is_file() else None


def schedule_file(name: str) -> Path:
    """``conf/train/<name>.yaml``: the schedule of that name (``train=<name>``)."""
    return REPO_ROOT / "conf" / "train" / f"{name}.yaml"


def checked(cls: type[T], values: Any) -> T:
    """``values`` (a mapping, or a loaded YAML file) as a ``cls``, checked against its fields and types."""
    from omegaconf import OmegaConf

    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), values))  # type: ignore[return-value]


def recorded_average_last(run_dir: Path) -> int:
    """The ``train.average_last`` a run folder's ``spec.json`` records (1 where the folder has none)."""
    return read_spec(run_dir).schedule.average_last if RunFolder(run_dir).spec.is_file() else 1


def run_model_checkpoint(run_dir: Path) -> Path:
    """The checkpoint a run folder's test sets were decoded with, which a translation and a fine-tune from it
    read: its last one, or its last ones averaged (:func:`recorded_average_last`)."""
    return RunFolder(run_dir).model_checkpoint(recorded_average_last(run_dir))


def read_spec(run_dir: Path) -> RunSpec:
    """The :class:`RunSpec` a run was trained with (its ``spec.json``)."""
    path = RunFolder(run_dir).spec
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a structmt run folder?")
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
        values["data"]["src"], values["data"]["tgt"]  # noqa: B018 (its direction: never the defaults' in silence)
        return checked(RunSpec, values)  # keys added since an older run wrote it: their defaults
    except Exception as err:  # noqa: BLE001 - JSON, a missing key, OmegaConf's type and key errors
        raise ValueError(
            f"{path}: not the settings structmt-run writes ({type(err).__name__}: {err}); restore it from the run "
            "that trained the folder, or train the run again"
        ) from None
