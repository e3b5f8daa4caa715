"""What a person sees (issue #16): the pipeline run the way a user runs it, as a subprocess.

Each message once, no DEBUG lines or third-party INFO records, progress while training and
decoding, the offline-mirror fallback stated once, errors in one line; and with W&B offline
(no API key, or ``WANDB_MODE=offline``) no host name is looked up and no host contacted.
A ``sitecustomize.py`` on the subprocesses' ``PYTHONPATH`` makes every Python process
(wandb's own helpers included) refuse and record any lookup or connection that is not
loopback.  wandb's service is a Go program that Python cannot patch; ``strace -f -e
trace=connect`` shows it opens no internet socket in offline mode either.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import warnings
from collections import Counter
from pathlib import Path

import pytest

from structmt.data.fetch import MULTI30K_ENV, MULTI30K_SHARED

REPO = Path(__file__).resolve().parents[1]

NO_NETWORK = """
import os, socket, traceback

_LOG = os.environ["STRUCTMT_TEST_NETLOG"]
_LOCAL = {None, "localhost", "127.0.0.1", "::1"}


def _record(what, host):
    with open(_LOG, "a", encoding="utf-8") as f:
        f.write(f"--- pid {os.getpid()}: {what} {host!r}\\n" + "".join(traceback.format_stack()[:-2]))
    raise OSError(f"network disabled by the test: {what} {host!r}")


def _guard(name):
    original = getattr(socket, name)

    def guarded(host, *args, **kwargs):
        address = host[0] if isinstance(host, tuple) else host
        if address not in _LOCAL:
            _record(name, address)
        return original(host, *args, **kwargs)

    setattr(socket, name, guarded)


for _name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex", "create_connection"):
    _guard(_name)

_connect = socket.socket.connect


def _checked_connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in _LOCAL:
        _record("connect", address[0])
    return _connect(self, address)


socket.socket.connect = _checked_connect
"""

#: a small run that trains over more than one epoch, logs a training curve (``train_inner`` records,
#: which W&B gets as history) and decodes both test sets
SMOKE = [
    "data=multi30k_smoke",
    "data.max_train_lines=500",
    "data.max_eval_lines=8",
    "model=dense_tiny",
    "train=smoke",
    "train.max_update=20",
    "train.extra_args=['--log-interval','10']",
    "train.beam=1",
    "baseline=false",
]


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    """The environment of a user without W&B credentials, offline: every lookup is refused and recorded."""
    site = tmp / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(NO_NETWORK)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k != MULTI30K_ENV}
    return env | {
        "PYTHONPATH": os.pathsep.join([str(site), str(REPO)]),
        "STRUCTMT_TEST_NETLOG": str(tmp / "network.log"),
        "WANDB_CONFIG_DIR": str(tmp / "wandb-config"),
        "WANDB_CACHE_DIR": str(tmp / "wandb-cache"),
        "OMP_NUM_THREADS": "1",  # decoding on a busy machine: 0.6 s instead of 25 s per test set
        **extra,
    }


def _lines(result: subprocess.CompletedProcess) -> list[str]:
    return (result.stdout + result.stderr).splitlines()


def _lookups(tmp: Path) -> list[str]:
    """The refused lookups and connections (with where they came from), one entry each."""
    log = tmp / "network.log"
    return log.read_text().split("--- ")[1:] if log.exists() else []


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """``structmt-run`` with the W&B logger (offline: no API key) on a slice of Multi30k."""
    if not MULTI30K_SHARED.is_dir():
        pytest.skip(f"needs the offline Multi30k mirror at {MULTI30K_SHARED}")
    tmp = tmp_path_factory.mktemp("output")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "structmt.pipeline.app",
            *SMOKE,
            "logger=wandb",
            f"runs_dir={tmp}/runs",
            f"results_dir={tmp}/results",
        ],
        cwd=tmp,
        env=_env(tmp),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return tmp, result


def test_each_line_once_without_debug_or_third_party_info(smoke_run):
    _, result = smoke_run
    lines = _lines(result)
    assert not [line for line in lines if "DEBUG" in line]
    assert not [line for line in lines if re.match(r"\[?(INFO|WARNING)\b", line)]  # hydra, fairseq, sacrebleu records
    assert not [line for line in lines if "tensorboardX" in line or "bootstrap" in line.lower()]
    twice = {line: n for line, n in Counter(line.strip() for line in lines if line.strip()).items() if n > 1}
    assert not twice, twice
    assert any(re.search(r"test_2016_flickr: BLEU [\d.]+ chrF", line) for line in lines)


def test_progress_while_training_and_decoding(smoke_run):
    _, result = smoke_run
    lines = _lines(result)
    updates = [tuple(map(int, m.groups())) for line in lines if (m := re.search(r"\] (\d+)/(\d+) updates", line))]
    assert updates[-1] == (20, 20)
    assert any(done < total for done, total in updates), updates  # said during training, not only at the end
    progress = [line for line in lines if re.search(r"\d+/\d+ updates, ", line)]
    assert all(re.search(r"updates, loss [\d.]+, [\d.]+k? tok/s", line) for line in progress), progress
    decoded = {m.group(1): m.group(2) for line in lines if (m := re.search(r"\] (\w+): (\d+/\d+) sentences$", line))}
    assert decoded == {"test_2016_flickr": "8/8", "test_2017_flickr": "8/8"}  # the last line of each test set


def test_training_progress_says_updates_loss_speed_and_time_left_once_each(capsys):
    """From fairseq-train's log as it grows: a resume (not a fresh start's "@ 0 updates"), then each update count
    once (an epoch's summary repeats the last record's), the time left while there is some; ``?`` without a
    ``--max-update``."""
    from structmt.fairseq_cli import _train_progress

    def inner(updates: int, loss: float, wps: float, ups: float) -> str:
        return (
            f"x | INFO | train_inner | epoch 002:  10 / 136 loss={loss}, wps={wps}, ups={ups}, num_updates={updates}\n"
        )

    on_text = _train_progress("[run]", 500)
    on_text("x | INFO | fairseq.trainer | Loaded checkpoint c.pt (epoch 1 @ 0 updates)\n")
    on_text(
        "x | INFO | fairseq.trainer | Loaded checkpoint c.pt (epoch 3 @ 300 updates)\n" + inner(320, 5.123, 2345.6, 0.5)
    )
    on_text(inner(480, 4, 900, 2) + "x | INFO | train | epoch 002 | loss 4.1 | wps 900 | ups 2 | num_updates 480\n")
    on_text(inner(500, 3.9, 950, 2))
    _train_progress("[other]", 0)(inner(10, 7, 100, 1))
    assert capsys.readouterr().out.splitlines() == [
        "[run] resumed at 300/500 updates",
        "[run] 320/500 updates, loss 5.12, 2.3k tok/s, ETA 6 min",
        "[run] 480/500 updates, loss 4.00, 900 tok/s, ETA 10 s",
        "[run] 500/500 updates, loss 3.90, 950 tok/s",
        "[other] 10/? updates, loss 7.00, 100 tok/s",
    ]


@pytest.mark.reliability  # docs/reliability.md
def test_offline_mirror_fallback_is_stated_once_and_names_the_mirror(smoke_run):
    _, result = smoke_run
    said = [line for line in _lines(result) if "offline mirror" in line]
    assert len(said) == 1 and str(MULTI30K_SHARED) in said[0], said


@pytest.mark.reliability  # docs/reliability.md
def test_offline_wandb_looks_up_no_host(smoke_run):
    """The pipeline logged the run to W&B offline; the only lookup is the corpus download it tried first."""
    tmp, result = smoke_run
    assert any(re.search(r"W&B \(offline\): .*offline-run-", line) for line in _lines(result))
    assert _lookups(tmp), "the sitecustomize recorded nothing: it did not run"
    others = [entry for entry in _lookups(tmp) if "structmt/data/fetch.py" not in entry]
    assert not others, others[0]


@pytest.mark.reliability  # docs/reliability.md
def test_leaderboard_wandb_offline_looks_up_no_host(smoke_run):
    """``structmt-leaderboard --wandb`` without an API key (offline; ``WANDB_MODE`` unset)."""
    tmp, _ = smoke_run
    (tmp / "network.log").unlink()
    result = subprocess.run(
        [sys.executable, "-m", "structmt.pipeline.leaderboard", "--results-dir", str(tmp / "results")]
        + ["--wandb", "--wandb-dir", str(tmp / "wandb")],
        cwd=tmp,
        env=_env(tmp),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lookups = _lookups(tmp)
    assert not lookups, lookups[0]
    assert "W&B leaderboard table: " in result.stdout and "offline-run-" in result.stdout
    assert not [line for line in _lines(result) if "DEBUG" in line]


def test_an_error_is_one_line_without_traceback(tmp_path):
    """One line that says how to see more; with -v, the traceback that line stands for."""

    def run(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "structmt.pipeline.app", *SMOKE, "train.dropout=1.5", f"runs_dir={tmp_path}/runs"]
        return subprocess.run(
            cmd + list(args), cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=300
        )

    result = run()
    assert result.returncode != 0
    errors = [line for line in _lines(result) if line.startswith("error: ")]
    assert errors == [
        "error: invalid configuration: train.dropout=1.5 must lie in [0, 1) (hydra.verbose=true shows the traceback)"
    ], result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    verbose = run("-v")
    assert verbose.returncode == 1 and "Traceback (most recent call last):" in verbose.stderr
    assert "\nConfigError: invalid configuration: train.dropout=1.5 must lie in [0, 1)\n" in verbose.stderr


def test_an_exception_in_a_finaliser_is_one_line_without_traceback():
    """A library's ``__del__`` that fails (fairseq's data set whose ``__init__`` failed first): one warning line
    (Python printed "Exception ignored in" and a traceback); with -v, Python's own report."""
    code = (
        "import sys\nfrom structmt.console import setup\nsetup(verbose=sys.argv[1] == 'v')\n"
        "class Data:\n    def __del__(self):\n        self.buffer.close()\n"
        "Data()\nprint('went on')\n"
    )
    quiet = subprocess.run([sys.executable, "-c", code, "q"], capture_output=True, text=True, check=True)
    assert quiet.stdout == "went on\n"
    assert quiet.stderr == (
        "warning: ignored AttributeError: 'Data' object has no attribute 'buffer' in Data.__del__ "
        "(-v shows the traceback)\n"
    )
    verbose = subprocess.run([sys.executable, "-c", code, "v"], capture_output=True, text=True, check=True)
    assert "Exception ignored in: <function Data.__del__" in verbose.stderr and "Traceback" in verbose.stderr


@pytest.fixture
def console_setup(monkeypatch):
    """:func:`structmt.console.setup`, run in the test process: what it changes is restored after the test."""
    from structmt import console

    root, ours = logging.getLogger(), logging.getLogger("structmt")
    for owner, name in ((sys, "excepthook"), (sys, "unraisablehook"), (warnings, "showwarning")):
        monkeypatch.setattr(owner, name, getattr(owner, name))
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    levels, sigterm = (root.level, ours.level), signal.getsignal(signal.SIGTERM)
    yield console.setup
    signal.signal(signal.SIGTERM, sigterm)
    root.setLevel(levels[0])
    ours.setLevel(levels[1])


def test_structmts_records_are_plain_lines_and_others_name_their_level_and_logger(console_setup, capsys, tmp_path):
    """A file handler (Hydra's job log) stays, a console handler (a library's ``basicConfig``) is replaced, and a
    launcher's SIGTERM handler (submitit's) is kept; a traceback only for an error."""
    from structmt.console import _Console

    root = logging.getLogger()
    job_log = logging.FileHandler(tmp_path / "job.log")
    root.addHandler(job_log)
    root.addHandler(logging.StreamHandler())

    def launcher(signum, frame):
        pass

    signal.signal(signal.SIGTERM, launcher)
    console_setup()
    console_setup()
    assert signal.getsignal(signal.SIGTERM) is launcher
    assert job_log in root.handlers
    shown = [
        h for h in root.handlers if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
    ]
    assert shown == [] and sum(isinstance(h, _Console) for h in root.handlers) == 1
    ours, theirs = logging.getLogger("structmt.pipeline.app"), logging.getLogger("fairseq.trainer")
    ours.debug("hidden")
    ours.info("trained")
    ours.warning("slow disk")
    theirs.info("hidden")
    theirs.warning("old checkpoint")
    try:
        raise ValueError("bad")
    except ValueError:
        ours.warning("retrying", exc_info=True)
        ours.error("failed", exc_info=True)
    job_log.close()
    lines = capsys.readouterr().err.splitlines()
    assert lines[:4] == [
        "trained",
        "warning: slow disk",
        "WARNING fairseq.trainer: old checkpoint",
        "warning: retrying",
    ]
    assert lines[4:6] == ["error: failed", "Traceback (most recent call last):"] and lines[-1] == "ValueError: bad"
    assert (tmp_path / "job.log").read_text().startswith("trained\nslow disk\nold checkpoint\n")  # still kept
    console_setup(verbose=True)
    theirs.debug("shown")
    assert capsys.readouterr().err == "DEBUG fairseq.trainer: shown\n"


def test_an_uncaught_error_or_warning_is_one_line_naming_a_foreign_exceptions_type(capsys):
    from structmt.console import _one_line_error, _show_warning
    from structmt.fairseq_cli import StepError

    _one_line_error(StepError, StepError("fairseq-train failed"), None)
    _one_line_error(ValueError, ValueError("bad value"), None)
    _one_line_error(KeyboardInterrupt, KeyboardInterrupt(), None)
    _show_warning(UserWarning("deprecated"), UserWarning, "f.py", 1)
    assert capsys.readouterr().err == (
        "error: fairseq-train failed (-v shows the traceback)\n"
        "error: ValueError: bad value (-v shows the traceback)\n"
        "interrupted\nwarning: deprecated\n"
    )


def test_a_reader_that_went_away_ends_the_command_with_status_141_and_no_second_error(tmp_path, monkeypatch, capsys):
    """``structmt-leaderboard | head``: as ``cat`` does; what is left to flush at exit goes nowhere."""
    from structmt.console import _one_line_error

    out = (tmp_path / "stdout").open("w")
    monkeypatch.setattr(sys, "stdout", out)
    with pytest.raises(SystemExit) as ended:
        _one_line_error(BrokenPipeError, BrokenPipeError(32, "Broken pipe"), None)
    out.write("flushed at exit\n")
    out.close()
    assert ended.value.code == 141 and (tmp_path / "stdout").read_text() == "" and capsys.readouterr().err == ""


def test_a_message_is_said_once_per_process_or_per_key(monkeypatch, capsys):
    from structmt import console

    monkeypatch.setattr(console, "_said", set())
    console.say_once("[data] raw: up to date", key=("raw", "a"))
    console.say_once("[data] raw: up to date", key=("raw", "b"))  # another folder
    console.say_once("[data] raw: up to date again", key=("raw", "a"))
    console.say_once("[data] source: mirror")
    console.say_once("[data] source: mirror")
    assert capsys.readouterr().out == "[data] raw: up to date\n[data] raw: up to date\n[data] source: mirror\n"


@pytest.mark.parametrize("first", ["structmt", "fairseq"])
def test_torch_deprecating_jit_script_prints_nothing_as_structmt_imports_fairseq(first):
    """torch 2.14 on deprecates ``torch.jit.script``, which fairseq's modules apply as they are imported: every
    command began with two lines of FutureWarning about fairseq's code (here torch 2.14's warning is stood in for,
    to show it appears when fairseq is imported directly), and every fairseq child's log with them. Nor do the
    ``logging.basicConfig`` calls of fairseq's modules set up the root logger (at DEBUG level, for one of them)."""
    from structmt.fairseq_cli import FAIRSEQ_PYTHON

    code = (
        "import sys, warnings\nimport torch\nscript = torch.jit.script\n"
        "def deprecated(*args, **kwargs):\n"
        "    warnings.warn('`torch.jit.script` is deprecated. Please switch to `torch.compile` or `torch.export`.',"
        " FutureWarning, stacklevel=2)\n"
        "    return script(*args, **kwargs)\n"
        "torch.jit.script = deprecated\n__import__(sys.argv[1])\nimport logging\n"
        "print('fairseq' in sys.modules, logging.root.handlers == [])\n"
    )
    result = subprocess.run([sys.executable, "-c", code, first], capture_output=True, text=True, check=True)
    assert result.stdout == f"True {first == 'structmt'}\n"  # structmt imported fairseq, its logging left alone
    assert ("torch.jit.script` is deprecated" in result.stderr) == (first == "fairseq"), result.stderr
    if first == "fairseq":  # the fairseq children (fairseq-train, -generate, -preprocess) run without it
        child = subprocess.run([*FAIRSEQ_PYTHON, "-c", code, "fairseq"], capture_output=True, text=True, check=True)
        assert child.stdout == "True False\n" and "torch.jit.script` is deprecated" not in child.stderr, child.stderr
