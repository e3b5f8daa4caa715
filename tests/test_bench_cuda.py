"""The GPU benchmark harness (``structmt-bench attention --device cuda``, ``train``/``decode --device
cuda``): its traffic floor, goals and table from synthetic rows, the plain message without a GPU,
the GPU section of BENCHMARKS.md, and the measuring loop itself on CPU tensors (Triton's
interpreter, wall clock). The real CUDA run is the ``cuda``-marked smoke test at the end."""

import os

import torch

if not torch.cuda.is_available():  # the Triton kernel on CPU tensors runs in Triton's interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")

import importlib  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402

import pytest  # noqa: E402
from conftest import TRITON_USABLE  # noqa: E402

from structmt.bench import attention_cuda as ac  # noqa: E402
from structmt.bench import common  # noqa: E402
from structmt.bench.report import render  # noqa: E402

MiB = 2**20


def test_traffic_floor_counts_every_tensor_once():
    # B=2, H=8, T=16384, D=64, C=9 candidates, bf16: X = one of q, k, v, out, their gradients
    x = 2 * 8 * 16384 * 64 * 2
    meta = 2 * 16384 * 9 * 8 + 2 * 8 * 16384 * 9 * 1  # int64 positions (B, T, C) + int8 kinds (B, H, T, C)
    floor = ac.traffic_floor_bytes(2, 8, 16384, 64, 9, elem_bytes=2)
    assert floor == {"fwd": 4 * x + meta, "fb": 11 * x + 2 * meta}
    assert floor["fb"] == 2 * 189_267_968  # per sequence: 11 * 16 MiB + 2 * 2.25 MiB
    # float32 doubles the tensors, not the positions and kinds
    assert ac.traffic_floor_bytes(2, 8, 16384, 64, 9, elem_bytes=4)["fwd"] == 8 * x + meta


def _results(triton_fb: float = 1.0, peak_32768: int = 4 * MiB) -> dict:
    """Rows at the goals' lengths: at T=16384 SDPA 12 ms, Flex 1.5 ms + 1 ms BlockMask, floor 0.4 ms."""
    rows = [
        {"T": 128, "batch": 256, "sdpa_flash_fb_s": 0.9e-3, "triton_fb_s": 1.0e-3, "triton_fb_peak_bytes": 4 * MiB},
        {"T": 1024, "batch": 32, "triton_fb_s": 1.0e-3, "triton_fb_peak_bytes": 4 * MiB},
        {"T": 16384, "batch": 2, "sdpa_flash_fb_s": 12e-3, "flex_fb_s": 1.5e-3, "flex_mask_s": 1.0e-3,
         "triton_fb_s": triton_fb * 1e-3, "floor_fb_s": 0.4e-3, "triton_fb_peak_bytes": int(4.4 * MiB)},
        {"T": 32768, "batch": 1, "triton_fb_s": 2e-3, "triton_fb_peak_bytes": peak_32768},
    ]  # fmt: skip
    return {"rows": rows}


def test_goals_are_computed_from_the_rows():
    measured = {g["goal"]: (round(g["measured"], 3), g["met"]) for g in ac.goals(_results())}
    assert measured == {
        "T=16384 f+b: SDPA flash / structmt Triton": (12.0, True),
        "T=16384 f+b: (Flex + its BlockMask build) / structmt Triton": (2.5, True),
        "T=16384 f+b: Flex (BlockMask prebuilt) / structmt Triton": (1.5, True),
        "T=16384 f+b: structmt Triton / HBM traffic floor": (2.5, True),
        "T=128 f+b: SDPA flash / structmt Triton": (0.9, True),
        "structmt Triton f+b peak memory per token, max / min over T = 1024…32768": (1.1, True),
    }
    slower = {g["goal"]: (round(g["measured"], 3), g["met"]) for g in ac.goals(_results(triton_fb=2.0))}
    assert slower["T=16384 f+b: SDPA flash / structmt Triton"] == (6.0, False)
    assert slower["T=16384 f+b: (Flex + its BlockMask build) / structmt Triton"] == (1.25, False)
    assert slower["T=16384 f+b: Flex (BlockMask prebuilt) / structmt Triton"] == (0.75, False)
    assert slower["T=16384 f+b: structmt Triton / HBM traffic floor"] == (5.0, False)
    growing = {g["goal"]: g for g in ac.goals(_results(peak_32768=8 * MiB))}
    assert growing["structmt Triton f+b peak memory per token, max / min over T = 1024…32768"]["measured"] == 2.0


def test_missing_measurements_are_null_and_not_met():
    results = _results()
    del results["rows"][2]["flex_mask_s"]  # the BlockMask build failed
    del results["rows"][3]  # no T=32768: flatness over 1024…32768 was not seen
    by_goal = {g["goal"]: g for g in ac.goals(results)}
    for goal in (
        "T=16384 f+b: (Flex + its BlockMask build) / structmt Triton",
        "structmt Triton f+b peak memory per token, max / min over T = 1024…32768",
    ):
        assert by_goal[goal]["measured"] is None and by_goal[goal]["met"] is False
    assert by_goal["T=16384 f+b: Flex (BlockMask prebuilt) / structmt Triton"]["met"] is True
    nothing = ac.goals({"rows": []})
    assert len(nothing) == 6 and all(g["measured"] is None and g["met"] is False for g in nothing)


def test_a_peak_of_zero_is_a_measurement_of_flatness_not_a_gap():
    """A peak of 0 bytes is measured, not missing: 0 per token everywhere is flat (1.0), 0 beside a non-zero
    peak is not (infinite); the T outside the span do not count."""
    row = {"T": 1000, "batch": 4}
    assert common.per_1k_tokens_mib(row | {"peak": 4 * MiB}, "peak") == 1.0
    assert common.per_1k_tokens_mib(row | {"peak": 0}, "peak") == 0.0
    assert common.per_1k_tokens_mib(row | {"peak": None}, "peak") is None
    assert common.flatness({1024: 0.0, 4096: 0.0}, (1024, 4096)) == 1.0
    assert common.flatness({1024: 0.0, 2048: 2.0, 4096: 1.0}, (1024, 4096)) == float("inf")
    assert common.flatness({512: 9.0, 1024: 1.0, 2048: 3.0, 4096: 1.5}, (1024, 4096)) == 3.0


def test_table_shows_times_ratios_failures_and_goals():
    results = _results()
    row = results["rows"][2]
    row.update({"sdpa_flash_fwd_s": 4e-3, "floor_fwd_s": 0.15e-3, "triton_fwd_s": 0.5e-3, "gather_fb_error": "OOM"})
    text = ac.table(results)
    line = next(x for x in text.splitlines() if x.startswith("| 16384 |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    head = [c.strip() for c in text.splitlines()[0].strip("|").split("|")]
    at = dict(zip(head, cells, strict=True))
    assert at["SDPA flash ms"] == "4 / 12"
    assert at["structmt Triton ms"] == "0.5 / 1"
    assert at["structmt gather ms"] == "– / fail"
    assert at["BlockMask build ms"] == "1"
    assert at["SDPA / Triton"] == "12.00×" and at["(Flex + mask) / Triton"] == "2.50×"
    assert at["Triton / floor"] == "2.50×"
    assert "- T=16384 gather_fb: OOM" in text
    assert "| T=16384 f+b: SDPA flash / structmt Triton | 12.00 | ≥ 10 | yes |" in text


def test_no_cuda_message_is_one_plain_line():
    assert common.no_cuda_message("attention", available=True) is None
    message = common.no_cuda_message("attention", available=False)
    assert message.startswith("no CUDA device: ") and message.endswith("run it on a GPU machine")
    assert "\n" not in message and "structmt-bench attention --device cuda" in message


@pytest.mark.parametrize(
    "command, argv",
    [
        ("attention", ["--device", "cuda", "--lengths", "128"]),
        ("train", ["--device", "cuda", "--bf16"]),
        ("decode", ["--device", "cuda", "--fp16", "--dense", "d.pt", "--structured", "s.pt", "--data", "bin"]),
    ],
)
def test_every_gpu_command_stops_with_the_plain_message_without_a_gpu(monkeypatch, command, argv):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    main = importlib.import_module(f"structmt.bench.{command}").main
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == f"error: {common.no_cuda_message(command, available=False)}"  # a string: exit status 1


@pytest.mark.parametrize("command", ["train", "decode"])
def test_half_precision_needs_cuda(command, capsys):
    main = importlib.import_module(f"structmt.bench.{command}").main
    argv = ["--bf16"] + (["--dense", "d", "--structured", "s", "--data", "b"] if command == "decode" else [])
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2 and "--bf16 and --fp16 need --device cuda" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_the_cli_without_a_gpu_exits_with_one_line_and_no_traceback():
    done = subprocess.run(
        [sys.executable, "-m", "structmt.bench", "attention", "--device", "cuda"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: no CUDA device: ") and last.endswith("run it on a GPU machine")


def test_report_has_a_gpu_section(tmp_path):
    assert "## GPU\n\nNot measured yet: run `scripts/gpu_session.sh`" in render(tmp_path)
    results = _results()
    results.update(
        device="NVIDIA H100 80GB HBM3",
        command="structmt-bench attention --device cuda --dtype bfloat16",
        machine={"cpu": "x", "python": "3.12", "commit": "abc"},
        commit="abc",
        hardware={"copy_gb_per_s": 3000.0, "copy_mb": 1024},
        settings={"heads": 8, "dim": 64, "dtype": "bfloat16", "tokens": 32768, "window": 3, "rare": 2,
                  "candidates": 9, "repeats": 20, "warmup": 3, "torch": "2.11", "cuda": "13.0", "triton": "3.6"},
    )  # fmt: skip
    (tmp_path / "gpu").mkdir()
    (tmp_path / "gpu" / "bench_attention_cuda.json").write_text(json.dumps(results))
    hyp = {"sentences": 10, "sentences_per_s": 50.0}
    decode = {
        "command": "structmt-bench decode --device cuda",
        "machine": {"cpu": "x"},
        "device": "NVIDIA H100 80GB HBM3",
        "precision": "fp32",
        "dense": hyp,
        "structured": hyp,
        "ratio": 1.0,
        "cache_keys_by_length": {"dense": {"8": 32}, "structured": {"8": 20}},
    }
    (tmp_path / "gpu" / "bench_decode.json").write_text(json.dumps(decode))
    text = render(tmp_path)
    gpu = text[text.index("## GPU") :]
    assert "Not measured yet" not in gpu
    assert "### Attention kernel on NVIDIA H100 80GB HBM3 (`gpu/bench_attention_cuda.json`)" in gpu
    assert "| T=16384 f+b: SDPA flash / structmt Triton | 12.00 | ≥ 10 | yes |" in gpu
    assert "### Beam-search decoding (`structmt-bench decode`) on NVIDIA H100 80GB HBM3, fp32" in gpu
    assert text.count("Not run yet") == 3  # the CPU sections


@pytest.mark.skipif(not TRITON_USABLE, reason="triton is not installed, or older than the kernels need")
def test_the_measuring_loop_runs_every_impl_and_mode(tmp_path):
    """On CPU tensors (wall clock, Triton's interpreter): one row with a time or a recorded failure
    for every (implementation, mode), the floor, and a JSON-ready record."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    impls = ["sdpa_flash", "triton", "gather"]
    results = ac.run([16], 16, 2, 16, 3, 2, torch.bfloat16, impls, ["fwd", "fb"], 1, 1, copy_mb=4, device=device)
    assert set(results) >= {"device", "machine", "commit", "settings", "hardware", "rows", "goals"}
    (row,) = results["rows"]
    assert row["T"] == 16 and row["batch"] == 1
    floor = ac.traffic_floor_bytes(1, 2, 16, 16, 9, 2)
    assert row["floor_fb_bytes"] == floor["fb"] and row["floor_fb_s"] > 0
    for impl in impls:
        for mode in ("fwd", "fb"):
            assert row[f"{impl}_{mode}_s"] > 0, row.get(f"{impl}_{mode}_error")
    json.dumps(results)


@pytest.mark.skipif(not TRITON_USABLE, reason="triton is not installed, or older than the kernels need")
def test_a_stopped_run_keeps_its_rows_and_its_printout_rebuilds_them(capsys):
    """``on_row`` sees every finished length (the CLI writes its JSON there), and the rows printed
    on the way rebuild the same times and failures (``--from-log``, for a run that never wrote any)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    impls, seen = ["sdpa_flash", "triton"], []
    results = ac.run([8, 16], 16, 2, 16, 3, 2, torch.float32, impls, ["fwd", "fb"], 1, 1, copy_mb=4, device=device,
                     on_row=lambda partial: seen.append(json.loads(json.dumps(partial))))  # fmt: skip
    assert [[r["T"] for r in s["rows"]] for s in seen] == [[8], [8, 16]]
    assert [s["complete"] for s in seen] == [False, False] and results["complete"] is True
    assert seen[1]["rows"] == json.loads(json.dumps(results["rows"]))
    printed = capsys.readouterr().out
    old_style = re.sub(r"  \[[\d:]+\]$", "", printed, flags=re.M)  # no clock time, as in older logs
    assert old_style != printed
    settings = {"lengths": [8, 16], "tokens": 16, "heads": 2, "dim": 16, "window": 3, "rare": 2,
                "dtype": "float32", "impls": impls, "modes": ["fwd", "fb"], "repeats": 1, "warmup": 1}  # fmt: skip
    for text in (printed, old_style):
        rebuilt = ac.record_from_logs([text], settings)
        assert [r["T"] for r in rebuilt["rows"]] == [8, 16] and rebuilt["complete"] is False
        for got, want in zip(rebuilt["rows"], results["rows"], strict=True):
            assert got["batch"] == want["batch"] and got["floor_fb_bytes"] == want["floor_fb_bytes"]
            for impl in impls:
                for mode in ("fwd", "fb"):
                    key = f"{impl}_{mode}"
                    if f"{key}_error" in want:
                        assert got[f"{key}_error"] == want[f"{key}_error"]
                    else:
                        assert got[f"{key}_s"] == pytest.approx(want[f"{key}_s"], abs=0.5e-6)
        assert rebuilt["hardware"]["copy_gb_per_s"] is None and "floor_fb_s" not in rebuilt["rows"][0]


def test_rebuilding_from_logs_parses_rows_failures_peaks_and_versions():
    settings = {"lengths": [128, 16384], "tokens": 32768, "heads": 8, "dim": 64, "window": 3, "rare": 2,
                "dtype": "bfloat16", "impls": ["sdpa_flash", "flex"], "modes": ["fwd", "fb"], "repeats": 5,
                "warmup": 2}  # fmt: skip
    first = "\n".join([
        "structmt ready: Python 3.12.3, torch 2.11.0+cu130 (CUDA 13.0, GPU visible: True)",
        "gpu_session: NVIDIA H200, torch 2.11.0+cu130 (CUDA 13.0), triton 3.6.0",
        "T=   128 sdpa_flash_fb           0.577 ms  peak +    258.0 MiB",
        "T= 16384 flex_fb                 2.461 ms  peak +    130.0 MiB",
        "T= 16384 sdpa_flash_fb           99.000 ms",
        "gpu_session: FAILED: attention ran out of its 180s",
    ])  # fmt: skip
    second = "\n".join([
        "T= 16384 sdpa_flash_fb          13.377 ms  peak +    258.0 MiB  [10:40:01]",
        "T= 16384 flex_fwd                failed: RuntimeError: out of memory  [10:40:02]",
    ])  # fmt: skip
    record = ac.record_from_logs([first, second], settings)
    short, long = record["rows"]
    assert (short["T"], short["batch"], long["batch"]) == (128, 256, 2)
    assert short["sdpa_flash_fb_s"] == pytest.approx(0.577e-3) and short["sdpa_flash_fb_peak_bytes"] == 258 * MiB
    assert long["sdpa_flash_fb_s"] == pytest.approx(13.377e-3)  # the later print wins
    assert long["flex_fwd_error"] == "RuntimeError: out of memory" and "flex_fb_s" not in long  # T=16384: the 2nd log
    assert long["floor_fb_bytes"] == ac.traffic_floor_bytes(2, 8, 16384, 64, 9, 2)["fb"]
    assert record["settings"]["torch"] == "2.11.0+cu130" and record["settings"]["triton"] == "3.6.0"
    assert record["machine"] == {"cpu": "not recorded", "python": "3.12.3"}
    measured = {g["goal"]: g["measured"] for g in record["goals"]}
    assert measured["T=16384 f+b: structmt Triton / HBM traffic floor"] is None
    with pytest.raises(ValueError, match="no benchmark rows"):
        ac.record_from_logs(["gpu_session: FAILED"], settings)


def test_from_log_needs_the_gpu_and_the_commit(tmp_path, capsys):
    log = tmp_path / "a.log"
    log.write_text("T=   128 sdpa_flash_fb           0.577 ms\n")
    with pytest.raises(SystemExit):
        ac.main(["--from-log", str(log), "--out", str(tmp_path / "x.json")])
    assert "--from-log needs --gpu" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ac.main(["--from-log", str(tmp_path / "missing.log"), "--gpu", "G", "--commit", "c"])
    assert "no such file" in capsys.readouterr().err
    ac.main(["--from-log", str(log), "--gpu", "NVIDIA H200", "--commit", "abc", "--lengths", "128",
             "--out", str(tmp_path / "x.json")])  # fmt: skip
    record = json.loads((tmp_path / "x.json").read_text())
    assert record["device"] == "NVIDIA H200" and record["commit"] == "abc" and record["rebuilt_from"] == [str(log)]
    (tmp_path / "gpu").mkdir()
    (tmp_path / "x.json").rename(tmp_path / "gpu" / "bench_attention_cuda.json")
    gpu = render(tmp_path).split("## GPU", 1)[1]
    assert "copy bandwidth measured in the same run: not measured" in gpu
    assert f"**Partial.** Rebuilt from the rows printed in `{log}`" in gpu
    assert "| 128 | 256 | – / 0.577 |" in gpu and "host not recorded; " in gpu
    assert "--gpu 'NVIDIA H200' --commit abc" in gpu  # the command as it can be pasted


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_benchmark_smoke(tmp_path):
    """``structmt-bench attention --device cuda`` end to end at tiny sizes: every implementation and
    mode measured (a Flex failure is reported, not fatal: the benchmark records it), memory, JSON."""
    from structmt.bench.attention import main

    out = tmp_path / "bench.json"
    main(["--device", "cuda", "--lengths", "128", "--tokens", "512", "--repeats", "3", "--warmup", "2"]
         + ["--copy-mb", "64", "--out", str(out)])  # fmt: skip
    record = json.loads(out.read_text())
    assert record["device"] == torch.cuda.get_device_name() and record["hardware"]["copy_gb_per_s"] > 0
    assert len(record["goals"]) == 6
    for row in record["rows"]:
        for impl in ("sdpa_flash", "triton", "triton_kernel", "gather"):
            for mode in ("fwd", "fb"):
                assert row.get(f"{impl}_{mode}_s", 0) > 0, row.get(f"{impl}_{mode}_error")
                assert row[f"{impl}_{mode}_peak_bytes"] > 0
        flex = {k: v for k, v in row.items() if k.startswith("flex") and k.endswith("_error")}
        if flex:
            warnings.warn(f"T={row['T']}: FlexAttention failed: {flex}", stacklevel=1)
        else:
            assert row["flex_fb_s"] > 0 and row["flex_mask_s"] > 0


@pytest.mark.skipif(not TRITON_USABLE, reason="triton is not installed, or older than the kernels need")
def test_the_kernel_alone_and_the_gather_path_compute_what_the_triton_call_computes():
    from structmt.attention import structured_attention, triton_kernel
    from structmt.bench.workload import bench_structure

    device = "cuda" if torch.cuda.is_available() else "cpu"
    q, k, v, rare_index = ac.inputs(16, 16, 2, 16, 2, torch.float32, device)
    structure = bench_structure(2, 3, 2)
    full = structured_attention(q, k, v, window=3, rare_index=rare_index, impl="triton", structure=structure)
    index, kind = ac.candidates(q, rare_index, structure)
    alone = triton_kernel.candidate_attention(q, k, v, index, kind, 16**-0.5, structure.sink_eps)[0]
    # "efficient" never runs Triton: on a GPU the gathered copies; on CPU float32 tensors the C++ kernel
    gathered = structured_attention(q, k, v, window=3, rare_index=rare_index, impl="efficient", structure=structure)
    assert torch.equal(alone, full)
    assert torch.allclose(gathered, full, atol=1e-5)
