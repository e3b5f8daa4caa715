"""Small file helpers shared by every stage: atomic writes, hashing, stamps."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def existing_file(value: str) -> Path:
    """argparse type for a path option that must be a file (argparse names the option on error)."""
    p = Path(value).expanduser()
    if not p.is_file():
        raise argparse.ArgumentTypeError(f"{value}: no such file")
    return p


def existing_dir(value: str) -> Path:
    """argparse type for a path option that must be a folder."""
    p = Path(value).expanduser()
    if not p.is_dir():
        raise argparse.ArgumentTypeError(f"{value}: no such folder")
    return p


#: characters that Python's ``str.splitlines`` and text-mode files treat as line ends, besides "\n"
_INNER_BREAKS = str.maketrans(dict.fromkeys("\r\v\f\x1c\x1d\x1e\x85\u2028\u2029", " "))


def text_lines(text: str) -> tuple[list[str], int]:
    """Split ``text`` on "\n" only (a final "\r" is dropped) and replace other line-break
    characters inside a line by spaces, so every later tool sees the same lines.
    Returns the lines and how many of them had such characters."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    out, changed = [], 0
    for line in lines:
        line = line.removesuffix("\r")
        fixed = line.translate(_INNER_BREAKS)
        changed += fixed != line
        out.append(fixed)
    return out, changed


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fingerprint(settings: dict[str, Any], inputs: list[Path]) -> str:
    """Hash of a stage's settings and the contents of its inputs."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for p in inputs:
        h.update(p.name.encode())
        h.update(sha256_file(p).encode())
    return h.hexdigest()


class Stage:
    """An idempotent stage: skipped when its stamp matches its settings and inputs.

    The stamp (``<out_dir>/.<name>.stamp``) is written last, after all outputs,
    so an interrupted stage is rebuilt on the next run.
    """

    def __init__(self, name: str, out_dir: Path, settings: dict[str, Any], inputs: list[Path], outputs: list[Path]):
        self.name, self.out_dir = name, out_dir
        self.outputs = outputs
        self.stamp = out_dir / f".{name}.stamp"
        self.key = fingerprint(settings, inputs)

    def done(self) -> bool:
        return (
            self.stamp.exists() and self.stamp.read_text().strip() == self.key and all(p.exists() for p in self.outputs)
        )

    def finish(self) -> None:
        write_text_atomic(self.stamp, self.key + "\n")
