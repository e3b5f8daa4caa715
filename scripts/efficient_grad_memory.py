"""Peak memory one efficient-path step adds at T=8192 (float32, 8 heads, head size 64, w=3, r=2), with the
attention benchmark's loss ``out.sum()`` (an expanded, stride-0 gradient) or a contiguous gradient of the
output's shape (as a model's output projection gives).  One case per process, as the benchmark measures:

    python scripts/efficient_grad_memory.py sum
    python scripts/efficient_grad_memory.py grad
"""

from __future__ import annotations

import ctypes
import sys

import torch

from structmt.attention import structured_attention
from structmt.bench.workload import bench_structure, inputs


def _status(key: str) -> float:
    """``/proc/self/status``'s ``key`` in MiB."""
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith(key)).split()[1]) / 1024


def main(mode: str) -> None:
    if mode not in ("sum", "grad"):
        raise SystemExit("give sum or grad")
    q, k, v, rare = inputs(8192, 8192, 8, 64, 2)
    structure = bench_structure(8, 3, 2)
    q, k, v = (t.clone().requires_grad_() for t in (q, k, v))
    grad = torch.randn(1, 8, 8192, 64)

    def step() -> None:
        out = structured_attention(q, k, v, window=3, rare_index=rare, impl="efficient", structure=structure)
        if mode == "sum":
            out.sum().backward()
        else:
            out.backward(grad)
        q.grad = k.grad = v.grad = None

    step()  # warm-up: allocations the step keeps are not counted
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident size
    base = _status("VmRSS")
    step()
    print(f"{mode}: peak added {_status('VmHWM') - base:.1f} MiB")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "")
