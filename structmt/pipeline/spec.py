"""What a run is: its data, model and schedule (:class:`RunSpec`), and the id derived from them.

A run's id is derived from its resolved settings, so re-running the same
settings finds the finished run (and skips it) or resumes it from its last
checkpoint.  Committed results are keyed by these ids: the algorithm of
:meth:`RunSpec.run_id` must not change.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..attention.structure import roles_from_file
from ..paths import REPO_ROOT


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
