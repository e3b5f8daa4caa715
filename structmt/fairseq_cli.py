"""fairseq's command-line tools with the structmt plugin: ``fairseq-train`` (and what its
log says) and ``fairseq-generate``, used by the pipeline and the benchmarks.

Every step runs fairseq as a subprocess with an argument list (never a
shell), logs to the run folder, and writes its outputs atomically.  While it
runs, a thread reads what fairseq writes and prints progress lines
(``[run] 320/500 updates, loss 5.12, 2.3k tok/s, ETA 4 min``, ``[run] test: 40/100 sentences``).
"""

from __future__ import annotations

import math
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .console import child_process, say
from .fairseq_fixes import JIT_DEPRECATION
from .files import atomic_path, write_text_atomic
from .paths import PLUGIN_DIR, RunFolder

#: the interpreter of a fairseq child (fairseq-train, -generate, -preprocess): this Python, without the two lines of
#: FutureWarning fairseq's import prints under torch >= 2.14 (:data:`~structmt.fairseq_fixes.JIT_DEPRECATION`)
FAIRSEQ_PYTHON = (sys.executable, "-W", f"ignore:{JIT_DEPRECATION}:FutureWarning")

#: the decoding length limit every structmt decode uses: at most ``MAX_LEN_A * source length + MAX_LEN_B``
#: target tokens (fairseq-generate's --max-len-a / --max-len-b; fairseq's own defaults are 0 and 200). fairseq
#: takes the source length of a batch, its longest source: a hypothesis that reaches the limit can differ
#: between two batchings of the same sentences (structmt-translate's and fairseq-generate's)
MAX_LEN_A, MAX_LEN_B = 1.2, 10


def live_trainer(run_dir: Path) -> int | None:
    """The process id of a fairseq-train still training ``run_dir`` (its pipeline killed, itself not), else
    None: the process of ``trainer.pid``, written on this machine, if it runs with this folder's checkpoints
    as its ``--save-dir`` (read from ``/proc``, else from ``ps``; a process that cannot be read is not one)."""
    try:
        pid_text, _, host = RunFolder(run_dir).trainer_pid.read_text().strip().partition(" ")
        pid = int(pid_text)
    except (FileNotFoundError, ValueError):
        return None
    if host and host != socket.gethostname():  # another node's process: not to be seen from here
        return None
    cmdline = Path(f"/proc/{pid}/cmdline")
    try:
        if cmdline.parent.parent.is_dir():
            args = cmdline.read_bytes().decode(errors="replace").split("\0")
        else:
            found = subprocess.run(["ps", "-o", "args=", "-p", str(pid)], capture_output=True, text=True)
            args = found.stdout.split()
    except OSError:  # no such process, or no ps
        return None
    return pid if str(save_dir(run_dir)) in args else None


def save_dir(run_dir: Path) -> Path:
    """fairseq-train's ``--save-dir`` for ``run_dir``, resolved: how :func:`live_trainer` finds a trainer of it
    in a process list, however the runs folder was spelt."""
    return RunFolder(run_dir).checkpoints.resolve()


class StepError(RuntimeError):
    """A pipeline step failed; the message names the log to read and quotes its last line."""


def _run(cmd: list[str], log: Path, env: dict[str, str] | None = None, pid_file: Path | None = None) -> float:
    """Run ``cmd``, its output appended to ``log``; its process id is in ``pid_file`` while it runs."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        with subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env) as proc, child_process(proc):
            try:
                if pid_file is not None:
                    write_text_atomic(pid_file, f"{proc.pid} {socket.gethostname()}\n")
                code = proc.wait()
            except BaseException:  # as subprocess.run does: the child does not outlive an interrupted wait
                proc.kill()
                raise
            finally:
                if pid_file is not None:
                    pid_file.unlink(missing_ok=True)
    step = cmd[cmd.index("-m") + 1] if "-m" in cmd else cmd[0]  # fairseq_cli.train, after FAIRSEQ_PYTHON's flags
    if code < 0:  # killed by a signal: SLURM's preemption or scancel (SIGTERM), the OOM killer (SIGKILL), ...
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        raise StepError(
            f"{step} was stopped by {name} (preempted, cancelled, or out of memory?); see {log}. Run the same "
            "command again: what finished is skipped, and training resumes from its last checkpoint"
        )
    if code != 0:
        lines = [line for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
        raise StepError(f"{step} failed (exit {code}); see {log}, which ends: {lines[-1].strip()}")
    return time.time() - start


@contextmanager
def _watching(path: Path, on_text: Callable[[str], None], every: float = 1.0) -> Iterator[None]:
    """While the block runs, call ``on_text`` with the complete lines appended to ``path``
    (every ``every`` seconds, and once more at the end)."""
    start = path.stat().st_size if path.exists() else 0
    state = {"offset": start, "rest": b""}
    stop = threading.Event()

    def poll() -> None:
        try:
            with open(path, "rb") as f:
                f.seek(state["offset"])
                data = state["rest"] + f.read()
                state["offset"] = f.tell()
        except FileNotFoundError:
            return
        text, _, state["rest"] = data.rpartition(b"\n")
        if text:
            on_text(text.decode("utf-8", errors="replace"))

    def loop() -> None:
        while not stop.wait(every):
            poll()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
    poll()


_INNER = re.compile(r"\| train_inner \| epoch \d+:[\s\d/]*?(\w+=.*)$")  # epoch 001:  50 / 136 loss=12.4, …
_EPOCH = re.compile(r"\| train \| epoch \d+ \| (.*)$")  # epoch 001 | loss 10.551 | … | wall 219
_RESUMED = re.compile(r"Loaded checkpoint .* \(epoch \d+ @ (\d+) updates\)")


def log_records(text: str) -> Iterator[tuple[str, dict[str, float]]]:
    """The numeric records of a fairseq-train log (``--log-format simple``), in order: ``("train_inner",
    {"loss": …, "num_updates": …, …})`` every ``--log-interval`` updates, ``("train", {…})`` at each
    epoch's summary (also ``train_wall`` and ``wall``, the process's clock)."""
    for line in text.splitlines():
        if m := _INNER.search(line):
            kind, items, sep = "train_inner", m.group(1).split(", "), "="
        elif m := _EPOCH.search(line):
            kind, items, sep = "train", m.group(1).split(" | "), " "
        else:
            continue
        record = {}
        for item in items:
            key, _, value = item.strip().partition(sep)
            try:
                record[key] = float(value)
            except ValueError:
                continue
        yield kind, record


def training_curve(log: Path) -> list[dict[str, float]]:
    """The ``train_inner`` records of a fairseq-train log that have an update count, of the training that made
    the last checkpoint: the log is appended to, so where the count goes back (a run resumed from an earlier
    checkpoint, or trained again under its id) the records from that update on are those of the later process.
    ``wall`` (seconds since fairseq-train started) continues across a resume: where it goes back (a later
    process's clock), it is counted on from the last record kept before."""
    text = log.read_text(encoding="utf-8", errors="replace")
    curve: list[dict[str, float]] = []
    clock, offset = -1.0, 0.0  # the last record's own wall; what this process's wall is shifted by
    for kind, record in log_records(text):
        if kind == "train_inner" and "num_updates" in record:
            while curve and curve[-1]["num_updates"] >= record["num_updates"]:
                curve.pop()  # an abandoned attempt's records from this update on
            if "wall" in record:
                if record["wall"] < clock:  # another process: its clock started again
                    offset = curve[-1].get("wall", 0.0) if curve else 0.0
                clock = record["wall"]
                record["wall"] += offset
            curve.append(record)
    return curve


def _train_progress(label: str, max_update: int) -> Callable[[str], None]:
    """A reader of fairseq-train's log that says ``[run] 320/500 updates, loss 5.12, 2.3k tok/s, ETA 4 min``
    at every ``train_inner`` record and epoch summary (``--log-interval`` updates apart)."""
    last = {"updates": -1}

    def on_text(text: str) -> None:
        for line in text.splitlines():
            if m := _RESUMED.search(line):
                if int(m.group(1)) > 0:
                    say(f"{label} resumed at {m.group(1)}/{max_update} updates")
                continue
            record = next((r for _, r in log_records(line)), {})
            if any(k not in record for k in ("loss", "wps", "ups", "num_updates")):
                continue
            loss, wps, ups, updates = record["loss"], record["wps"], record["ups"], int(record["num_updates"])
            if updates <= last["updates"]:
                continue
            last["updates"] = updates
            speed = f"{wps / 1000:.1f}k" if wps >= 1000 else f"{wps:.0f}"
            line = f"{label} {updates}/{max_update or '?'} updates, loss {loss:.2f}, {speed} tok/s"
            if updates < max_update and ups > 0:
                eta = (max_update - updates) / ups
                line += f", ETA {eta / 60:.0f} min" if eta >= 90 else f", ETA {math.ceil(eta)} s"
            say(line)

    return on_text


@dataclass
class TrainResult:
    updates: int
    wall_seconds: float
    tokens_per_second: float
    checkpoint: Path


def train(
    bin_dir: Path,
    run_dir: Path,
    arch: str,
    args: list[str],
    env: dict[str, str] | None = None,
    carried: float | None = 0.0,
) -> TrainResult:
    """``fairseq-train`` into ``run_dir/checkpoints``; resumes from ``checkpoint_last.pt`` when present.
    ``carried``: as :func:`parse_train_log` takes it."""
    run = RunFolder(run_dir)
    cmd = [
        *FAIRSEQ_PYTHON,
        "-m",
        "fairseq_cli.train",
        str(bin_dir),
        "--user-dir",
        str(PLUGIN_DIR),
        "--arch",
        arch,
        "--save-dir",
        str(save_dir(run_dir)),
        "--log-format",
        "simple",
        *args,
    ]
    max_update = int(args[args.index("--max-update") + 1]) if "--max-update" in args else 0
    if (pid := live_trainer(run_dir)) is not None:
        raise StepError(
            f"fairseq-train (process {pid}) is still training {run_dir}: a pipeline that started it was killed "
            f"and left it running. Wait for it to end, or stop it (kill {pid}), then run again: the run resumes "
            f"from its last checkpoint (if process {pid} is not fairseq-train, delete {run.trainer_pid})"
        )
    with _watching(run.train_log, _train_progress(f"[{run_dir.name}]", max_update)):
        wall = _run(cmd, run.train_log, env, run.trainer_pid)
    return parse_train_log(run.train_log, run.last_checkpoint, wall, carried)


def parse_train_log(
    log: Path, checkpoint: Path, fallback_wall: float = 0.0, carried: float | None = 0.0
) -> TrainResult:
    """Updates and training tokens/s from fairseq's epoch summaries, and the wall-clock seconds of training.

    Summaries that added no update (a resumed run that was already finished)
    are ignored; tokens/s is weighted by each epoch's training time (fairseq
    logs it in whole seconds: where every epoch logged 0, under half a second
    each, the mean of their tokens/s). The
    wall-clock is fairseq's cumulative training time stored in ``checkpoint``
    (:func:`~structmt.checkpoints.training_seconds`) less ``carried``, the
    time fairseq carried over from the checkpoint a fine-tune started from.
    Without that time (or with ``carried=None``: not known), it is read from
    the log: fairseq's ``wall`` clock starts again in every process, so it is
    the sum of each process's clock at its last summary. (A process resumed
    within an epoch logs ``wall 0`` throughout: fairseq restores that clock
    stopped.)
    """
    from .checkpoints import training_seconds

    text = log.read_text(encoding="utf-8", errors="replace")
    updates, tokens, seconds, wall = 0, 0.0, 0.0, fallback_wall
    rates: list[float] = []
    earlier, clock = 0.0, 0.0  # wall-clock of the processes before this one; this process's clock
    for kind, r in log_records(text):
        if kind != "train" or any(k not in r for k in ("wps", "num_updates", "train_wall", "wall")):
            continue
        if int(r["num_updates"]) <= updates:
            continue
        updates = int(r["num_updates"])
        rates.append(r["wps"])
        tokens += r["wps"] * r["train_wall"]
        seconds += r["train_wall"]
        if r["wall"] < clock:  # a new process: a resumed run
            earlier += clock
        clock = r["wall"]
        wall = earlier + clock
    if carried is not None and (total := training_seconds(checkpoint)) is not None:
        wall = total - carried
    return TrainResult(
        updates=updates,
        wall_seconds=wall,
        tokens_per_second=tokens / seconds if seconds else sum(rates) / len(rates) if rates else 0.0,
        checkpoint=checkpoint,
    )


def parse_param_count(log: Path) -> int:
    """The model's parameter count as fairseq-train logs it (0 when the log has none)."""
    found = re.findall(r"num\. shared model params: ([\d,]+)", log.read_text(encoding="utf-8", errors="replace"))
    return int(found[-1].replace(",", "")) if found else 0


def _sentences(bin_dir: Path, subset: str) -> int:
    """The number of sentences of a binarized ``subset`` (0 when ``bin_dir`` has none)."""
    from fairseq.data.indexed_dataset import MMapIndexedDataset

    index = next(iter(sorted(bin_dir.glob(f"{subset}.*-*.*.idx"))), None)
    return len(MMapIndexedDataset(str(index.with_suffix("")))) if index else 0


def _first(ids: list[int], shown: int = 5) -> str:
    return ", ".join(map(str, ids[:shown])) + (" …" if len(ids) > shown else "") if ids else "none"


def decode(
    bin_dir: Path,
    checkpoint: Path,
    subset: str,
    out: Path,
    *,
    beam: int = 5,
    lenpen: float = 1.0,
    batch_size: int = 128,
    log: Path | None = None,
) -> Path:
    """Beam-search ``subset`` and write detokenized hypotheses in the original order
    (fairseq's ``--remove-bpe sentencepiece`` undoes the run's SentencePiece pieces).

    Says ``[<out's folder>] <out's stem>: N/M sentences`` while it runs."""
    raw = out.with_suffix(out.suffix + ".fairseq")
    results = raw / f"generate-{subset}.txt"
    results.unlink(missing_ok=True)  # a file of an earlier attempt would count as progress
    cmd = [
        *FAIRSEQ_PYTHON,
        "-m",
        "fairseq_cli.generate",
        str(bin_dir),
        "--user-dir",
        str(PLUGIN_DIR),
        "--path",
        str(checkpoint),
        "--gen-subset",
        subset,
        "--beam",
        str(beam),
        "--lenpen",
        str(lenpen),
        "--batch-size",
        str(batch_size),
        "--max-len-a",
        str(MAX_LEN_A),
        "--max-len-b",
        str(MAX_LEN_B),
        "--remove-bpe",
        "sentencepiece",
        # fairseq-fixed drops a final batch whose size is not a multiple of this (default 8)
        "--required-batch-size-multiple",
        "1",
        "--results-path",
        str(raw),
    ]
    total, done = _sentences(bin_dir, subset), [0, time.time()]

    def on_text(text: str) -> None:  # fairseq writes the results file line by line: count the sources
        done[0] += len(re.findall(r"^S-\d+\t", text, flags=re.M))
        if time.time() - done[1] >= 5 and done[0] < total:
            done[1] = time.time()
            say(f"[{out.parent.name}] {out.stem}: {done[0]}/{total} sentences")

    with _watching(results, on_text):
        _run(cmd, log or out.with_suffix(".log"))
    if total:
        say(f"[{out.parent.name}] {out.stem}: {done[0]}/{total} sentences")
    hyps = hypotheses(results.read_text(encoding="utf-8"), total, f"{raw}", subset)
    with atomic_path(out) as tmp:
        tmp.write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
    return out


def hypotheses(text: str, total: int, where: str, subset: str) -> list[str]:
    """The hypotheses of fairseq-generate's output ``text`` in sentence order (``total`` sentences; 0: as many as
    there are). A source with no token (a blank line) gets a blank hypothesis, as structmt-translate gives it:
    fairseq would decode end-of-sentence alone into words."""
    hyps = {int(i): h for i, h in re.findall(r"^D-(\d+)\t[^\t]*\t(.*)$", text, flags=re.M)}
    sources = {int(i): s for i, s in re.findall(r"^S-(\d+)\t(.*)$", text, flags=re.M)}
    if len(hyps) != len(sources):
        raise StepError(f"{where}: {len(sources)} sources but {len(hyps)} hypotheses")
    expected = total or len(hyps)  # the subset's sentences, one hypothesis each, in id order
    if sorted(hyps) != list(range(expected)):
        missing = [i for i in range(expected) if i not in hyps]
        beyond = [i for i in sorted(hyps) if i >= expected]
        raise StepError(
            f"{where}: {len(hyps)} hypotheses for the {expected} sentences of {subset} (ids 0 to {expected - 1}); "
            f"without a hypothesis: {_first(missing)}; ids beyond them: {_first(beyond)}; decode it again"
        )
    return [hyps[i] if sources.get(i, "").strip() else "" for i in range(expected)]
