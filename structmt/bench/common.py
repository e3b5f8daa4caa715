"""What every ``structmt-bench`` command shares: option types that refuse bad input before anything
is measured, the order in which compared models take turns, and how a ratio is printed beside
its verdict."""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from ..attention.options import StructureConfig
from ..console import add_verbose_option
from ..files import file_above, int_at_least
from ..paths import REPO_ROOT

T = TypeVar("T")


def command_parser(command: str, description: str | None, **kwargs: Any) -> argparse.ArgumentParser:
    """The parser of ``structmt-bench COMMAND``: named so in its usage and error lines, with the
    ``-v/--verbose`` of every entry point (give what it parsed to :func:`structmt.console.setup`)."""
    parser = argparse.ArgumentParser(prog=f"structmt-bench {command}", description=description, **kwargs)
    add_verbose_option(parser)
    return parser


def command_line(command: str, argv: Sequence[str] | None) -> str:
    """``structmt-bench COMMAND ARGS`` as typed (``argv``, else the process's own), quoted for a shell: the
    ``command`` every benchmark JSON records."""
    return f"structmt-bench {command} " + shlex.join(str(x) for x in (sys.argv[1:] if argv is None else argv))


def add_old_name(parser: argparse.ArgumentParser, old: str, option: argparse.Action) -> None:
    """Accept ``old``, the former name of ``option``, so that recorded commands keep working: hidden from
    ``--help``, it does what ``option`` does and warns on stderr that it is deprecated."""
    new = option.option_strings[0]

    class OldName(argparse.Action):
        def __call__(self, p: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, _: Any = None):
            print(f"{p.prog}: warning: {old} is deprecated; it is {new} now", file=sys.stderr)
            option(p, namespace, values, new)

    parser.add_argument(
        old, action=OldName, dest=option.dest, nargs=option.nargs, type=option.type, choices=option.choices,
        metavar=option.metavar, default=argparse.SUPPRESS, help=argparse.SUPPRESS,
    )  # fmt: skip


def replaces(default: Path, what: str = "the committed result") -> str:
    """The end of the help line of an output option whose ``default``, under ``results/``, replaces ``what``."""
    shown = default.relative_to(REPO_ROOT)
    return f"(default: {shown}; a run replaces {what} there; give a path under runs/ for a trial run)"


def positive_float(value: str) -> float:
    """argparse type of a finite number > 0."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not (math.isfinite(number) and number > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {value}")
    return number


def positive_ints(value: str) -> list[int]:
    """argparse type: a non-empty comma-separated list of distinct positive integers (``--lengths 128,1024``;
    a number given twice would be measured twice and one result kept)."""
    items = value.split(",")
    numbers = []
    for item in items:
        try:
            number = int(item)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{value!r}: expected positive integers separated by commas, {item.strip()!r} is not an integer"
            ) from None
        if number < 1:
            raise argparse.ArgumentTypeError(f"{value!r}: every number must be >= 1, got {number}")
        if number in numbers:
            raise argparse.ArgumentTypeError(f"{value!r}: {number} is given twice; give each number once")
        numbers.append(number)
    return numbers


def names_from(known: Sequence[str]) -> Callable[[str], list[str]]:
    """argparse type: a non-empty comma-separated list of names from ``known``, each at most once."""

    def parse(value: str) -> list[str]:
        names = value.split(",")
        if "" in names:
            raise argparse.ArgumentTypeError(f"{value!r}: expected names separated by commas, from {', '.join(known)}")
        unknown = [n for n in names if n not in known]
        if unknown:
            raise argparse.ArgumentTypeError(
                f"{value!r}: unknown {', '.join(repr(n) for n in unknown)}; choose from {', '.join(known)}"
            )
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise argparse.ArgumentTypeError(f"{value!r}: {', '.join(repeated)} given more than once")
        return names

    return parse


#: the attention benchmarks' heads unless --heads says otherwise (and the launch structmt-bench compile compiles for)
HEADS = 8


def add_shape_options(p: argparse.ArgumentParser, tokens: int) -> None:
    """The attention benchmarks' shape: ``--tokens`` per batch (held constant), ``--heads``, ``--dim`` and the
    structure's ``--window`` and ``--rare`` (their defaults: the plugin's)."""
    p.add_argument(
        "--tokens", type=int_at_least(1), default=tokens, help=f"tokens per batch, held constant (default: {tokens})"
    )
    p.add_argument("--heads", type=int_at_least(1), default=HEADS, help=f"attention heads (default: {HEADS})")
    p.add_argument("--dim", type=int_at_least(1), default=64, help="size of each head (default: 64)")
    p.add_argument(
        "--window", type=int_at_least(0), default=StructureConfig.struct_window, help="band half-width w of every head"
    )
    p.add_argument(
        "--rare", type=int_at_least(0), default=StructureConfig.struct_rare, help="rare columns r, seen by every head"
    )


def output_file(value: str) -> Path:
    """argparse type of ``--out``: a path a file can be written at (not a folder, no file among the folders above
    it), checked before anything is measured, so a run's measurement is never lost at the end."""
    path = Path(value).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{value}: a folder; give a file name in it")
    if blocking := file_above(path):
        raise argparse.ArgumentTypeError(f"{value}: {blocking} is a file, not a folder")
    written = [output_path(path, suffix) for suffix in (".json", ".png")]  # what the commands write
    if folder := next((w for w in written if w.is_dir()), None):
        raise argparse.ArgumentTypeError(
            f"{value}: the result would be written to {folder}, a folder; give another name"
        )
    return path


def output_path(out: Path, suffix: str) -> Path:
    """``OUT.suffix`` of an ``--out OUT`` given with or without a suffix of its own: a dot inside the name
    (``trial_w3.r2``) is kept, not taken for a suffix to replace."""
    return out.with_suffix(suffix) if out.suffix in (".json", ".png") else out.with_name(out.name + suffix)


def check_lengths(p: argparse.ArgumentParser, lengths: Sequence[int], tokens: int) -> None:
    """Every T of ``--lengths`` divides ``--tokens``: each T then runs ``tokens / T`` sequences, the same tokens per
    batch at every T, as the reports say (a T that does not would run fewer, or one sequence of more)."""
    bad = [t for t in lengths if tokens % t]
    if bad:
        p.error(
            f"--lengths {','.join(map(str, bad))}: each T must divide --tokens {tokens}, so that every T runs "
            f"{tokens} tokens per batch (tokens / T sequences of T)"
        )


def side_by_side(names: Sequence[str], rounds: int, measure: Callable[[str, bool], T]) -> list[dict[str, T]]:
    """``rounds`` rounds of ``measure(name, False)`` for every name, after one untimed warm-up
    ``measure(name, True)`` of each (its result is dropped).  The order alternates: names as given in
    even rounds (0, 2, ...), reversed in odd ones, so no model is always the one that runs first.
    Each round's dict lists the names in the order they ran."""
    for name in names:
        measure(name, True)
    out = []
    for i in range(rounds):
        order = list(names) if i % 2 == 0 else list(names)[::-1]
        out.append({name: measure(name, False) for name in order})
    return out


def verdict_number(value: float, target: float, at_least: bool, decimals: int = 2) -> str:
    """``value`` with ``decimals`` decimals, or more where that rounding would land on the other side
    of ``target`` than ``value`` itself (0.997 against ≥ 1.0 prints ``0.997``, not ``1.00``), so the
    printed number never seems to contradict the verdict decided on the unrounded value."""
    if not math.isfinite(value):
        return f"{value}"
    met = value >= target if at_least else value <= target
    text = f"{value:.{decimals}f}"
    while (float(text) >= target if at_least else float(text) <= target) != met and decimals < 17:
        decimals += 1
        text = f"{value:.{decimals}f}"
    return text


def flatness(per_token: dict[int, float | None], span: tuple[int, int]) -> float | None:
    """Max / min of the peak memory per token (``T`` → value, None where not measured) over the ``T``
    within ``span``; None unless both ends of the span were measured (a flatness over part of the span
    would claim more than was seen).  A peak of 0 is a measurement, not a gap: beside a non-zero one the
    ratio is infinite (not flat); 0 everywhere is flat (1.0)."""
    seen = {t: v for t, v in per_token.items() if span[0] <= t <= span[1] and v is not None}
    if span[0] not in seen or span[1] not in seen:
        return None
    low, high = min(seen.values()), max(seen.values())
    if high == 0:
        return 1.0
    return high / low if low > 0 else math.inf


def goal(what: str, value: float | None, target: float, at_least: bool) -> dict[str, Any]:
    """One goal row of an attention benchmark: ``value`` (None: not measured, never met) against
    ``target`` (``at_least``: ≥, else ≤)."""
    met = value is not None and (value >= target if at_least else value <= target)
    return {"goal": what, "measured": value, "target": ("≥ " if at_least else "≤ ") + f"{target:g}", "met": met}


def per_1k_tokens_mib(row: dict[str, Any], key: str) -> float | None:
    """Peak memory ``row[key]`` (bytes) in MiB per 1000 tokens of the batch (None: not measured)."""
    peak = row.get(key)
    return peak / 2**20 / (row["T"] * row["batch"] / 1000) if peak is not None and peak >= 0 else None


def no_cuda_message(command: str, available: bool | None = None) -> str | None:
    """The one-line reason ``structmt-bench COMMAND --device cuda`` cannot run here, or None when a
    CUDA device is there (``available``: the answer of ``torch.cuda.is_available()``, asked when None)."""
    if available is None:
        available = torch.cuda.is_available()
    if available:
        return None
    why = (
        f"torch {torch.__version__} is a CPU-only build"
        if torch.version.cuda is None
        else f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU"
    )
    return f"no CUDA device: {why}; `structmt-bench {command} --device cuda` measures a GPU, run it on a GPU machine"


def require_cuda(command: str) -> None:
    """Exit with :func:`no_cuda_message` (status 1, one line on stderr, no traceback) without a GPU."""
    message = no_cuda_message(command)
    if message is not None:
        sys.exit(f"error: {message}")  # as every other command's errors


def goal_table(goals: list[dict]) -> list[str]:
    """The markdown lines of the goal table of an attention benchmark (``goals`` as its ``goals()`` returns them)."""
    verdicts = ["–" if g["measured"] is None else "yes" if g["met"] else "no" for g in goals]
    rows = [f"| {g['goal']} | {goal_cell(g)} | {g['target']} | {v} |" for g, v in zip(goals, verdicts, strict=True)]
    return ["| goal | measured | target | met |", "|---|---|---|---|", *rows]


def goal_cell(goal: dict) -> str:
    """The "measured" cell of a goal row (``{"measured": value or None, "target": "≥ 10" or "≤ 1.2"}``,
    as the attention benchmarks' ``goals`` write them), printed with :func:`verdict_number`."""
    if goal["measured"] is None:
        return "not measured"
    sign, _, target = goal["target"].partition(" ")
    return verdict_number(goal["measured"], float(target), sign == "≥")
