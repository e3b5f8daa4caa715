"""The Triton kernels compile for an H100 (sm_90) with Triton's real backend, no GPU needed.

Triton's interpreter (``test_triton_kernel.py``) checks what the kernels compute but compiles nothing;
here ``structmt-bench compile`` lowers them to a cubin with ``ptxas``, in a process without
``TRITON_INTERPRET`` (the interpreter tests set it for the whole pytest process), and the register
report must show no spills. One configuration (the backward, bf16, with dropout: every code path)
runs in ``make test``; every dtype × dropout × head size is marked slow.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TRITON_USABLE

from structmt.attention.triton_kernel import release
from structmt.bench import kernel_compile

# found, not imported: triton imported before test_triton_kernel.py sets TRITON_INTERPRET (at its collection)
# would define triton's own library functions for the GPU, and the interpreter tests would fail
_TRITON = importlib.util.find_spec("triton")
if not TRITON_USABLE or not any((Path(d) / "backends" / "nvidia").is_dir() for d in _TRITON.submodule_search_locations):
    pytest.skip("triton (new enough for the kernels) with its NVIDIA backend is not installed", allow_module_level=True)
_VERSION = importlib.metadata.version("triton")  # TRITON_USABLE: this distribution is installed
if release(_VERSION) < kernel_compile.MIN_TRITON:
    pytest.skip(f"structmt-bench compile needs a newer Triton than {_VERSION}", allow_module_level=True)


def _compile(tmp_path, *args: str) -> list[dict]:
    out = tmp_path / "compile.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "structmt.bench", "compile", "--arch", "90", "--out", str(out), *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    record = json.loads(out.read_text())
    assert record["arch"] == 90 and record["triton"]
    assert record["command"] == shlex.join(["structmt-bench", *cmd[3:]])
    return record["kernels"]


def _assert_compiled_without_spills(rows: list[dict]) -> None:
    for r in rows:
        assert r["cubin_bytes"] > 0 and 0 < r["registers"] <= 255, r
        assert r["spill_store_bytes"] == 0 and r["spill_load_bytes"] == 0, r


def test_the_backward_kernel_compiles_for_sm90_in_bf16_with_dropout_without_spills(tmp_path):
    rows = _compile(tmp_path, "--kernels", "bwd", "--dtypes", "bfloat16", "--dropout", "on")
    assert [(r["kernel"], r["dtype"], r["dropout"], r["head_dim"]) for r in rows] == [("bwd", "bfloat16", True, 64)]
    assert (rows[0]["BLOCK_C"], rows[0]["BLOCK_D"]) == (16, 64)
    _assert_compiled_without_spills(rows)


@pytest.mark.slow
def test_every_kernel_dtype_dropout_and_head_size_compiles_for_sm90_without_spills(tmp_path):
    rows = _compile(tmp_path, "--head-dims", "64", "128")
    assert len(rows) == 2 * 3 * 2 * 2
    _assert_compiled_without_spills(rows)


def test_compile_refuses_the_interpreter_and_bad_sizes(monkeypatch, capsys):
    from structmt.bench.kernel_compile import main

    for argv, says in (
        (["--head-dims", "0"], "argument --head-dims: must be >= 1, got 0"),
        (["--candidates", "0"], "argument --candidates: must be >= 1, got 0"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2 and says in capsys.readouterr().err
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # refused before triton is imported: no kernel is defined here
    with pytest.raises(SystemExit, match="unset TRITON_INTERPRET"):
        main(["--kernels", "fwd", "--dtypes", "float32", "--dropout", "off"])
