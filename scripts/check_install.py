"""Says what an installed structmt environment has: python scripts/check_install.py

Run by `make install` and scripts/install_offline.sh after installing. Fails (exit 1)
when structmt or fairseq does not import; the C++ kernel and Triton are optional and
only reported, except that `--require-kernel` (make install: the tests need it) fails
without the C++ kernel, saying how to see why it was not built.
"""

import importlib
import platform
import sys


def _version(module: str) -> str:
    try:
        return getattr(importlib.import_module(module), "__version__", "?")
    except Exception as err:  # optional parts: report why they are missing
        return f"not available ({type(err).__name__}: {err})"


def main(argv: list[str] | None = None) -> int:
    require_kernel = "--require-kernel" in (sys.argv[1:] if argv is None else argv)
    import torch

    import structmt  # noqa: F401  (first: it imports fairseq without fairseq's import-time log lines)

    try:
        fairseq = importlib.import_module("fairseq")  # the two imports that must work
    except ModuleNotFoundError as err:
        if err.name != "fairseq":
            raise
        print(
            "error: fairseq is not installed: env -u CUDA_HOME pip install --no-deps --no-build-isolation "
            "fairseq-fixed==0.12.3.1 "
            "(the fork that imports on Python 3.11+; --no-deps: its metadata asks for torchaudio, which would "
            "replace your torch; see docs/install.md)",
            file=sys.stderr,
        )
        return 1
    from structmt.attention.triton_kernel import TritonTooOld, check_triton_version, unusable

    try:
        importlib.import_module("structmt._kernels")
        kernel = "built"
    except ImportError as err:
        kernel = f"not built or not loadable ({err}); the pure-PyTorch path is used"
    cuda = f"CUDA {torch.version.cuda}, GPU visible: {torch.cuda.is_available()}" if torch.version.cuda else "CPU build"
    print(f"structmt ready: Python {platform.python_version()}, torch {torch.__version__} ({cuda})")
    triton = _version("triton")
    if not triton.startswith("not available"):
        try:
            check_triton_version(triton)
        except TritonTooOld as err:
            triton += f" (the Triton kernels are not used: {err})"
        else:
            if torch.cuda.is_available() and (why := unusable("cuda")):
                triton += f" (the Triton kernels are not used on this GPU: {why})"
    print(f"  fairseq {fairseq.__version__}, triton {triton}, C++ kernel: {kernel}")
    if require_kernel and kernel != "built":
        print(
            "error: the C++ kernel was not built (it needs a C++ compiler, torch's headers, and an install with "
            "--no-build-isolation: an isolated build does not see torch and skips it); "
            ".venv/bin/pip install -v --no-build-isolation --no-deps -e . shows why",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
