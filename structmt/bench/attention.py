"""``structmt-bench attention``: forward+backward time and peak memory of dense SDPA,
fairseq's MultiheadAttention, compiled FlexAttention (forward only on CPU) and
structmt's reference and efficient paths, side by side on the same inputs.

Every ratio is measured in one run.  Peak memory is the resident memory one step adds
on top of its inputs, in a fresh child process per (implementation, length); see
:func:`peak_bytes`.

The Flex / efficient forward ratio does not time the same preparation on both sides:
FlexAttention's BlockMask (and the structure plan it is built from) is built once per length,
outside its timed step, while ``efficient_fwd`` builds its plan and candidates inside every timed
step.  The extra work is on structmt's side, so the "≥ 3" verdict on that ratio is conservative.
(The GPU benchmark times the BlockMask build on its own: ``flex_mask_s``.)
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..attention.functional import candidate_kernel, self_attention_plan
from ..console import say, setup
from ..files import int_at_least, write_text_atomic
from ..paths import RESULTS_DIR
from ..provenance import machine
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
)
from .workload import bench_structure, candidates_at, compiled_flex, inputs, median_time

CPU_IMPLS = ("sdpa", "fairseq_mha", "flex", "reference", "efficient", "efficient_fwd")
#: the flat-memory goal's span of lengths: both ends must be measured
FLAT_T = (1024, 8192)
#: printed after the table: what the Flex / efficient forward ratio times (see the module docstring)
FLEX_NOTE = (
    "Flex fwd / efficient fwd: Flex's BlockMask is built once per T, outside its timed step; efficient_fwd "
    "builds its plan and candidates inside every timed step (conservative for the ≥ 3 verdict)."
)
#: implementations whose cost is O(T²) (skipped above --dense-limit)
QUADRATIC = ("sdpa", "fairseq_mha", "reference")


def make_step(impl: str, q, k, v, rare_index, window: int) -> tuple[Callable[[], Any], bool]:
    """A closure running one step of ``impl``; returns it and whether it includes the backward pass.
    ``efficient_grad`` (not in :data:`CPU_IMPLS`): ``efficient`` with a contiguous upstream gradient, as a model's
    output projection gives, instead of ``out.sum()``'s expanded one (``scripts/efficient_grad_memory.py``)."""
    import torch.nn.functional as F

    from structmt.attention import structured_attention

    structure = bench_structure(q.size(1), window, rare_index.size(-1))

    def fresh(*tensors: torch.Tensor) -> None:
        for t in tensors:
            t.grad = None  # freed after every step: each step allocates its gradients, as a training step does

    if impl == "sdpa":
        q, k, v = (t.clone().requires_grad_() for t in (q, k, v))

        def sdpa_step():
            F.scaled_dot_product_attention(q, k, v).sum().backward()
            fresh(q, k, v)

        return sdpa_step, True
    if impl in ("reference", "efficient", "efficient_grad"):
        q, k, v = (t.clone().requires_grad_() for t in (q, k, v))
        path, grad = impl.removesuffix("_grad"), torch.randn_like(q) if impl == "efficient_grad" else None

        def structured_step():
            out = structured_attention(q, k, v, window=window, rare_index=rare_index, impl=path, structure=structure)
            out.sum().backward() if grad is None else out.backward(grad)
            fresh(q, k, v)

        return structured_step, True
    if impl == "efficient_fwd":

        def forward_step():
            with torch.no_grad():
                structured_attention(
                    q, k, v, window=window, rare_index=rare_index, impl="efficient", structure=structure
                )

        return forward_step, False
    if impl == "fairseq_mha":
        from fairseq.modules.multihead_attention import MultiheadAttention

        B, H, T, D = q.shape
        mha = MultiheadAttention(H * D, H, self_attention=True)
        x = q.permute(2, 0, 1, 3).reshape(T, B, H * D).clone().requires_grad_()

        def mha_step():
            mha(x, x, x, need_weights=False)[0].sum().backward()
            fresh(x, *mha.parameters())

        return mha_step, True
    if impl == "flex":
        from torch.nn.attention.flex_attention import create_block_mask

        B, H, T, _ = q.shape
        # FlexAttention's mask_mod is the structured support itself: the predicates structmt's own paths use
        plan = self_attention_plan(structure, q, rare_index, None)
        # H=None: every head of bench_structure has the same support
        block_mask = create_block_mask(plan.supports.mask_mod(), B=B, H=None, Q_LEN=T, KV_LEN=T, device="cpu")
        compiled = compiled_flex()

        def step():
            with torch.no_grad():
                compiled(q, k, v, block_mask=block_mask)

        return step, False
    raise ValueError(impl)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _peak_child(conn, impl, length, tokens, heads, dim, rare, window):
    q, k, v, r = inputs(length, tokens, heads, dim, rare)
    step, _ = make_step(impl, q, k, v, r, window)
    step()  # warm-up: thread pools, kernel caches, compilation
    gc.collect()
    try:  # reset the peak-RSS counter (Linux), so the peak is the next step's alone
        Path("/proc/self/clear_refs").write_text("5")
        base = _status_kib("VmRSS")
        step()
        conn.send((_status_kib("VmHWM") - base) * 1024)
    except OSError:  # no clear_refs: the growth of the peak over the first step is the best we have
        conn.send(-1)
    conn.close()


#: seconds a memory measurement's process may take before it is stopped (and the measurement recorded as none)
PEAK_TIMEOUT_S = 1800
#: seconds it may take to exit once it has sent its result or closed its pipe, before it is stopped
PEAK_EXIT_S = 60


def peak_bytes(impl: str, length: int, tokens: int, heads: int, dim: int, rare: int, window: int) -> int:
    """Peak resident memory one step adds on top of its inputs, measured in a fresh process.

    The child allocates with ``MALLOC_MMAP_THRESHOLD_=65536``, so freed blocks go back to the
    system and the resident set follows live memory; the peak is read from ``VmHWM`` after
    resetting it (``/proc/self/clear_refs``) between a warm-up step and the measured one.
    """
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_peak_child, args=(child, impl, length, tokens, heads, dim, rare, window))
    saved = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
    try:
        proc.start()
    finally:
        if saved is None:
            del os.environ["MALLOC_MMAP_THRESHOLD_"]
        else:
            os.environ["MALLOC_MMAP_THRESHOLD_"] = saved
    child.close()  # the child's end is the child's alone: its exit then ends the wait below
    late = not parent.poll(PEAK_TIMEOUT_S)  # a result, or the end of the pipe: the child closed it as it died
    try:
        value = None if late else parent.recv()
    except EOFError:  # the child died before it sent (an exception, or killed for memory), and may not have exited
        value = None  # yet: whether it is still alive does not say whether it was late
    # a late child is stopped at once (a step that swaps, a hang), one that hangs as it exits after PEAK_EXIT_S
    # (its result, if it sent one, stands): join() alone would wait for either without end
    proc.join(0 if late else PEAK_EXIT_S)
    if proc.is_alive():
        proc.kill()
        proc.join()
    if value is None:  # recorded as not measured (the report's "–"), said here
        why = (
            f"none within {PEAK_TIMEOUT_S} s: its process was stopped"
            if late
            else f"its process's exit code {proc.exitcode}; its error, if any, is above"
        )
        say(f"T={length} {impl}: the memory measurement ended without a result ({why})")
        return -1
    return int(value)


def hardware(size_mb: int = 512) -> dict[str, float]:
    """Copy bandwidth (read + write) and float32 matmul rate of this machine, measured now."""
    x = torch.empty(size_mb * 1024 * 1024 // 4)
    y = torch.empty_like(x)
    y.copy_(x)
    copy = median_time(lambda: y.copy_(x), 5, 1, "cpu")
    a = torch.randn(2048, 2048)
    mm = median_time(lambda: a @ a, 5, 1, "cpu")
    return {"copy_gb_per_s": 2 * x.numel() * 4 / copy / 1e9, "matmul_gflop_per_s": 2 * 2048**3 / mm / 1e9}


def gather_floor_bytes(batch: int, heads: int, length: int, dim: int, candidates: int) -> float:
    """Bytes the band and rare gathers must move, forward + backward: every query reads its
    ``C`` keys and values and writes its output (forward); the backward reads them again and writes
    dq, dk and dv (float32)."""
    rows = batch * heads * length
    forward = rows * (2 * candidates + 2) * dim * 4
    backward = rows * (4 * candidates + 3) * dim * 4
    return forward + backward


def run(
    lengths: list[int],
    tokens: int,
    heads: int,
    dim: int,
    window: int,
    rare: int,
    impls: list[str],
    repeats: int,
    memory: bool,
    dense_limit: int,
) -> dict[str, Any]:
    results: dict[str, Any] = {
        "machine": machine(),
        "hardware": hardware(),
        "settings": {
            "tokens": tokens,
            "heads": heads,
            "dim": dim,
            "window": window,
            "rare": rare,
            "repeats": repeats,
            # the efficient rows run the C++ kernel where it was built, else gathered copies (much slower)
            "efficient_kernel": candidate_kernel(
                "efficient", torch.empty(1, 1, 1, dim), torch.empty(1, 1, 1, dim), 0.0
            ),
        },
        "rows": [],
    }
    for length in lengths:
        q, k, v, r = inputs(length, tokens, heads, dim, rare)
        row: dict[str, Any] = {"T": length, "batch": q.size(0)}
        for impl in impls:
            if impl in QUADRATIC and length > dense_limit:
                continue
            step, backward = make_step(impl, q, k, v, r, window)
            row[f"{impl}_s"] = median_time(step, repeats, 1, "cpu")  # one warm-up step (and compilation)
            row[f"{impl}_backward"] = backward
            if memory and impl != "efficient_fwd":
                row[f"{impl}_peak_bytes"] = peak_bytes(impl, length, tokens, heads, dim, rare, window)
            print(
                f"T={length:5d} {impl:12s} {row[f'{impl}_s'] * 1000:9.2f} ms"
                + (
                    f"  peak {row[f'{impl}_peak_bytes'] / 2**20:8.1f} MiB"
                    if row.get(f"{impl}_peak_bytes", -1) >= 0
                    else ""
                ),
                flush=True,
            )
        candidates = candidates_at(bench_structure(heads, window, rare), length)
        row["floor_s"] = gather_floor_bytes(q.size(0), heads, length, dim, candidates) / (
            results["hardware"]["copy_gb_per_s"] * 1e9
        )
        results["rows"].append(row)
    return results


def goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's goals, each as (what, measured ratio, target, met), from this run's rows."""
    by_t = {r["T"]: r for r in results["rows"]}

    def ratio(t: int, num: str, den: str) -> float | None:
        r = by_t.get(t, {})
        return r[num] / r[den] if num in r and den in r else None

    flat = flatness({t: per_1k_tokens_mib(r, "efficient_peak_bytes") for t, r in by_t.items()}, FLAT_T)
    return [
        goal("T=4096: SDPA f+b / efficient f+b", ratio(4096, "sdpa_s", "efficient_s"), 15, True),
        goal("T=4096: Flex fwd / efficient fwd", ratio(4096, "flex_s", "efficient_fwd_s"), 3, True),
        goal("T=4096: efficient f+b / memory-traffic floor", ratio(4096, "efficient_s", "floor_s"), 4, False),
        goal(f"efficient peak memory per token, max / min over T = {FLAT_T[0]}…{FLAT_T[1]}", flat, 1.2, False),
        goal("T=32: efficient f+b / SDPA f+b", ratio(32, "efficient_s", "sdpa_s"), 1.2, False),
    ]


def table(results: dict[str, Any]) -> str:
    head = (
        "| T | batch | SDPA f+b ms | fairseq MHA f+b ms | reference f+b ms | efficient f+b ms | Flex fwd ms | "
        "efficient fwd ms | SDPA / efficient (f+b) | Flex / efficient (fwd) | efficient / traffic floor | "
        "peak MiB per 1k tokens: SDPA | efficient |"
    )
    lines = [head, "|" + "---|" * 13]

    def ms(row: dict[str, Any], key: str) -> str:
        return f"{row[key] * 1000:.1f}" if key in row else "–"

    def ratio(row: dict[str, Any], num: str, den: str, fmt: str = ".1f") -> str:
        return f"{row[num] / row[den]:{fmt}}×" if num in row and den in row else "–"

    def mib(row: dict[str, Any], impl: str) -> str:
        v = per_1k_tokens_mib(row, f"{impl}_peak_bytes")
        return f"{v:.2f}" if v is not None else "–"

    for row in results["rows"]:
        cells = [str(row["T"]), str(row["batch"])]
        cells += [ms(row, f"{i}_s") for i in ("sdpa", "fairseq_mha", "reference", "efficient", "flex", "efficient_fwd")]
        cells += [
            ratio(row, "sdpa_s", "efficient_s"),
            ratio(row, "flex_s", "efficient_fwd_s", ".2f"),
            ratio(row, "efficient_s", "floor_s"),
            mib(row, "sdpa"),
            mib(row, "efficient"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *goal_table(goals(results))]
    return "\n".join(lines)


def plot(results: dict[str, Any], png: Path) -> None:
    from ..figures import pyplot, save

    fig, (ax1, ax2) = pyplot().subplots(1, 2, figsize=(11, 4))
    for impl in CPU_IMPLS:
        pts = [(r["T"], r[f"{impl}_s"]) for r in results["rows"] if f"{impl}_s" in r]
        if pts:
            ax1.loglog(*zip(*pts, strict=True), marker="o", label=impl + (" (fwd)" if impl == "flex" else ""))
        mem = [(r["T"], r[f"{impl}_peak_bytes"] / 2**20) for r in results["rows"] if f"{impl}_peak_bytes" in r]
        if mem:
            ax2.loglog(*zip(*mem, strict=True), marker="o", label=impl + (" (fwd)" if impl == "flex" else ""))
    ax1.set_xlabel("T (tokens per batch constant)")
    ax1.set_ylabel("seconds per step")
    ax2.set_xlabel("T")
    ax2.set_ylabel("peak MiB")
    ax1.legend(fontsize=7)
    ax2.legend(fontsize=7)
    save(fig, png)


def main(argv: list[str] | None = None) -> None:
    # --device cuda: the GPU benchmark (attention_cuda), with its own options and defaults
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--device")  # any other value: the parser below names the choices
    if pre.parse_known_args(argv)[0].device == "cuda":
        from .attention_cuda import main as cuda_main

        cuda_main(argv)
        return
    p = command_parser("attention", __doc__)
    p.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="cuda: SDPA flash, compiled Flex, structmt's Triton kernel and its gather path on a GPU "
        "(structmt-bench attention --device cuda --help)",
    )
    p.add_argument("--dtype", choices=("float32",), default="float32", help="the CPU benchmark runs float32")
    p.add_argument(
        "--lengths", type=positive_ints, default="32,128,512,1024,2048,4096,8192", help="comma-separated lengths T"
    )
    add_shape_options(p, tokens=8192)
    p.add_argument(
        "--impls", type=names_from(CPU_IMPLS), default=",".join(CPU_IMPLS), help=f"comma-separated, of {CPU_IMPLS}"
    )
    p.add_argument("--repeats", type=int_at_least(1), default=5, help="timed steps (their median)")
    p.add_argument("--no-memory", action="store_true", help="do not measure peak memory (time only)")
    p.add_argument(
        "--dense-limit", type=int_at_least(0), default=8192, help="skip O(T²) implementations above this length"
    )
    out = RESULTS_DIR / "bench_attention"
    p.add_argument(
        "--out",
        type=output_file,
        default=out,
        help="where to write OUT.json and OUT.png " + replaces(out, "the committed .json and .png"),
    )
    a = p.parse_args(argv)
    setup(a.verbose)
    check_lengths(p, a.lengths, a.tokens)
    results = run(
        a.lengths,
        a.tokens,
        a.heads,
        a.dim,
        a.window,
        a.rare,
        a.impls,
        a.repeats,
        not a.no_memory,
        a.dense_limit,
    )
    a.out.parent.mkdir(parents=True, exist_ok=True)
    results["command"] = command_line("attention", argv)
    results["goals"] = goals(results)
    json_out, png_out = output_path(a.out, ".json"), output_path(a.out, ".png")
    write_text_atomic(json_out, json.dumps(results, indent=2) + "\n")
    plot(results, png_out)
    print(f"wrote {json_out} and {png_out}")
    print(table(results))
    if "flex" in a.impls and "efficient_fwd" in a.impls:
        print(f"\n{FLEX_NOTE}")
    hw = results["hardware"]
    print(
        f"\ncopy bandwidth {hw['copy_gb_per_s']:.1f} GB/s, matmul {hw['matmul_gflop_per_s']:.1f} GFLOP/s; "
        f"{results['machine']}"
    )


if __name__ == "__main__":
    main()
