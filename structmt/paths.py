"""Where things are: the repository checkout, the plugin folder (``--user-dir``), the default folders of
results (committed) and runs (checkpoints, data, W&B files; not committed), and the files the pipeline keeps
in a run's folder, a results folder and a prepared data folder (named here, once)."""

from dataclasses import dataclass
from pathlib import Path

PLUGIN_DIR = Path(__file__).resolve().parent
REPO_ROOT = PLUGIN_DIR.parent
RESULTS_DIR = REPO_ROOT / "results"
RUNS_DIR = REPO_ROOT / "runs"


def checkout_problem(command: str, needs: tuple[str, ...] = ("conf", "data")) -> str:
    """Why ``command`` cannot run from this installation ("" when it can): it reads the checkout's folders
    ``needs`` (``conf/``: structmt-run's configs; ``data/``: the data sets' manifests and checksums), which a
    non-editable install leaves behind."""
    missing = [name for name in needs if not (REPO_ROOT / name).is_dir()]
    if not missing:
        return ""
    return (
        f"{command} reads the structmt checkout's {' and '.join(f'{m}/' for m in missing)}, and {REPO_ROOT} has none: "
        "this structmt was installed from a copy without them. Install it editable from a clone of the repository: "
        "`make install` (its own CPU environment), or into an environment with your torch `pip install "
        "--no-build-isolation -e .` or `scripts/install_offline.sh WHEELHOUSE` without --sdist (docs/install.md); "
        "the plugin alone (--user-dir) needs none of them"
    )


@dataclass(frozen=True)
class RunFolder:
    """One run's folder, ``<runs>/<run id>/``: what training writes there (it translates on its own from it)
    and what evaluating it adds."""

    path: Path

    @property
    def spec(self) -> Path:
        """The run's settings (a ``RunSpec``), written when its training starts."""
        return self.path / "spec.json"

    @property
    def metrics(self) -> Path:
        """Its training metrics, written when its training finished."""
        return self.path / "train.json"

    @property
    def train_log(self) -> Path:
        """fairseq-train's output, appended to by every training of the run."""
        return self.path / "train.log"

    @property
    def trainer_pid(self) -> Path:
        """The process id (and host) of the fairseq-train training it, while one does."""
        return self.path / "trainer.pid"

    @property
    def checkpoints(self) -> Path:
        """fairseq-train's ``--save-dir``."""
        return self.path / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        """The checkpoint training resumes from."""
        return self.checkpoints / "checkpoint_last.pt"

    @property
    def averaged_checkpoint(self) -> Path:
        """The average of its last checkpoints' weights (``train.average_last`` > 1), written when training ends."""
        return self.checkpoints / "checkpoint_average.pt"

    def model_checkpoint(self, average_last: int) -> Path:
        """The checkpoint the pipeline decodes, translates and fine-tunes from, for the run's ``train.average_last``:
        :attr:`last_checkpoint` (1), else :attr:`averaged_checkpoint`."""
        return self.last_checkpoint if average_last <= 1 else self.averaged_checkpoint

    @property
    def model(self) -> Path:
        """The SentencePiece model and dictionaries it was trained with."""
        return self.path / "model"

    @property
    def spm_model(self) -> Path:
        """The SentencePiece model, kept in :attr:`model`."""
        return self.model / "spm.model"

    def dictionary(self, lang: str) -> Path:
        """The fairseq dictionary of ``lang``, kept in :attr:`model`."""
        return self.model / dictionary_name(lang)

    @property
    def roles(self) -> Path:
        """Its copy of a roles file (``model.heads_from``), which decoding and translation load."""
        return self.path / "roles.json"

    @property
    def finetune_start(self) -> Path:
        """A fine-tune's record of the training time of the checkpoint it started from."""
        return self.path / "finetune_start.json"

    @property
    def decode_log(self) -> Path:
        """fairseq-generate's output, appended to by every decode of the run."""
        return self.path / "decode.log"

    def decoded(self, name: str, lang: str) -> Path:
        """Its detokenized hypotheses of the test set (or ``valid``) ``name`` in ``lang``."""
        return self.path / f"{name}.{lang}"

    @property
    def valid_score(self) -> Path:
        """Its scores on the validation set (a sweep's objective)."""
        return self.path / "valid.json"

    @property
    def result(self) -> Path:
        """Its evaluation: leaderboard rows and W&B run, written when the evaluation finished."""
        return self.path / "result.json"


@dataclass(frozen=True)
class ResultsFolder:
    """A results folder (``results/`` by default): the leaderboard and what it points to."""

    path: Path

    @property
    def leaderboard(self) -> Path:
        """Every evaluation's rows."""
        return self.path / "leaderboard.csv"

    @property
    def leaderboard_page(self) -> Path:
        """The leaderboard rendered, every row."""
        return self.path / "LEADERBOARD.md"

    @property
    def leaderboard_chart(self) -> Path:
        """The leaderboard drawn, the best runs per test set."""
        return self.path / "leaderboard.png"

    @property
    def benchmarks_page(self) -> Path:
        """``structmt-bench report``'s page of the benchmark records in the folder."""
        return self.path / "BENCHMARKS.md"

    @property
    def hyps(self) -> Path:
        """The hypotheses the rows name."""
        return self.path / "hyps"

    @property
    def logs(self) -> Path:
        """The training logs kept (gzip)."""
        return self.path / "logs"

    @property
    def sweeps(self) -> Path:
        """``structmt-sweep-report``'s pages and figures."""
        return self.path / "sweeps"


@dataclass(frozen=True)
class DataFolder:
    """A prepared data set's folder (``runs/data/<data label>``, with ``-<digest>`` for settings other than the
    data set's defaults): its text (the training data cleaned, the evaluation sets as given: the references),
    its SentencePiece model and fairseq's binarized data."""

    path: Path

    @property
    def raw(self) -> Path:
        """The text, ``<split>.<lang>``."""
        return self.path / "raw"

    def text(self, split: str, lang: str) -> Path:
        """The text of ``split`` in ``lang`` (of an evaluation set: its references)."""
        return self.raw / f"{split}.{lang}"

    @property
    def spm(self) -> Path:
        """The joint SentencePiece model (``spm.model``, ``spm.vocab``) and the text it encoded."""
        return self.path / "spm"

    @property
    def spm_model(self) -> Path:
        return self.spm / "spm.model"

    @property
    def bin(self) -> Path:
        """fairseq's binarized data and dictionaries: fairseq-train's and fairseq-generate's data folder."""
        return self.path / "bin"

    def dictionary(self, lang: str) -> Path:
        """The fairseq dictionary of ``lang`` (joined: the same symbols for both languages)."""
        return self.bin / dictionary_name(lang)


def dictionary_name(lang: str) -> str:
    """fairseq's name for the dictionary of ``lang``, which its translation task looks for beside the data."""
    return f"dict.{lang}.txt"
