"""Idempotent data stages: content hashes of their inputs and the stamps that record them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..files import write_text_atomic


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
