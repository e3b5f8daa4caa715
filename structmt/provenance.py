"""Where a result comes from: the commit of the code and the machine that produced it."""

from __future__ import annotations

import functools
import platform
import subprocess
from pathlib import Path

from .paths import REPO_ROOT


@functools.cache
def git_commit() -> str:
    """The commit of the code this process runs (read once, at its first use: runs and benchmarks call it
    when they start); ``+dirty`` if tracked files outside ``results/`` differ from it."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@functools.cache
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or ``platform.processor()`` where there is none."""
    try:
        return next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def cpu_capability() -> str:
    """The instruction set torch's CPU kernels run with here (``AVX512``, ``AVX2``, ``DEFAULT``…): two CPUs with
    one model name can differ in it, and so in float results."""
    import torch

    return torch.backends.cpu.get_cpu_capability()


def machine_label() -> str:
    """The CPU with the instruction set torch's kernels use on it and, where fairseq would use one, the GPU:
    what a leaderboard row or a ``train.json`` names (e.g. ``AMD EPYC (AVX512)``)."""
    import torch

    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu_model()} ({cpu_capability()}){gpu}"


def machine() -> dict[str, str]:
    """CPU model, torch threads and versions, and :func:`git_commit`, as benchmarks and analyses record them."""
    import torch

    return {
        "cpu": cpu_model(),
        "cpu_capability": cpu_capability(),
        "threads": str(torch.get_num_threads()),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "commit": git_commit(),
    }
