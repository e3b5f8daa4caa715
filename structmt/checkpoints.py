"""Safe checkpoint loading on torch >= 2.6 (``weights_only=True`` stays on).

fairseq checkpoints pickle a few non-tensor objects (the argparse namespace
or omegaconf config, and some plain containers).  Only those classes are
allowlisted; torch's safety is never turned off.
"""

from __future__ import annotations

import argparse

import torch


def _checkpoint_classes() -> list[object]:
    classes: list[object] = [argparse.Namespace]
    return classes


def allow_fairseq_checkpoints() -> None:
    """Allowlist the classes fairseq checkpoints need for ``torch.load(weights_only=True)``."""
    torch.serialization.add_safe_globals(_checkpoint_classes())
