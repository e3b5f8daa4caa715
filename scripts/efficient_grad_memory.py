"""Peak memory one efficient-path step adds (``structmt-bench attention``'s own measurement, a fresh process per
case) with the benchmark's loss ``out.sum()``, whose gradient is expanded (stride 0), and with a contiguous
gradient of the output's shape, as a model's output projection gives.  T=8192, the benchmark's defaults
otherwise (8192 tokens, 8 heads, head size 64, w=3, r=2):

    python scripts/efficient_grad_memory.py
"""

from __future__ import annotations

from structmt.bench.attention import peak_bytes

if __name__ == "__main__":
    for impl in ("efficient", "efficient_grad"):
        mib = peak_bytes(impl, length=8192, tokens=8192, heads=8, dim=64, rare=2, window=3) / 2**20
        print(f"{impl}: peak added {mib:.1f} MiB")
