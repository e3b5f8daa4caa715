"""``structmt-bench attention --device cuda [--dtype bfloat16]``: forward and forward+backward time
and peak GPU memory of SDPA (flash backend), compiled FlexAttention, structmt's Triton kernel and
its gather path, side by side in one process on the same inputs, against the HBM traffic floor.

The implementations (``--impls``):

* ``sdpa_flash``: dense attention, ``F.scaled_dot_product_attention`` restricted to the flash
  backend (``sdpa_kernel(SDPBackend.FLASH_ATTENTION)``); the ``O(T²)`` baseline.
* ``flex``: ``torch.compile(flex_attention)`` with a BlockMask of the SAME structured support
  (``self_attention_plan(bench_structure(...), ...).supports.mask_mod()``). The BlockMask is built once per length
  for the timed steps; its construction, which a training step pays for every batch (the rare
  columns change with the batch), is timed separately (``flex_mask_s``: the supports of a fresh
  rare index and ``torch.compile(create_block_mask)``, falling back to the eager
  ``create_block_mask`` where that fails: ``flex_mask_how``).
* ``triton``: ``structured_attention(..., impl="triton")``: the whole call, with the candidate
  positions and kinds it derives from the structure on every call.
* ``triton_kernel``: the Triton custom op alone (``triton_kernel.candidate_attention``) on
  candidate positions and kinds computed once: the part the traffic floor describes.
* ``gather``: ``structured_attention(..., impl="efficient")`` with the Triton kernel forced off
  (so the gathered ``(B, T, C, H, D)`` copies of the keys and values and einsums run).

Modes (``--modes``): ``fwd`` (forward under ``torch.no_grad``) and ``fb`` (forward, then
``backward`` of a fixed random output gradient; the input gradients are freed after each step).

Timing: CUDA events around each step after ``--warmup`` steps (compilation included there), the
median of ``--repeats``. Peak memory: ``torch.cuda.max_memory_allocated`` after
``reset_peak_memory_stats`` over one more step, minus the memory allocated before it (the inputs),
per (implementation, mode, T). The traffic floor: :func:`traffic_floor_bytes` over the
device-to-device copy bandwidth measured in the same run (:func:`copy_bandwidth`).

The JSON is rewritten (atomically) after every length, with ``"complete": false`` until the last:
a run stopped at a time limit keeps the lengths it finished. Each printed row ends with the clock
time, so a log shows where the time went. ``--from-log`` rebuilds a record from such printed rows
(a run stopped before it wrote any JSON): no copy bandwidth, so no traffic floor; every value of
one length comes from one run (the last that printed it), never from two.
"""

from __future__ import annotations

import functools
import gc
import itertools
import json
import math
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from ..attention.structure import Structure
from ..console import setup
from ..files import int_at_least, write_text_atomic
from ..paths import RESULTS_DIR
from .common import (
    add_shape_options,
    check_lengths,
    command_line,
    command_parser,
    flatness,
    goal,
    goal_table,
    names_from,
    output_file,
    output_path,
    per_1k_tokens_mib,
    positive_ints,
    replaces,
    require_cuda,
)
from .workload import bench_structure, candidates_at, compiled_flex, median_time, raise_recompile_limits
from .workload import inputs as cpu_inputs

GPU_IMPLS = ("sdpa_flash", "flex", "triton", "triton_kernel", "gather")
MODES = ("fwd", "fb")
LABELS = {
    "sdpa_flash": "SDPA flash",
    "flex": "Flex",
    "triton": "structmt Triton",
    "triton_kernel": "Triton kernel alone",
    "gather": "structmt gather",
}
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
DEFAULT_LENGTHS = "128,256,512,1024,2048,4096,8192,16384,32768"
#: the goals' lengths (issue #13): speed-ups at GOAL_T, the short-sequence check at SHORT_T, flat memory over FLAT_T
GOAL_T, SHORT_T, FLAT_T = 16384, 128, (1024, 32768)
DEFAULT_OUT = RESULTS_DIR / "bench_attention_cuda.json"


# --------------------------------------------------------------------------------------------------
# no GPU
# --------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------
# arithmetic: traffic floor, goals, table (pure functions of the rows)
# --------------------------------------------------------------------------------------------------


def traffic_floor_bytes(
    batch: int,
    heads: int,
    length: int,
    dim: int,
    candidates: int,
    elem_bytes: int,
    index_bytes: int = 8,
    kind_bytes: int = 1,
) -> dict[str, int]:
    """The HBM traffic floor of candidate attention: bytes a kernel must move at least, forward
    (``"fwd"``) and forward+backward (``"fb"``), if every tensor crosses HBM exactly once.

    With ``X = batch * heads * length * dim * elem_bytes`` (one of q, k, v, out, their gradients)
    and ``M = batch * length * candidates * index_bytes + batch * heads * length * candidates * kind_bytes``
    (the candidate positions ``(B, T, C)`` int64, shared by the heads, and the kinds ``(B, H, T, C)`` int8):

    * forward: read q, k, v, write out, read positions and kinds: ``4 X + M``;
    * backward: read q, k, v and the output gradient, write dq, dk, dv, read positions and kinds
      again: ``7 X + M``; forward+backward ``11 X + 2 M``.

    Not counted, since a kernel need not move them: the candidate weights ``(B, H, T, C)`` the
    forward kernel also writes, the reuse of a key by the ``C`` queries that see it beyond its
    first read (caches absorb it at best), and the fp32 ``dk, dv`` accumulators of the backward.
    The floor in seconds is these bytes over the copy bandwidth measured in the same run."""
    x = batch * heads * length * dim * elem_bytes
    meta = batch * length * candidates * index_bytes + batch * heads * length * candidates * kind_bytes
    forward = 4 * x + meta
    return {"fwd": forward, "fb": forward + 7 * x + meta}


def _ratio(row: dict[str, Any] | None, num: str | tuple[str, ...], den: str) -> float | None:
    """``sum(row[num]) / row[den]``, or None when one of them was not measured."""
    nums = (num,) if isinstance(num, str) else num
    if row is None or den not in row or any(n not in row for n in nums) or not row[den]:
        return None
    return sum(row[n] for n in nums) / row[den]


def flat_memory(rows: list[dict[str, Any]], key: str = "triton_fb_peak_bytes", span: tuple[int, int] = FLAT_T):
    """Max / min over T in ``span`` of the peak memory per token; None unless both ends of the
    span were measured (:func:`~structmt.bench.common.flatness`)."""
    return flatness({r["T"]: per_1k_tokens_mib(r, key) for r in rows}, span)


def goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's GPU goals, each ``{goal, measured, target, met}``, from this run's rows; a goal
    whose measurements are missing has ``measured: None, met: False``. Speed goals are ratios of
    times (``other / structmt``: how many times faster structmt is); structmt is ``triton``."""
    rows = results["rows"]
    by_t = {r["T"]: r for r in rows}
    at, short = by_t.get(GOAL_T), by_t.get(SHORT_T)
    t = f"T={GOAL_T} f+b"
    return [
        goal(f"{t}: SDPA flash / structmt Triton", _ratio(at, "sdpa_flash_fb_s", "triton_fb_s"), 10, True),
        goal(
            f"{t}: (Flex + its BlockMask build) / structmt Triton",
            _ratio(at, ("flex_fb_s", "flex_mask_s"), "triton_fb_s"),
            2,
            True,
        ),
        goal(f"{t}: Flex (BlockMask prebuilt) / structmt Triton", _ratio(at, "flex_fb_s", "triton_fb_s"), 1.2, True),
        goal(f"{t}: structmt Triton / HBM traffic floor", _ratio(at, "triton_fb_s", "floor_fb_s"), 3, False),
        goal(
            f"T={SHORT_T} f+b: SDPA flash / structmt Triton", _ratio(short, "sdpa_flash_fb_s", "triton_fb_s"), 0.8, True
        ),
        goal(
            f"structmt Triton f+b peak memory per token, max / min over T = {FLAT_T[0]}…{FLAT_T[1]}",
            flat_memory(rows),
            1.2,
            False,
        ),
    ]


def _ms(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.3g}"


def table(results: dict[str, Any]) -> str:
    """The GPU rows and goals as markdown: times in ms (``fwd / f+b``), ratios of f+b times, peak
    MiB per 1000 tokens (f+b); a failed measurement shows as ``fail`` and is listed below."""
    impls = [
        i for i in GPU_IMPLS if any(f"{i}_{m}_s" in r or f"{i}_{m}_error" in r for r in results["rows"] for m in MODES)
    ]
    head = ["T", "batch"] + [f"{LABELS[i]} ms" for i in impls] + ["BlockMask build ms", "traffic floor ms"]
    head += ["SDPA / Triton", "(Flex + mask) / Triton", "Flex / Triton", "Triton / floor"]
    head += [f"MiB/1k tok: {LABELS[i]}" for i in impls]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def ms(row: dict[str, Any], key: str) -> str:
        if f"{key}_error" in row:
            return "fail"
        return _ms(row[f"{key}_s"]) if f"{key}_s" in row else "–"

    def times(row: dict[str, Any], impl: str) -> str:
        return f"{ms(row, f'{impl}_fwd')} / {ms(row, f'{impl}_fb')}"

    def x(value: float | None) -> str:
        return f"{value:.2f}×" if value is not None else "–"

    def mib(row: dict[str, Any], impl: str) -> str:
        v = per_1k_tokens_mib(row, f"{impl}_fb_peak_bytes")
        return f"{v:.2f}" if v is not None else "–"

    failures = []
    for row in results["rows"]:
        cells = [str(row["T"]), str(row["batch"])] + [times(row, i) for i in impls]
        cells += [ms(row, "flex_mask"), f"{ms(row, 'floor_fwd')} / {ms(row, 'floor_fb')}"]
        cells += [
            x(_ratio(row, "sdpa_flash_fb_s", "triton_fb_s")),
            x(_ratio(row, ("flex_fb_s", "flex_mask_s"), "triton_fb_s")),
            x(_ratio(row, "flex_fb_s", "triton_fb_s")),
            x(_ratio(row, "triton_fb_s", "floor_fb_s")),
        ]
        cells += [mib(row, i) for i in impls]
        lines.append("| " + " | ".join(cells) + " |")
        failures += [f"T={row['T']} {k.removesuffix('_error')}: {v}" for k, v in row.items() if k.endswith("_error")]
    if failures:
        lines += ["", "Failed measurements:", ""] + [f"- {f}" for f in failures]
    lines += ["", *goal_table(goals(results))]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# measurement
# --------------------------------------------------------------------------------------------------


def inputs(length: int, tokens: int, heads: int, dim: int, rare: int, dtype: torch.dtype, device: str, seed: int = 0):
    """The CPU benchmark's inputs (same generator), moved to ``device`` in ``dtype``."""
    q, k, v, rare_index = cpu_inputs(length, tokens, heads, dim, rare, seed)
    return *(t.to(device, dtype) for t in (q, k, v)), rare_index.to(device)


def peak_bytes(step: Callable[[], Any], device: str) -> int | None:
    """GPU memory one more call of ``step`` allocates at its peak on top of what is allocated before it."""
    if torch.device(device).type != "cuda":
        return None
    gc.collect()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def copy_bandwidth(size_mb: int, device: str, repeats: int = 10) -> float:
    """Device-to-device copy bandwidth in bytes/s, counting bytes read and written:
    ``y.copy_(x)`` of a ``size_mb`` MiB float32 buffer ``torch.empty(N)``, median of ``repeats``."""
    x = torch.empty(size_mb * 2**20 // 4, device=device)
    y = torch.empty_like(x)
    seconds = median_time(lambda: y.copy_(x), repeats, 2, device)
    return 2 * x.numel() * x.element_size() / seconds


def candidates(q: torch.Tensor, rare_index: torch.Tensor, structure: Structure) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidate positions ``(B, T, C)`` (clamped) and kinds ``(B, H, T, C)`` of every query, from
    the plan a structured layer attends with (for the ``triton_kernel`` measurement)."""
    from ..attention.functional import self_attention_plan

    plan = self_attention_plan(structure, q, rare_index, None)
    _, index, kind = plan.candidates()
    return index, kind


@functools.cache
def _compiled_create_block_mask() -> Callable[..., Any]:
    from torch.nn.attention.flex_attention import create_block_mask

    raise_recompile_limits()
    return torch.compile(create_block_mask, dynamic=False)


def mask_builder(structure: Structure, batch: int, length: int, device: str, compiled: bool):
    """A function from a rare index ``(B, r)`` to FlexAttention's BlockMask of the structured support
    (what a training step must build for every batch): the plan's supports and ``create_block_mask``."""
    from torch.nn.attention.flex_attention import create_block_mask

    from ..attention.functional import self_attention_plan

    create = _compiled_create_block_mask() if compiled else create_block_mask

    shape = torch.empty(batch, structure.num_heads, length, 0, device=device)  # the plan reads q's shape only

    def build(rare_index: torch.Tensor):
        plan = self_attention_plan(structure, shape, rare_index, None)
        # H=None: every head of bench_structure has the same support
        return create(plan.supports.mask_mod(), batch, None, length, length, device=device)

    return build


def make_step(
    impl: str,
    mode: str,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rare_index: torch.Tensor,
    window: int,
    block_mask: Any = None,
) -> Callable[[], None]:
    """A closure running one step of ``impl`` in ``mode`` (``fwd`` or ``fb``) on these inputs."""
    import torch.nn.functional as F

    from ..attention import structured_attention, triton_kernel

    structure = bench_structure(q.size(1), window, rare_index.size(-1))
    backward = mode == "fb"
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if backward:
        q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
        grad = torch.randn_like(q)
    forward: Callable[[], torch.Tensor]
    if impl == "sdpa_flash":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def forward():
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(q, k, v)

    elif impl == "flex":
        if block_mask is None:
            raise ValueError("flex needs a block_mask")
        compiled = compiled_flex()

        def forward():
            return compiled(q, k, v, block_mask=block_mask)

    elif impl == "triton":
        if not triton_kernel.available(q.device):
            raise RuntimeError(f"the Triton kernel does not run on {q.device} here (triton missing?)")

        def forward():
            return structured_attention(
                q, k, v, window=window, rare_index=rare_index, impl="triton", structure=structure
            )

    elif impl == "triton_kernel":
        if not triton_kernel.available(q.device):
            raise RuntimeError(f"the Triton kernel does not run on {q.device} here (triton missing?)")
        index, kind = candidates(q, rare_index, structure)
        scale = 1.0 / math.sqrt(q.size(-1))

        def forward():
            # the plan's indices, as in training: no range check (a GPU sync) inside the timed step
            eps = structure.sink_eps
            return triton_kernel.candidate_attention(q, k, v, index, kind, scale, eps, check_index=False)[0]

    elif impl == "gather":

        def forward():  # "efficient" never runs Triton (candidate_kernel): on a GPU, the gathered copies
            return structured_attention(
                q, k, v, window=window, rare_index=rare_index, impl="efficient", structure=structure
            )

    else:
        raise ValueError(f"impl must be one of {GPU_IMPLS}, got {impl!r}")

    def step() -> None:
        if backward:
            forward().backward(grad)
            q.grad = k.grad = v.grad = None  # each step allocates its gradients, as a training step does
        else:
            with torch.no_grad():
                forward()

    return step


def _failure(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    text = f"{type(err).__name__}: {lines[0] if lines else ''}"
    return text[:300]


def _free(device: str) -> None:
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def run(
    lengths: list[int],
    tokens: int,
    heads: int,
    dim: int,
    window: int,
    rare: int,
    dtype: torch.dtype,
    impls: list[str],
    modes: list[str],
    repeats: int,
    warmup: int,
    memory: bool = True,
    copy_mb: int = 1024,
    device: str = "cuda",
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Measure every (length, implementation, mode); a failure (compilation, out of memory) is
    recorded as ``{impl}_{mode}_error`` and the run goes on. ``device="cpu"`` is for testing the
    harness without a GPU (wall-clock timing, no memory figures); the CLI measures CUDA only.
    ``on_row`` is called with the results so far (``"complete": False``, goals of the rows so far)
    after each length."""
    from ..provenance import git_commit, machine

    unknown = sorted(set(impls) - set(GPU_IMPLS)) + sorted(set(modes) - set(MODES))
    if unknown:
        raise ValueError(f"unknown implementations or modes {unknown}; choose from {GPU_IMPLS} and {MODES}")
    structure = bench_structure(heads, window, rare)
    on_gpu = torch.device(device).type == "cuda"
    bandwidth = copy_bandwidth(copy_mb, device)
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if on_gpu else str(device),
        "machine": machine(),
        "commit": git_commit(),
        "settings": {
            "lengths": lengths,
            "tokens": tokens,
            "heads": heads,
            "dim": dim,
            "window": window,
            "rare": rare,
            "candidates": structure.keys_per_query,
            "dtype": str(dtype).removeprefix("torch."),
            "impls": impls,
            "modes": modes,
            "repeats": repeats,
            "warmup": warmup,
            "timing": "CUDA events, median of repeats after warm-up" if on_gpu else "wall clock (no GPU)",
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "triton": _triton_version(),
        },
        "hardware": {"copy_gb_per_s": bandwidth / 1e9, "copy_mb": copy_mb},
        "rows": [],
        "complete": False,
    }
    for length in lengths:
        q, k, v, rare_index = inputs(length, tokens, heads, dim, rare, dtype, device)
        batch = q.size(0)
        row: dict[str, Any] = {"T": length, "batch": batch}
        floor = traffic_floor_bytes(batch, heads, length, dim, candidates_at(structure, length), q.element_size())
        for mode in ("fwd", "fb"):
            row[f"floor_{mode}_bytes"] = floor[mode]
            row[f"floor_{mode}_s"] = floor[mode] / bandwidth
        block_mask = None
        if "flex" in impls:
            build = _measure_mask(row, structure, batch, length, rare, repeats, warmup, memory, device)
            try:
                block_mask = build(rare_index) if build is not None else None
            except Exception as err:
                row["flex_mask_error"] = _failure(err)
        for impl in impls:
            for mode in modes:
                key = f"{impl}_{mode}"
                try:
                    if impl == "flex" and block_mask is None:
                        raise RuntimeError("no BlockMask (its build failed, see flex_mask_error)")
                    step = make_step(impl, mode, q, k, v, rare_index, window, block_mask)
                    row[f"{key}_s"] = median_time(step, repeats, warmup, device)
                    if memory and on_gpu:
                        row[f"{key}_peak_bytes"] = peak_bytes(step, device)
                except Exception as err:  # a failed measurement is a result too; the others go on
                    row[f"{key}_error"] = _failure(err)
                finally:
                    step = None  # type: ignore[assignment]
                    _free(device)
                _print(row, key)
        results["rows"].append(row)
        del q, k, v, rare_index, block_mask
        _free(device)
        if on_row is not None:
            on_row({**results, "goals": goals(results)})
    results["goals"] = goals(results)
    results["complete"] = True
    return results


def _measure_mask(row, structure, batch, length, rare, repeats, warmup, memory, device):
    """Time the BlockMask build into ``row`` (fresh rare columns every call); returns the builder
    that worked, or None."""
    gen = torch.Generator().manual_seed(1)
    fresh = [torch.randint(0, length, (batch, rare), generator=gen).to(device) for _ in range(warmup + repeats + 1)]
    errors = []
    for compiled in (True, False):
        build = mask_builder(structure, batch, length, device, compiled)
        step = functools.partial(_build_next, build, itertools.cycle(fresh))
        try:
            row["flex_mask_s"] = median_time(step, repeats, warmup, device)
            if memory and torch.device(device).type == "cuda":
                row["flex_mask_peak_bytes"] = peak_bytes(step, device)
            row["flex_mask_how"] = "torch.compile(create_block_mask)" if compiled else "create_block_mask (eager)"
            if errors:
                row["flex_mask_compiled_error"] = errors[0]
            _print(row, "flex_mask")
            return build
        except Exception as err:
            errors.append(_failure(err))
            _free(device)
    row["flex_mask_error"] = "; ".join(errors)
    _print(row, "flex_mask")
    return None


def _build_next(build: Callable[[torch.Tensor], Any], rare_indices: Iterator[torch.Tensor]) -> Any:
    return build(next(rare_indices))


def _print(row: dict[str, Any], key: str) -> None:
    if f"{key}_error" in row:
        text = f"failed: {row[f'{key}_error']}"
    else:
        text = f"{row[f'{key}_s'] * 1000:10.3f} ms"
        if row.get(f"{key}_peak_bytes") is not None:
            text += f"  peak +{row[f'{key}_peak_bytes'] / 2**20:9.1f} MiB"
    print(f"T={row['T']:6d} {key:18s} {text}  [{time.strftime('%H:%M:%S')}]", flush=True)


#: a row as :func:`_print` writes it (the clock time is optional: older logs lack it)
_LOG_ROW = re.compile(
    r"^T=\s*(?P<T>\d+) (?P<key>\w+)\s+"
    r"(?:failed: (?P<error>.*?)|(?P<ms>[\d.]+) ms(?:\s+peak \+\s*(?P<mib>[\d.]+) MiB)?)(?:\s+\[[\d:]+\])?\s*$"
)
_LOG_VERSIONS = re.compile(r"torch (?P<torch>\S+) \(CUDA (?P<cuda>[\d.]+)\), triton (?P<triton>\S+)")
_LOG_PYTHON = re.compile(r"structmt ready: Python (?P<python>[\d.]+)")  # scripts/check_install.py
#: the line a run prints before its first row
RUN_STARTS = "structmt-bench attention --device cuda: a run starts"
#: lines that start a run in a log: its own first line, and scripts/gpu_session.sh's line before each step (all a
#: run printed before RUN_STARTS existed)
_LOG_RUN_START = re.compile(rf"^(?:{re.escape(RUN_STARTS)}|gpu_session: == )")


def record_from_logs(texts: list[str], settings: dict[str, Any]) -> dict[str, Any]:
    """A record (the JSON's ``rows``, ``settings`` and ``goals``) rebuilt from the rows printed by
    runs of this benchmark whose JSON was never written, e.g. stopped at a time limit. ``settings``:
    the runs' options (``lengths, tokens, heads, dim, window, rare, dtype, impls, modes, repeats,
    warmup``). Times keep the printed 3 decimals of a millisecond, peaks 0.1 MiB; no copy bandwidth
    was printed, so there is no traffic floor.

    Every value of one length comes from one run, so that each ratio is measured side by side: a
    run prints a length's rows one after the other, and a block of them ends where another length,
    a second row of the same measurement or the start of a run (:data:`RUN_STARTS`, or
    ``scripts/gpu_session.sh``'s ``gpu_session: == …`` before it) is printed. Of the blocks of a length,
    the last one printed wins (the last log given that has that length, its last block there); its
    measurements replace the earlier blocks' whole, they are not merged one by one."""
    blocks: dict[int, dict[str, Any]] = {}  # T → the values of its latest block
    python = "not recorded"
    structure = bench_structure(settings["heads"], settings["window"], settings["rare"])
    elem = torch.empty(0, dtype=DTYPES[settings["dtype"]]).element_size()
    for text in texts:
        current: int | None = None  # the length whose block the rows of this log are adding to
        keys: set[str] = set()
        for line in text.splitlines():
            m = _LOG_ROW.match(line.strip())
            if _LOG_RUN_START.match(line.strip()):
                current = None  # a new run: whatever length it prints first starts a block
                continue
            if m is None:
                if (v := _LOG_VERSIONS.search(line)) and "torch" not in settings:
                    settings = {**settings, **v.groupdict()}
                if v := _LOG_PYTHON.search(line):
                    python = v["python"]
                continue
            length, key = int(m["T"]), m["key"]
            if length != current or key in keys:  # a new block: the earlier values of this length go
                current, keys = length, set()
                blocks[length] = {}
            keys.add(key)
            if m["error"] is not None:
                blocks[length][f"{key}_error"] = m["error"]
            else:
                blocks[length][f"{key}_s"] = float(m["ms"]) / 1000
                if m["mib"] is not None:
                    blocks[length][f"{key}_peak_bytes"] = round(float(m["mib"]) * 2**20)
    rows: dict[int, dict[str, Any]] = {}
    for length, values in blocks.items():
        batch = max(1, settings["tokens"] // length)
        candidates = candidates_at(structure, length)
        floor = traffic_floor_bytes(batch, settings["heads"], length, settings["dim"], candidates, elem)
        rows[length] = {"T": length, "batch": batch, **{f"floor_{m}_bytes": floor[m] for m in MODES}, **values}
    if not rows:
        raise ValueError("no benchmark rows (lines such as 'T=   128 triton_fb   3.533 ms') in the logs")
    record: dict[str, Any] = {
        "settings": {**settings, "candidates": structure.keys_per_query},
        "hardware": {"copy_gb_per_s": None, "copy_mb": None},
        "machine": {"cpu": "not recorded", "python": python},
        "rows": [rows[t] for t in sorted(rows)],
        "complete": False,
    }
    record["goals"] = goals(record)
    return record


def _triton_version() -> str | None:
    try:
        import triton

        return triton.__version__
    except Exception:
        return None


def main(argv: list[str] | None = None) -> None:
    p = command_parser("attention --device cuda", __doc__)
    p.add_argument("--device", choices=("cuda",), default="cuda", help="this benchmark measures a CUDA GPU")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="bfloat16", help="(default: bfloat16)")
    p.add_argument("--lengths", type=positive_ints, default=DEFAULT_LENGTHS, help="comma-separated lengths T")
    add_shape_options(p, tokens=32768)
    p.add_argument(
        "--impls", type=names_from(GPU_IMPLS), default=",".join(GPU_IMPLS), help=f"comma-separated, of {GPU_IMPLS}"
    )
    p.add_argument(
        "--modes", type=names_from(MODES), default=",".join(MODES), help="fwd (forward, no grad) and/or fb (f+b)"
    )
    p.add_argument("--repeats", type=int_at_least(1), default=20, help="timed steps (their median)")
    p.add_argument("--warmup", type=int_at_least(0), default=3, help="untimed steps first (compilation happens there)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory step")
    p.add_argument(
        "--copy-mb", type=int_at_least(1), default=1024, help="buffer of the copy-bandwidth measurement, MiB"
    )
    p.add_argument(
        "--out",
        type=output_file,
        default=DEFAULT_OUT,
        help="JSON file to write " + replaces(DEFAULT_OUT, "the result that structmt-bench report renders"),
    )
    p.add_argument(
        "--from-log",
        type=Path,
        nargs="+",
        metavar="LOG",
        help="measure nothing: rebuild the JSON from the rows these logs of earlier runs printed (with the "
        "options above as those runs had them, and --gpu and --commit); for a run stopped before it wrote any",
    )
    p.add_argument("--gpu", help="--from-log: the GPU the logs were printed on")
    p.add_argument("--commit", help="--from-log: the commit of the code that printed them")
    a = p.parse_args(argv)
    setup(a.verbose)
    check_lengths(p, a.lengths, a.tokens)
    lengths, impls, modes = a.lengths, a.impls, a.modes
    out = output_path(a.out, ".json")
    command = command_line("attention", argv)
    if a.from_log:
        if not (a.gpu and a.commit):
            p.error("--from-log needs --gpu (the GPU the logs come from) and --commit (the code that wrote them)")
        missing = [str(log) for log in a.from_log if not log.is_file()]
        if missing:
            p.error(f"--from-log: no such file: {', '.join(missing)}")
        settings = {
            "lengths": lengths,
            **{name: getattr(a, name) for name in ("tokens", "heads", "dim", "window", "rare", "dtype")},
            "impls": impls,
            "modes": modes,
            "repeats": a.repeats,
            "warmup": a.warmup,
        }
        record = record_from_logs([log.read_text() for log in a.from_log], settings)
        record.update(device=a.gpu, commit=a.commit, command=command, rebuilt_from=[str(log) for log in a.from_log])
        out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out, json.dumps(record, indent=2) + "\n")
        print(table(record))
        print(f"\nrebuilt from {len(a.from_log)} log(s); wrote {out}")
        return
    require_cuda("attention")
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"{RUN_STARTS} ({command})", flush=True)  # --from-log tells this run's rows from an earlier run's

    def save(partial: dict[str, Any]) -> None:
        write_text_atomic(out, json.dumps({**partial, "command": command}, indent=2) + "\n")

    results = run(
        lengths,
        a.tokens,
        a.heads,
        a.dim,
        a.window,
        a.rare,
        DTYPES[a.dtype],
        impls,
        modes,
        a.repeats,
        a.warmup,
        not a.no_memory,
        a.copy_mb,
        on_row=save,
    )
    results["command"] = command
    write_text_atomic(out, json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"\n{results['device']}: copy bandwidth {results['hardware']['copy_gb_per_s']:.0f} GB/s; wrote {out}")


if __name__ == "__main__":
    main()
