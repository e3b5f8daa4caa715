"""Compile the Triton kernels for a GPU architecture on any machine, no GPU needed (``structmt-bench compile``).

Triton's own compiler (``triton.compile`` with a ``GPUTarget``) lowers each kernel through its real
backend, TTIR → TTGIR → LLVM IR → PTX → cubin (``ptxas``), for the argument types, block sizes and warp
counts that :mod:`structmt.attention.triton_kernel` launches with; ``ptxas -v`` then reports registers and
spills. This checks what Triton's interpreter (the CPU tests) cannot: that the kernels compile for the GPU
at all, with this Triton, and what they cost in registers. It does not run them. (Compile seconds near 0
mean Triton's cache, ``~/.triton/cache``, already held the kernel.)

    structmt-bench compile                          # sm_90 (H100): fp32/bf16/fp16, dropout off/on, D=64
    structmt-bench compile --arch 80 --head-dims 64 128 --out results/triton_compile_sm80.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ..attention.triton_kernel import release
from ..console import setup
from ..files import int_at_least, write_text_atomic
from ..provenance import git_commit, machine_label
from .common import HEADS, add_old_name, command_line, command_parser, output_file

#: torch dtype → Triton pointer element type
_ELEMENT = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: the kernels' arguments that are not pointers or integers (everything else is a shape, a stride or the seed)
_FLOATS = ("scale", "eps", "dropout_p", "keep_scale")
#: the launch the kernels are compiled for: contiguous ``(B, H, T, D)`` tensors of the attention benchmark's heads
#: (``--heads``' default), T a multiple of 16, with ``--candidates`` C and ``--head-dims`` D. Triton's JIT
#: specialises a launch's integers on their values, and so does :func:`compile_kernel`: 1 becomes a constant
#: (the unit strides of the last dimension), a multiple of 16 is known to be one; register counts depend on it
#: (a kernel compiled without it used some twice as many).
LAUNCH = {"heads": HEADS, "length": 1024}
#: the seed the op passes: 0 without dropout, else one drawn below 2**31 (this one: not a multiple of 16)
_SEEDS = {False: 0, True: 1234567}
#: the compute capabilities (×10) ``--arch`` accepts: those of real NVIDIA GPUs that Triton 3.9's backend
#: compiles these kernels for. Any other number reaches LLVM as an unknown ``sm_<arch>`` and aborts the
#: process ("LLVM ERROR: Cannot select ..."): 0, 91, and 101 (CUDA 13 renamed it sm_110) do.
ARCHS = (70, 72, 75, 80, 86, 87, 89, 90, 100, 103, 110, 120, 121)


#: the oldest Triton whose ``ASTSource`` takes ``constexprs`` by argument index, as :func:`compile_kernel` passes them
#: (Triton 3.2, torch 2.6's, takes ``constants`` by name and an ``AttrsDescriptor``: not written for here)
MIN_TRITON = (3, 3)


def _refuse_old_triton(version: str) -> None:
    if release(version) < MIN_TRITON:
        raise SystemExit(
            f"error: structmt-bench compile needs Triton >= {'.'.join(map(str, MIN_TRITON))} (its ASTSource API); "
            f"this environment has Triton {version}. The kernels themselves run with Triton 3.2 (JIT at launch)"
        )


def _refuse_interpreter() -> None:
    """Stop before triton is imported: under ``TRITON_INTERPRET`` it defines kernels for its interpreter."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise SystemExit("error: structmt-bench compile: unset TRITON_INTERPRET (the interpreter compiles nothing)")


def compile_kernel(
    kernel: str, dtype: torch.dtype, *, dropout: bool, head_dim: int, candidates: int, arch: int
) -> dict[str, Any]:
    """Compile the ``fwd`` or ``bwd`` kernel for ``sm_<arch>``; returns its registers, spills, sizes."""
    _refuse_interpreter()
    import triton

    _refuse_old_triton(triton.__version__)
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from ..attention import triton_kernel as tk

    kernels = tk._kernels()
    fn = {"fwd": kernels.fwd, "bwd": kernels.bwd}[kernel]
    blocks, launch = tk._launch_config(kernels, candidates, head_dim, head_dim, kernel)
    constexprs = blocks | {"DROPOUT": dropout, "ACC": tk._acc(kernels, dtype)}
    # pointers as the op passes them: q, k, v (and grad_out) in the input dtype, the weights too; the
    # backward's dq in the input dtype, dk and dv in fp32 accumulators; index int64, kind int8
    element = "*" + _ELEMENT[dtype]
    pointers = {"IDX": "*i64", "KIND": "*i8", "DK": "*fp32", "DV": "*fp32"}
    pointers |= {name: element for name in ("Q", "K", "V", "G", "OUT", "W", "DQ")}
    integers = launch_integers(head_dim, candidates, dropout)
    signature, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in pointers:
            signature[name] = pointers[name]
            attrs[(i,)] = [["tt.divisibility", 16]]  # torch's allocations are 16-byte aligned
        elif name in _FLOATS:
            signature[name] = "fp32"
        elif integers[name] == 1:  # as Triton's JIT specialises a launch's integers
            signature[name] = "constexpr"
            constexprs[name] = 1
        else:
            signature[name] = "i32" if -(2**31) <= integers[name] < 2**31 else "i64"
            if integers[name] % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(
        fn=fn,
        signature=signature,
        constexprs={(fn.arg_names.index(n),): v for n, v in constexprs.items()},
        attrs=attrs,
    )
    start = time.perf_counter()
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=launch)
    seconds = time.perf_counter() - start
    resources = _ptxas_resources(compiled.asm["ptx"], arch)
    return {
        "kernel": kernel,
        "dtype": str(dtype).removeprefix("torch."),
        "dropout": dropout,
        "head_dim": head_dim,
        "candidates": candidates,
        **blocks,
        "num_warps": launch["num_warps"],
        **resources,
        "shared_bytes": compiled.metadata.shared,
        "cubin_bytes": len(compiled.asm["cubin"]),
        "compile_seconds": round(seconds, 1),
    }


def launch_integers(head_dim: int, candidates: int, dropout: bool) -> dict[str, int]:
    """The integer arguments the op passes for :data:`LAUNCH` (``sqb``…``sgd``: the strides of q, k, v and the
    output gradient by dimension b, h, t/s, d; ``H``, ``Tq``, ``S``, ``C``, ``D``, ``E``; the seed)."""
    H, T = LAUNCH["heads"], LAUNCH["length"]
    stride = {"b": H * T * head_dim, "h": T * head_dim, "t": head_dim, "s": head_dim, "d": 1}  # t, s: positions
    layout = {"q": "bhtd", "k": "bhsd", "v": "bhsd", "g": "bhtd"}
    values = {f"s{tensor}{dim}": stride[dim] for tensor, dims in layout.items() for dim in dims}
    shapes = {"H": H, "Tq": T, "S": T, "C": candidates, "D": head_dim, "E": head_dim, "seed": _SEEDS[dropout]}
    return values | shapes


def _ptxas_resources(ptx: str, arch: int) -> dict[str, int]:
    """Registers and spill bytes from ``ptxas -v`` (the ``ptxas`` Triton itself uses for ``arch``)."""
    from triton.backends.nvidia.compiler import get_ptxas

    suffix = "a" if arch >= 90 else ""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.ptx"
        path.write_text(ptx)
        cmd = [get_ptxas(arch).path, "-v", "--gpu-name", f"sm_{arch}{suffix}", str(path), "-o", os.devnull]
        done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ptxas failed ({' '.join(cmd)}):\n{done.stderr}")
    registers = re.search(r"Used (\d+) registers", done.stderr)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", done.stderr)
    if registers is None or spills is None:
        raise RuntimeError(f"could not read registers and spills from ptxas -v:\n{done.stderr}")
    return {
        "registers": int(registers.group(1)),
        "spill_store_bytes": int(spills.group(1)),
        "spill_load_bytes": int(spills.group(2)),
    }


def main(argv: list[str] | None = None) -> None:
    p = command_parser("compile", __doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--arch",
        type=int,
        choices=ARCHS,
        default=90,
        metavar="ARCH",
        help=f"compute capability ×10: 90 = H100/H200, 80 = A100; one of {', '.join(map(str, ARCHS))}",
    )
    p.add_argument(
        "--dtypes",
        nargs="+",
        choices=sorted(_DTYPES),
        default=["float32", "bfloat16", "float16"],
        help="(default: all)",
    )
    p.add_argument(
        "--head-dims", type=int_at_least(1), nargs="+", default=[64], help="head sizes to compile for (default: 64)"
    )
    p.add_argument(
        "--candidates",
        type=int_at_least(1, 1024),
        default=16,
        help="candidates per query, at most 1024 (a band of half-width 511; w=3, r=2: 7 + 2 + sinks)",
    )
    p.add_argument(
        "--kernels", nargs="+", choices=["fwd", "bwd"], default=["fwd", "bwd"], help="forward, backward (default: both)"
    )
    p.add_argument(
        "--dropout", choices=["off", "on", "both"], default="both", help="attention dropout compiled in (default: both)"
    )
    out = p.add_argument(
        "--out",
        type=output_file,
        help="JSON file to write the table and the versions to (default: print the table only)",
    )
    add_old_name(p, "--json", out)
    a = p.parse_args(argv)
    for option in ("kernels", "dtypes", "head_dims"):  # each value once: a repeat would be compiled again, cached
        values = [str(v) for v in getattr(a, option)]
        if repeated := sorted({v for v in values if values.count(v) > 1}):
            p.error(f"argument --{option.replace('_', '-')}: {', '.join(repeated)} given more than once")
    setup(a.verbose)
    _refuse_interpreter()
    try:
        import triton
    except ImportError:
        raise SystemExit("error: structmt-bench compile needs triton (pip install triton)") from None
    dropouts = {"off": [False], "on": [True], "both": [False, True]}[a.dropout]
    rows = []
    print(f"Triton {triton.__version__}, target sm_{a.arch}, C={a.candidates} candidates per query")
    header = ("kernel", "dtype", "dropout", "D", "warps", "regs", "spill B", "cubin B", "s")
    print("{:6} {:9} {:7} {:>4} {:>5} {:>4} {:>7} {:>8} {:>5}".format(*header))
    for kernel in a.kernels:
        for dtype in a.dtypes:
            for dropout in dropouts:
                for d in a.head_dims:
                    r = compile_kernel(
                        kernel, _DTYPES[dtype], dropout=dropout, head_dim=d, candidates=a.candidates, arch=a.arch
                    )
                    rows.append(r)
                    print(
                        f"{kernel:6} {dtype:9} {'on' if dropout else 'off':7} {d:>4} {r['num_warps']:>5} "
                        f"{r['registers']:>4} {r['spill_store_bytes']:>7} {r['cubin_bytes']:>8} "
                        f"{r['compile_seconds']:>5}"
                    )
    if a.out is not None:
        record = {
            "command": command_line("compile", argv),
            "triton": triton.__version__,
            "torch": torch.__version__,
            "arch": a.arch,
            "launch": {**LAUNCH, "layout": "contiguous (B, H, T, D)", "integers": "specialised as Triton's JIT does"},
            "git_commit": git_commit(),
            "machine": machine_label(),
            "kernels": rows,
        }
        write_text_atomic(a.out, json.dumps(record, indent=2) + "\n")
        print(f"wrote {a.out}")
