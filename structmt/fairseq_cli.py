"""fairseq's command-line tools with the structmt plugin: ``fairseq-train`` (and what its
log says) and ``fairseq-generate``, used by the pipeline and the benchmarks.

Every step runs fairseq as a subprocess with an argument list (never a
shell), logs to the run folder, and writes its outputs atomically.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .files import atomic_path
from .paths import PLUGIN_DIR


class StepError(RuntimeError):
    """A pipeline step failed; the message names the log to read."""


def _run(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> float:
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    if code != 0:
        tail = "".join(log.read_text(encoding="utf-8", errors="replace").splitlines(True)[-15:])
        raise StepError(f"{cmd[2]} failed (exit {code}); see {log}:\n{tail}")
    return time.time() - start


@dataclass
class TrainResult:
    updates: int
    wall_seconds: float
    tokens_per_second: float
    checkpoint: Path


def train(bin_dir: Path, run_dir: Path, arch: str, args: list[str], env: dict[str, str] | None = None) -> TrainResult:
    """``fairseq-train`` into ``run_dir/checkpoints``; resumes from ``checkpoint_last.pt`` when present."""
    cmd = [
        sys.executable,
        "-m",
        "fairseq_cli.train",
        str(bin_dir),
        "--user-dir",
        str(PLUGIN_DIR),
        "--arch",
        arch,
        "--save-dir",
        str(run_dir / "checkpoints"),
        "--log-format",
        "simple",
        *args,
    ]
    wall = _run(cmd, run_dir / "train.log", env)
    return parse_train_log(run_dir / "train.log", run_dir / "checkpoints" / "checkpoint_last.pt", wall)


def parse_train_log(log: Path, checkpoint: Path, fallback_wall: float = 0.0) -> TrainResult:
    """Updates, cumulative wall-clock and training tokens/s from fairseq's epoch summaries.

    Summaries that added no update (a resumed run that was already finished)
    are ignored; tokens/s is weighted by each epoch's training time.
    """
    text = log.read_text(encoding="utf-8", errors="replace")
    pattern = r"\| train \| epoch \d+ \|.*?\| wps ([\d.]+) .*?\| num_updates (\d+) .*?\| train_wall (\d+) \| wall (\d+)"
    updates, tokens, seconds, wall = 0, 0.0, 0.0, fallback_wall
    for wps, num_updates, train_wall, wall_clock in re.findall(pattern, text):
        if int(num_updates) <= updates:
            continue
        updates = int(num_updates)
        tokens += float(wps) * float(train_wall)
        seconds += float(train_wall)
        wall = float(wall_clock)
    return TrainResult(
        updates=updates,
        wall_seconds=wall,
        tokens_per_second=tokens / seconds if seconds else 0.0,
        checkpoint=checkpoint,
    )


def parse_param_count(log: Path) -> int:
    """The model's parameter count as fairseq-train logs it (0 when the log has none)."""
    found = re.findall(r"num\. shared model params: ([\d,]+)", log.read_text(encoding="utf-8", errors="replace"))
    return int(found[-1].replace(",", "")) if found else 0


def decode(
    bin_dir: Path,
    checkpoint: Path,
    subset: str,
    out: Path,
    *,
    beam: int = 5,
    batch_size: int = 128,
    log: Path | None = None,
) -> Path:
    """Beam-search ``subset`` and write detokenized hypotheses in the original order
    (fairseq's ``--remove-bpe sentencepiece`` undoes the run's SentencePiece pieces)."""
    raw = out.with_suffix(out.suffix + ".fairseq")
    cmd = [
        sys.executable,
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
        "--batch-size",
        str(batch_size),
        "--max-len-a",
        "1.2",
        "--max-len-b",
        "10",
        "--remove-bpe",
        "sentencepiece",
        # fairseq-fixed drops a final batch whose size is not a multiple of this (default 8)
        "--required-batch-size-multiple",
        "1",
        "--results-path",
        str(raw),
    ]
    _run(cmd, log or out.with_suffix(".log"))
    text = (raw / f"generate-{subset}.txt").read_text(encoding="utf-8")
    hyps = {int(i): h for i, h in re.findall(r"^D-(\d+)\t[^\t]*\t(.*)$", text, flags=re.M)}
    src_count = len(re.findall(r"^S-\d+\t", text, flags=re.M))
    if len(hyps) != src_count:
        raise StepError(f"{raw}: {src_count} sources but {len(hyps)} hypotheses")
    with atomic_path(out) as tmp:
        tmp.write_text("".join(hyps[i] + "\n" for i in range(len(hyps))), encoding="utf-8")
    return out
