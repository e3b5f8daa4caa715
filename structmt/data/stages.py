"""Idempotent data stages: content hashes of their inputs and the stamps that record them."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
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

    :meth:`ensure` removes the old stamp before it rebuilds anything and writes the new one last, after
    all outputs: a stage interrupted part-way has no stamp, so the next run rebuilds it whatever its
    settings (an old stamp left in place would vouch for outputs half rewritten under other settings).
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

    def ensure(self, build: Callable[[], None]) -> bool:
        """Run ``build`` (which writes the outputs) unless the stage is done; True when it ran."""
        if self.done():
            return False
        self.stamp.unlink(missing_ok=True)
        build()
        write_text_atomic(self.stamp, self.key + "\n")
        return True
