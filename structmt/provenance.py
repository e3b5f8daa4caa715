"""Where a result comes from: the commit of the code and the machine that produced it."""

from __future__ import annotations

import functools
import platform
import subprocess
from pathlib import Path

from .paths import REPO_ROOT

#: the code a result depends on: an untracked file there (a new module, a config) changes what runs
CODE = ("structmt", "conf", "scripts", "setup.py", "pyproject.toml", "constraints.txt", "Makefile")


def _git(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    # --no-optional-locks: a status from a sweep's jobs never holds the index lock a user's commit needs
    return subprocess.run(
        ["git", "--no-optional-locks", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=check
    )


def _untracked_code() -> str:
    """The untracked files among the code (:data:`CODE`), ignored ones aside; "" when there are none."""
    return _git("ls-files", "--others", "--exclude-standard", "--", *CODE).stdout.strip()


def read_commit() -> str:
    """The checkout's commit now: ``+dirty`` if tracked files outside ``results/`` differ from it or untracked
    files lie among the code (:data:`CODE`, ignored files aside); ``unknown`` without git or a repository."""
    try:
        top = Path(_git("rev-parse", "--show-toplevel").stdout.strip()).resolve()
        if top != REPO_ROOT.resolve():  # a copy without .git inside another repository: not this code's commit
            return "unknown"
        sha = _git("rev-parse", "HEAD").stdout.strip()
        changed = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results").stdout
        added = _untracked_code()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("+dirty" if changed.strip() or added else "")


def why_unknown() -> str:
    """What git says when :func:`read_commit` is ``unknown`` (its first line of error, or why)."""
    try:
        found = _git("rev-parse", "--show-toplevel", check=False)
    except OSError as err:
        return f"git cannot run ({err})"
    if found.returncode:
        return (found.stderr.strip().splitlines() or ["git rev-parse failed"])[0]
    top = found.stdout.strip()
    if Path(top).resolve() != REPO_ROOT.resolve():
        return f"{REPO_ROOT} lies inside the repository {top}, not one of its own"
    head = _git("rev-parse", "HEAD", check=False)
    return (head.stderr.strip().splitlines() or ["git status failed"])[0]


def _code_differs(sha: str) -> bool | None:
    """Whether the checkout's code (:data:`CODE`) differs from commit ``sha``'s, untracked files included;
    None when git cannot tell."""
    try:
        diff = _git("diff", "--quiet", sha, "--", *CODE, check=False).returncode
        added = _untracked_code()
    except (OSError, subprocess.CalledProcessError):
        return None
    return None if diff not in (0, 1) else diff == 1 or bool(added)


@functools.cache
def _first_commit() -> str:
    return read_commit()


def git_commit() -> str:
    """The commit of the code this process runs: the checkout's at this function's first call (runs and
    benchmarks call it when they start; the process's own modules were read then), with ``+dirty`` if the
    checkout differed from it (:func:`read_commit`) or its code differs now (another commit's, or edits):
    fairseq's processes (training, decoding) read the plugin from the checkout, so a result after such a
    change ran the code of no single commit. ``unknown`` where git cannot tell."""
    first = _first_commit()
    if first == "unknown" or first.endswith("+dirty"):
        return first
    differs = _code_differs(first)
    return "unknown" if differs is None else first + "+dirty" if differs else first


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
