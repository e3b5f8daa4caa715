"""What ``structmt-bench`` refuses and how it measures side by side, without running a benchmark:
options are checked by argparse before anything is measured; ``--from-log`` takes every value of
one length from one run; dense and structured take turns going first, after an untimed warm-up of
each; a goal over a span needs both ends; a ratio is printed so that it never seems to contradict
its verdict; ``structmt-bench report`` names a bad folder or file and states the settings its
JSON records. (Fakes stand in for fairseq-train, beam search and the attention steps.)"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import copy_benchmark_inputs, write_split

from structmt.bench import attention as cpu
from structmt.bench import attention_cuda as ac
from structmt.bench import decode, report, train
from structmt.bench.common import side_by_side, verdict_number
from structmt.files import DataError

REPO = Path(__file__).resolve().parents[1]
MiB = 2**20


def _argparse_error(main, argv, capsys) -> str:
    """The one-line error argparse printed for ``main(argv)`` (exit status 2)."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def _no_measurement(*args, **kwargs):
    raise AssertionError("measured although an option was bad")


# --------------------------------------------------------------------------------------------------
# #11 attention (CPU and CUDA): lengths, impls, modes, repeats, rare are checked before measuring

CPU_IMPLS = "sdpa, fairseq_mha, flex, reference, efficient, efficient_fwd"
NOT_INTS = "expected positive integers separated by commas"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--lengths=-16"], "argument --lengths: '-16': every number must be >= 1, got -16"),
        (["--lengths", "0"], "argument --lengths: '0': every number must be >= 1, got 0"),
        (["--lengths", ""], f"argument --lengths: '': {NOT_INTS}, '' is not an integer"),
        (["--lengths", "16,"], f"argument --lengths: '16,': {NOT_INTS}, '' is not an integer"),
        (["--lengths", "16,x"], f"argument --lengths: '16,x': {NOT_INTS}, 'x' is not an integer"),
        (["--impls", "foo"], f"argument --impls: 'foo': unknown 'foo'; choose from {CPU_IMPLS}"),
        (["--impls", ""], f"argument --impls: '': expected names separated by commas, from {CPU_IMPLS}"),
        (["--impls", "sdpa,sdpa"], "argument --impls: 'sdpa,sdpa': sdpa given more than once"),
        (["--repeats", "0"], "argument --repeats: must be >= 1, got 0"),
        (["--repeats", "-1"], "argument --repeats: must be >= 1, got -1"),
        (["--rare", "-1"], "argument --rare: must be >= 0, got -1"),
        (["--tokens", "0"], "argument --tokens: must be >= 1, got 0"),
    ],
)  # fmt: skip
def test_cpu_attention_refuses_bad_options_before_measuring(argv, message, monkeypatch, capsys):
    monkeypatch.setattr(cpu, "run", _no_measurement)
    monkeypatch.setattr(cpu, "hardware", _no_measurement)
    assert _argparse_error(cpu.main, argv, capsys).endswith(f": error: {message}")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--lengths", "0"], "argument --lengths: '0': every number must be >= 1, got 0"),
        (["--lengths=-128"], "argument --lengths: '-128': every number must be >= 1, got -128"),
        (["--impls", "triton,foo"], "argument --impls: 'triton,foo': unknown 'foo'; choose from "
                                    "sdpa_flash, flex, triton, triton_kernel, gather"),
        (["--modes", "fb,bwd"], "argument --modes: 'fb,bwd': unknown 'bwd'; choose from fwd, fb"),
        (["--repeats", "0"], "argument --repeats: must be >= 1, got 0"),
        (["--warmup", "-1"], "argument --warmup: must be >= 0, got -1"),
        (["--rare", "-2"], "argument --rare: must be >= 0, got -2"),
    ],
)  # fmt: skip
def test_cuda_attention_refuses_bad_options_before_measuring(argv, message, monkeypatch, capsys):
    monkeypatch.setattr(ac, "run", _no_measurement)
    monkeypatch.setattr(ac, "require_cuda", _no_measurement)  # argparse answers first, GPU or not
    err = _argparse_error(cpu.main, ["--device", "cuda", *argv], capsys)
    assert err == f"structmt-bench attention --device cuda: error: {message}"


def test_the_cpu_cli_passes_parsed_lists_and_prints_what_the_flex_ratio_times(tmp_path, monkeypatch, capsys):
    """#10: the Flex / efficient forward ratio is labelled: Flex's BlockMask is built outside its timed step (the
    label printed when both are measured). The defaults: every length 32…8192, peak memory measured, the O(T²)
    implementations up to T=8192; the JSON records the command and the goals, the last line the machine's rates."""
    seen = {}

    def fake_run(lengths, tokens, heads, dim, window, rare, impls, repeats, memory, dense_limit):
        seen.update(lengths=lengths, impls=impls, repeats=repeats, memory=memory, dense_limit=dense_limit)
        row = {"T": 16, "batch": 1, "flex_s": 0.3, "efficient_fwd_s": 0.1, "floor_s": 0.1}
        return {"machine": "m", "hardware": {"copy_gb_per_s": 1.0, "matmul_gflop_per_s": 2.0}, "rows": [row]}

    monkeypatch.setattr(cpu, "run", fake_run)
    monkeypatch.setattr(cpu, "plot", lambda results, png: None)
    cpu.main(["--lengths", "16,32", "--impls", "flex,efficient_fwd", "--out", str(tmp_path / "b")])
    assert seen == {"lengths": [16, 32], "impls": ["flex", "efficient_fwd"], "repeats": 5, "memory": True,
                    "dense_limit": 8192}  # fmt: skip
    out = capsys.readouterr().out
    assert (
        "\nFlex fwd / efficient fwd: Flex's BlockMask is built once per T, outside its timed step; efficient_fwd "
        "builds its plan and candidates inside every timed step (conservative for the ≥ 3 verdict).\n"
    ) in out
    assert "outside its timed step" in cpu.__doc__ and "conservative" in cpu.__doc__
    assert out.startswith(f"wrote {tmp_path / 'b.json'} and {tmp_path / 'b.png'}\n")
    assert out.endswith("\ncopy bandwidth 1.0 GB/s, matmul 2.0 GFLOP/s; m\n")
    record = json.loads((tmp_path / "b.json").read_text())
    command = f"structmt-bench attention --lengths 16,32 --impls flex,efficient_fwd --out {tmp_path / 'b'}"
    assert record["command"] == command
    assert record["goals"][1] == {"goal": "T=4096: Flex fwd / efficient fwd", "measured": None, "target": "≥ 3",
                                  "met": False}  # fmt: skip
    cpu.main(["--impls", "flex", "--no-memory", "--out", str(tmp_path / "c")])
    assert seen == {"lengths": [32, 128, 512, 1024, 2048, 4096, 8192], "impls": ["flex"], "repeats": 5,
                    "memory": False, "dense_limit": 8192}  # fmt: skip
    assert "BlockMask" not in capsys.readouterr().out  # no efficient_fwd: no ratio to label


def test_the_cpu_run_records_every_measurement_and_skips_the_quadratic_ones_only_above_the_dense_limit(
    monkeypatch, capsys
):
    """``run``: each implementation's median time over ``repeats`` steps, whether it includes the backward pass
    and its peak memory (not efficient_fwd's: no training step), the O(T²) ones skipped above ``dense_limit`` only
    (T = the limit is measured), a peak of 0 bytes printed as measured, and each length's memory-traffic floor:
    T=16 (batch 2) and T=32 (batch 1) both move 64 rows × (2·6+2 + 4·6+3 of C=6 candidates) × 8 floats × 4 bytes
    = 83968 bytes, at 2 GB/s. (Fakes stand in for the steps, the clock, the memory probe and the machine.)"""
    timed, probed = [], []

    def median_time(step, repeats, warmup, device):
        timed.append((*step(), repeats, warmup, device))
        return 0.004

    def peak_bytes(impl, length, tokens, heads, dim, rare, window):
        probed.append((impl, length, tokens, heads, dim, rare, window))
        return {"sdpa": 3 * MiB, "efficient": 0}.get(impl, -1)  # -1: not measured

    def make_step(impl, q, k, v, rare_index, window):
        return lambda: (impl, q.size(0), q.size(2)), impl not in ("flex", "efficient_fwd")

    monkeypatch.setattr(cpu, "make_step", make_step)
    monkeypatch.setattr(cpu, "median_time", median_time)
    monkeypatch.setattr(cpu, "peak_bytes", peak_bytes)
    monkeypatch.setattr(cpu, "hardware", lambda: {"copy_gb_per_s": 2.0, "matmul_gflop_per_s": 1.0})
    monkeypatch.setattr(cpu, "machine", lambda: "m")
    record = cpu.run([16, 32], 32, 2, 8, 2, 1, list(cpu.CPU_IMPLS), repeats=3, memory=True, dense_limit=16)
    kernel = record["settings"].pop("efficient_kernel")
    assert kernel in ("fused", "gather")
    assert record["settings"] == {"tokens": 32, "heads": 2, "dim": 8, "window": 2, "rare": 1, "repeats": 3}
    assert record["machine"] == "m" and record["hardware"] == {"copy_gb_per_s": 2.0, "matmul_gflop_per_s": 1.0}
    floor = 83968 / 2e9

    def measured(impl, peak):
        return {f"{impl}_s": 0.004, f"{impl}_backward": impl != "flex", f"{impl}_peak_bytes": peak}

    everything = {"T": 16, "batch": 2, **measured("sdpa", 3 * MiB), **measured("fairseq_mha", -1)}
    everything |= {**measured("flex", -1), **measured("reference", -1), **measured("efficient", 0)}
    everything |= {"efficient_fwd_s": 0.004, "efficient_fwd_backward": False, "floor_s": floor}
    linear = {"T": 32, "batch": 1, **measured("flex", -1), **measured("efficient", 0)}
    linear |= {"efficient_fwd_s": 0.004, "efficient_fwd_backward": False, "floor_s": floor}
    assert record["rows"] == [everything, linear]
    impls_16, impls_32 = list(cpu.CPU_IMPLS), ["flex", "efficient", "efficient_fwd"]
    assert timed == [(i, 2, 16, 3, 1, "cpu") for i in impls_16] + [(i, 1, 32, 3, 1, "cpu") for i in impls_32]
    assert probed == [(i, 16, 32, 2, 8, 1, 2) for i in impls_16[:-1]] + [(i, 32, 32, 2, 8, 1, 2) for i in impls_32[:-1]]
    assert capsys.readouterr().out.splitlines() == [
        "T=   16 sdpa              4.00 ms  peak      3.0 MiB",
        "T=   16 fairseq_mha       4.00 ms",
        "T=   16 flex              4.00 ms",
        "T=   16 reference         4.00 ms",
        "T=   16 efficient         4.00 ms  peak      0.0 MiB",
        "T=   16 efficient_fwd      4.00 ms",
        "T=   32 flex              4.00 ms",
        "T=   32 efficient         4.00 ms  peak      0.0 MiB",
        "T=   32 efficient_fwd      4.00 ms",
    ]
    cpu.run([16], 32, 2, 8, 2, 1, ["sdpa", "efficient"], repeats=1, memory=False, dense_limit=15)
    assert probed[-1][:2] == ("efficient", 32) and capsys.readouterr().out == "T=   16 efficient         4.00 ms\n"


def test_the_cpu_hardware_rates_count_the_bytes_and_flops_they_move(monkeypatch):
    """The copy bandwidth counts each byte read and written (a 1 MiB copy in 0.5 s: 4.194304 MB/s), the matmul
    rate the 2·2048³ flops of a 2048 × 2048 product."""
    monkeypatch.setattr(cpu, "median_time", lambda step, repeats, warmup, device: 0.5)
    rates = cpu.hardware(1)
    assert rates == {"copy_gb_per_s": pytest.approx(0.004194304), "matmul_gflop_per_s": pytest.approx(34.359738368)}


# --------------------------------------------------------------------------------------------------
# #12 train and decode, #15 compile


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--updates", "0"], "argument --updates: must be >= 2, got 0"),
        (["--rounds", "0"], "argument --rounds: must be >= 1, got 0"),
        (["--doc-tokens", "512,"], "argument --doc-tokens: '512,': expected positive integers separated by commas, "
                                   "'' is not an integer"),
        (["--doc-tokens", "0"], "argument --doc-tokens: '0': every number must be >= 1, got 0"),
        (["--warmup-updates", "-1"], "argument --warmup-updates: must be >= 0, got -1"),
        (["--cross-window", "-2"], "argument --cross-window: must be >= -1, got -2"),
    ],
)  # fmt: skip
def test_train_refuses_bad_options_before_measuring(argv, message, monkeypatch, capsys):
    monkeypatch.setattr(train, "prepare_dataset", _no_measurement)
    monkeypatch.setattr(train, "measure", _no_measurement)
    assert _argparse_error(train.main, argv, capsys).endswith(f": error: {message}")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--repeats", "0"], "argument --repeats: must be >= 1, got 0"),
        (["--beam", "0"], "argument --beam: must be >= 1, got 0"),
        (["--batch-size", "0"], "argument --batch-size: must be >= 1, got 0"),
    ],
)
def test_decode_refuses_bad_options_before_loading_a_model(argv, message, monkeypatch, capsys):
    monkeypatch.setattr(decode, "load_model", _no_measurement)
    argv = ["--dense", "d.pt", "--structured", "s.pt", "--data", "bin", *argv]
    assert _argparse_error(decode.main, argv, capsys).endswith(f": error: {message}")


def test_decode_and_analyze_refuse_a_split_the_data_bin_lacks_before_loading_a_model(dict_dir, monkeypatch, capsys):
    from structmt.analysis import report as analyze

    for name in ("test.en-de.en.bin", "test.en-de.de.bin", "valid.en-de.en.bin"):
        (dict_dir / name).write_bytes(b"")
    (dict_dir / "model.pt").write_bytes(b"")
    monkeypatch.setattr(decode, "load_model", _no_measurement)
    monkeypatch.setattr(analyze, "analyze", _no_measurement)
    argv = ["--dense", "d.pt", "--structured", "s.pt", "--data-bin", str(dict_dir), "--subset", "tset"]
    said = f"error: --subset tset: {dict_dir} has no such split (it has: test, valid)"
    assert _argparse_error(decode.main, argv, capsys).endswith(said)
    assert _argparse_error(
        analyze.main, [str(dict_dir / "model.pt"), str(dict_dir), "--subset", "tset"], capsys
    ).endswith(said)
    argv = ["--dense", "d.pt", "--structured", "s.pt", "--data-bin", str(dict_dir / "nope")]
    no_folder = f"error: {dict_dir / 'nope'}: no such folder; give the data-bin the model was trained on"
    assert _argparse_error(decode.main, argv, capsys).endswith(no_folder)


def test_a_damaged_split_is_named_before_a_model_loads(data_bin, tmp_path, monkeypatch, capsys):
    """A split file that is empty, cut short, without its index, or of another sentence count than its partner:
    named with what to do, before a model loads (fairseq failed deep inside, naming no file: "cannot mmap an
    empty file", "offset must be non-negative...", an AssertionError)."""
    from structmt.analysis import report as analyze
    from structmt.files import split_problem

    assert split_problem(data_bin, "test") == ""
    again = "; binarize the data again (structmt-prepare, or fairseq-preprocess)"
    src = "test.en-de.en"

    def damaged(change) -> str:
        folder = tmp_path / f"bin{len(list(tmp_path.iterdir()))}"
        shutil.copytree(data_bin, folder)
        change(folder)
        return split_problem(folder, "test").replace(str(folder), "BIN")

    size = (data_bin / f"{src}.bin").stat().st_size
    assert damaged(lambda f: (f / f"{src}.bin").write_bytes(b"")) == (
        f"--subset test: BIN/{src}.bin is cut short (0 bytes of the {size} its index gives){again}"
    )
    assert damaged(lambda f: os.truncate(f / f"{src}.bin", size - 1)) == (
        f"--subset test: BIN/{src}.bin is cut short ({size - 1} bytes of the {size} its index gives){again}"
    )
    assert damaged(lambda f: (f / f"{src}.idx").unlink()) == f"--subset test: BIN/{src}.idx is missing{again}"
    assert damaged(lambda f: os.truncate(f / f"{src}.idx", 5)) == (
        f"--subset test: BIN/{src}.idx is empty or cut short{again}"
    )
    assert damaged(lambda f: os.truncate(f / f"{src}.idx", 40)).startswith(
        f"--subset test: BIN/{src}.idx is damaged (ValueError: "
    )
    assert damaged(lambda f: shutil.copy(f / "valid.en-de.en.idx", f / f"{src}.idx")).startswith(
        f"--subset test: BIN/{src}.bin is cut short ("  # valid's index: more sentences than test's file holds
    )
    mixed = damaged(lambda f: [shutil.copy(data_bin / f"train.en-de.en.{e}", f / f"{src}.{e}") for e in ("bin", "idx")])
    counts = re.fullmatch(
        r"--subset test: its files hold different numbers of sentences \(test.en-de.de.bin 60, test.en-de.en.bin "
        r"(\d+)\); binarize it again",
        mixed,
    )
    assert counts and int(counts[1]) > 60, mixed  # train's English beside test's German
    pairs = [(f"train.en-de.{lang}.{e}", f"test.de-en.{lang}.{e}") for lang in ("en", "de") for e in ("bin", "idx")]
    other_pair = damaged(lambda f: [shutil.copy(data_bin / a, f / b) for a, b in pairs])  # another pair: its own count
    assert other_pair == ""
    empty = tmp_path / "empty"
    shutil.copytree(data_bin, empty)
    subprocess.run(  # fairseq-preprocess of an empty test split
        [sys.executable, "-c", "import sys; from fairseq.data import indexed_dataset as d\n"
         "for lang in ('en', 'de'):\n"
         "    b = d.make_builder(sys.argv[1] + f'/test.en-de.{lang}.bin', 'mmap', vocab_size=100)\n"
         "    b.finalize(sys.argv[1] + f'/test.en-de.{lang}.idx')", str(empty)],
        check=True,
    )  # fmt: skip
    assert split_problem(empty, "test") == f"--subset test: {empty}/test.en-de.de.bin holds no sentences{again}"
    monkeypatch.setattr(analyze, "analyze", _no_measurement)
    said = _argparse_error(analyze.main, [str(data_bin / "dict.en.txt"), str(empty)], capsys)
    assert said.endswith(f"error: --subset test: {empty}/test.en-de.de.bin holds no sentences{again}")


def test_a_split_in_another_of_fairseqs_formats_is_left_to_fairseq(tmp_path):
    """Only the default format of fairseq-preprocess is checked; a split binarized with ``--dataset-impl lazy``
    (another index header) is no damage."""
    import torch
    from fairseq.data import indexed_dataset

    from structmt.files import split_problem

    for lang in ("en", "de"):
        builder = indexed_dataset.make_builder(str(tmp_path / f"test.en-de.{lang}.bin"), "lazy", vocab_size=100)
        builder.add_item(torch.IntTensor([4, 5, 2]))
        builder.finalize(str(tmp_path / f"test.en-de.{lang}.idx"))
    assert (tmp_path / "test.en-de.en.idx").read_bytes()[:8] == b"TNTIDX\x00\x00"
    assert split_problem(tmp_path, "test") == ""


def test_compile_refuses_a_value_given_twice(capsys):
    from structmt.bench.kernel_compile import main

    for argv, said in (
        (["--dtypes", "float32", "float32"], "argument --dtypes: float32 given more than once"),
        (["--head-dims", "64", "128", "64"], "argument --head-dims: 64 given more than once"),
        (["--kernels", "fwd", "fwd"], "argument --kernels: fwd given more than once"),
    ):
        assert _argparse_error(main, argv, capsys).endswith(said)


@pytest.mark.parametrize("arch", ["0", "91", "101"])
def test_compile_refuses_an_architecture_llvm_would_abort_on(arch, capsys):
    from structmt.bench.kernel_compile import main

    err = _argparse_error(main, ["--arch", arch], capsys)  # before triton is imported
    assert err == (
        f"structmt-bench compile: error: argument --arch: invalid choice: {arch} "
        "(choose from 70, 72, 75, 80, 86, 87, 89, 90, 100, 103, 110, 120, 121)"
    )


# --------------------------------------------------------------------------------------------------
# #7 --from-log: every value of one length from one run

SETTINGS = {"lengths": [128, 16384], "tokens": 32768, "heads": 8, "dim": 64, "window": 3, "rare": 2,
            "dtype": "bfloat16", "impls": ["sdpa_flash", "triton"], "modes": ["fb"], "repeats": 5,
            "warmup": 2}  # fmt: skip
SDPA_GOAL = "T=16384 f+b: SDPA flash / structmt Triton"


def test_from_log_takes_a_length_from_the_last_log_that_has_it_not_key_by_key():
    first = "T= 16384 sdpa_flash_fb          13.377 ms\nT= 16384 triton_fb               3.656 ms\n"
    second = "T= 16384 triton_fb               1.000 ms\n"
    record = ac.record_from_logs([first, second], SETTINGS)
    (row,) = record["rows"]
    assert row["triton_fb_s"] == pytest.approx(1e-3) and "sdpa_flash_fb_s" not in row  # not 13.377 / 1.000
    goal = next(g for g in record["goals"] if g["goal"] == SDPA_GOAL)
    assert goal["measured"] is None and goal["met"] is False
    alone = next(g for g in ac.record_from_logs([first], SETTINGS)["goals"] if g["goal"] == SDPA_GOAL)
    assert alone["measured"] == pytest.approx(13.377 / 3.656)  # one run: its own ratio


def test_from_log_a_second_run_in_one_log_replaces_the_first_runs_values():
    log = "\n".join([
        "T=   128 sdpa_flash_fb           0.600 ms",
        "T=   128 triton_fb               3.500 ms",
        "T= 16384 sdpa_flash_fb          13.377 ms",  # another length: the block of T=128 ends
        "T= 16384 triton_fb               3.656 ms",
        "T= 16384 triton_fb               1.000 ms  [10:40:02]",  # the same measurement again: a new run
        "T=   128 triton_fb               2.000 ms",  # T=128 again, after another length: a new run
    ])  # fmt: skip
    short, long = ac.record_from_logs([log], SETTINGS)["rows"]
    assert short["triton_fb_s"] == pytest.approx(2e-3) and "sdpa_flash_fb_s" not in short
    assert long["triton_fb_s"] == pytest.approx(1e-3) and "sdpa_flash_fb_s" not in long
    # a run stopped inside T=16384 after SDPA, then a run of Triton alone appended to the same log: the line
    # each run starts with (or gpu_session.sh's before it) ends the block, the two runs' values never form a ratio
    for start in (
        f"{ac.RUN_STARTS} (structmt-bench attention --impls triton)",
        "gpu_session: == attention (at most 60s)",
    ):
        stopped = ["T= 16384 sdpa_flash_fb          15.000 ms", start, "T= 16384 triton_fb               1.000 ms"]
        record = ac.record_from_logs(["\n".join(stopped)], SETTINGS)
        assert record["rows"][0].keys() & {"sdpa_flash_fb_s", "triton_fb_s"} == {"triton_fb_s"}
        assert next(g for g in record["goals"] if g["goal"] == SDPA_GOAL)["measured"] is None


def test_a_cuda_run_prints_the_line_that_tells_its_rows_from_an_earlier_runs_first(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ac, "require_cuda", lambda command: None)

    def run(*args, **kwargs):  # the measurements start: the line is printed already
        assert capsys.readouterr().out.startswith(f"{ac.RUN_STARTS} (structmt-bench attention ")
        raise KeyboardInterrupt

    monkeypatch.setattr(ac, "run", run)
    with pytest.raises(KeyboardInterrupt):
        ac.main(["--lengths", "128", "--out", str(tmp_path / "x.json")])


def test_from_log_cli_writes_the_one_run_record(tmp_path, capsys):
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    logs[0].write_text("T= 16384 sdpa_flash_fb          13.377 ms\nT= 16384 triton_fb               3.656 ms\n")
    logs[1].write_text("T= 16384 triton_fb               1.000 ms\n")
    out = tmp_path / "x.json"
    argv = ["--device", "cuda", "--from-log", *map(str, logs), "--gpu", "G", "--commit", "c", "--out", str(out)]
    cpu.main([*argv, "--lengths", "16384", "--impls", "sdpa_flash,triton", "--modes", "fb"])
    assert f"| {SDPA_GOAL} | not measured | ≥ 10 | – |" in capsys.readouterr().out
    assert json.loads(out.read_text())["rows"][0].keys() >= {"triton_fb_s"}


def test_the_committed_gpu_record_is_what_its_logs_rebuild():
    """Each length of results/gpu/bench_attention_cuda.json came from one log: the rule changes none of it."""
    record = json.loads((REPO / "results" / "gpu" / "bench_attention_cuda.json").read_text())
    settings = {k: record["settings"][k] for k in SETTINGS}
    rebuilt = ac.record_from_logs([(REPO / log).read_text() for log in record["rebuilt_from"]], settings)
    assert rebuilt["rows"] == record["rows"] and rebuilt["goals"] == record["goals"]


# --------------------------------------------------------------------------------------------------
# #8 side by side: an untimed warm-up of each, then the first to go swaps every round


def test_side_by_side_warms_every_model_up_and_swaps_the_first():
    calls = []
    rounds = side_by_side(["dense", "structured"], 3, lambda name, warm: calls.append((name, warm)) or len(calls))
    assert calls == [("dense", True), ("structured", True),
                     ("dense", False), ("structured", False),
                     ("structured", False), ("dense", False),
                     ("dense", False), ("structured", False)]  # fmt: skip
    assert rounds == [{"dense": 3, "structured": 4}, {"structured": 5, "dense": 6}, {"dense": 7, "structured": 8}]
    assert [next(iter(r)) for r in rounds] == ["dense", "structured", "dense"]


def _cold_start_clock():
    """A stand-in measurement: every model runs at 100/s, except the very first call of the process,
    which pays a cold start (10/s); ``calls`` records what ran."""
    calls: list[tuple] = []

    def rate(*key) -> float:
        calls.append(key)
        return 10.0 if len(calls) == 1 else 100.0

    return rate, calls


def test_beam_search_rounds_give_the_cold_start_to_no_side(monkeypatch):
    """#8: with one round, the same model as dense and structured read 11.65× before; now 1.0."""
    rate, calls = _cold_start_clock()

    def fake(model, task, subset, beam, batch_size, device="cpu", batches=None):
        return {"sentences_per_s": rate(model, batches)}

    monkeypatch.setattr(decode, "sentences_per_second", fake)
    models = {"dense": ("D", None), "structured": ("S", None)}
    for repeats in (1, 2):
        calls.clear()
        rounds = decode.beam_rounds(models, "test", 5, 64, repeats)
        assert [r["structured"]["sentences_per_s"] / r["dense"]["sentences_per_s"] for r in rounds] == [1.0] * repeats
    assert calls == [("D", 1), ("S", 1), ("D", None), ("S", None), ("S", None), ("D", None)]


class _FakeModel:
    """Just enough of a fairseq model for :func:`decode.incremental_steps`; records its passes."""

    def __init__(self, name: str, passes: list):
        self.name, self.passes = name, passes
        self.encoder = lambda src, src_lengths: None
        self.decoder = self

    def set_beam_size(self, beam: int) -> None:
        pass

    layers: list = []

    def forward(self, tokens, encoder_out, incremental_state):
        if tokens.size(1) == 1:
            self.passes.append(self.name)


def _dictionary():
    """A fairseq dictionary of three words besides its special symbols."""
    from fairseq.data import Dictionary

    dictionary = Dictionary()
    for word in ("a", "b", "c"):
        dictionary.add_symbol(word)
    return dictionary


def test_step_timing_warms_every_model_up_and_swaps_the_first():
    passes: list[str] = []
    task = type("Task", (), {"target_dictionary": _dictionary()})()
    models = {"dense": (_FakeModel("D", passes), task), "structured": (_FakeModel("S", passes), task)}
    steps = decode.incremental_steps(models, [2, 3], repeats=2, batch=2)
    assert passes == ["D", "S", "D", "S", "S", "D"] * 2  # per length: warm-ups, then rounds
    assert set(steps["dense"][3]) == {"cache_keys", "ms_per_step"}


def test_step_timing_counts_the_cached_keys_per_sequence_and_times_a_step_by_the_median_round(monkeypatch):
    """cache_keys: the decoder self-attention keys a sequence has cached after L steps, summed over the layers
    (values and padding masks are no keys); ms_per_step: the median round's seconds over its L steps; each
    sequence is one hypothesis (beam size 1)."""
    clock = [0.0]
    monkeypatch.setattr(decode, "time", SimpleNamespace(perf_counter=lambda: clock[0]))

    class Windowed(_FakeModel):
        """Two layers that cache at most 3 keys; each pass's steps take the next of ``step_seconds``."""

        def __init__(self, name: str, passes: list, step_seconds: list[float]):
            super().__init__(name, passes)
            self.layers, self.self_attn, self.step_seconds = [self, self], self, itertools.cycle(step_seconds)
            self.beams: set[int] = set()

        def set_beam_size(self, beam: int) -> None:
            self.beams.add(beam)

        def forward(self, tokens, encoder_out, incremental_state):
            super().forward(tokens, encoder_out, incremental_state)
            if tokens.size(1) == 1:
                self.seconds = next(self.step_seconds)
            clock[0] += self.seconds
            incremental_state["steps"] = tokens.size(1)

        def _get_input_buffer(self, state):
            keys = torch.zeros(2, 4, min(state["steps"], 3), 8)  # batch, heads, keys, head dimension
            return {"prev_key": keys, "prev_value": keys, "prev_key_padding_mask": torch.zeros(2, 3)}

    task = type("Task", (), {"target_dictionary": _dictionary()})()
    passes: list[str] = []
    dense = Windowed("D", passes, [8.0, 0.25, 1.0, 0.5])  # per length: the warm-up (untimed), then 3 rounds
    structured = Windowed("S", passes, [8.0, 0.125, 0.125, 2.0])
    steps = decode.incremental_steps({"dense": (dense, task), "structured": (structured, task)}, [2, 5], 3, batch=2)
    assert steps == {
        "dense": {2: {"cache_keys": 4, "ms_per_step": 500.0}, 5: {"cache_keys": 6, "ms_per_step": 500.0}},
        "structured": {2: {"cache_keys": 4, "ms_per_step": 125.0}, 5: {"cache_keys": 6, "ms_per_step": 125.0}},
    }
    assert dense.beams == structured.beams == {1}  # one hypothesis per sequence, whatever a beam search set before


def test_beam_search_speed_counts_the_sentences_and_the_tokens_of_their_best_hypotheses(monkeypatch):
    """sentences_per_s: the sentences decoded over the seconds their batches took; output_tokens: the tokens of
    each sentence's best hypothesis; a warm-up (``batches``) decodes only the first batches."""
    seen = []

    class Task:
        def build_generator(self, models, cfg):
            seen.append(cfg.beam)

        def dataset(self, subset):
            return subset

        def get_batch_iterator(self, dataset, max_sentences, required_batch_size_multiple):
            seen.append((dataset, max_sentences))
            batches = [["s1", "s2"], ["s3", "s4"], ["s5"]]
            return SimpleNamespace(next_epoch_itr=lambda shuffle: iter(batches))

        def inference_step(self, generator, models, sample):
            return [[{"tokens": [7] * 4}, {"tokens": [7] * 9}] for _ in sample]  # best first

    clock = iter([10.0, 14.0, 20.0, 21.0])
    monkeypatch.setattr(decode, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    assert decode.sentences_per_second("model", Task(), "test", 3, 2) == {
        "sentences": 5, "output_tokens": 20, "seconds": 4.0, "sentences_per_s": 1.25,
    }  # fmt: skip
    assert decode.sentences_per_second("model", Task(), "valid", 5, 2, batches=1) == {
        "sentences": 2, "output_tokens": 8, "seconds": 1.0, "sentences_per_s": 2.0,
    }  # fmt: skip
    assert seen == [3, ("test", 2), 5, ("valid", 2)]


def test_training_rounds_warm_up_each_model_and_reverse_the_order(monkeypatch, tmp_path):
    """#8 in ``structmt-bench train``: the committed record ran dense first in every round."""
    rate, calls = _cold_start_clock()

    def fake(bin_dir, run_dir, arch, updates, max_tokens, max_positions, extra):
        return rate(run_dir.name, updates, extra)

    monkeypatch.setattr(train, "_train_rate", fake)
    variants = {"structured": ("s", ()), "cross4": ("s", ("--struct-cross-window", "4"))}
    out = train.measure(tmp_path, tmp_path, 60, 4096, 1024, ("--cpu",), rounds=2, variants=variants, warmup_updates=10)
    assert [c[:2] for c in calls] == [
        ("dense-warmup", 10), ("structured-warmup", 10), ("cross4-warmup", 10),
        ("dense", 60), ("structured", 60), ("cross4", 60),
        ("cross4", 60), ("structured", 60), ("dense", 60),
    ]  # fmt: skip
    assert calls[2][2] == ("--cpu", "--struct-cross-window", "4")
    assert out["structured"]["ratios"] == [1.0, 1.0] and out["cross4"]["ratios"] == [1.0, 1.0]
    calls.clear()
    train.measure(tmp_path, tmp_path, 60, 4096, 1024, rounds=1, warmup_updates=0)
    assert [c[:2] for c in calls] == [("dense", 60), ("structured", 60)]


def test_a_training_result_is_the_best_round_of_each_model_and_the_median_of_the_round_ratios(monkeypatch, tmp_path):
    """A round's ratio is structured / dense of that round (both measured in it, side by side); the result keeps
    each model's best round and the median ratio, which one slow round (a busy machine) does not move."""
    rates = {"dense": iter([100.0, 200.0, 150.0]), "structured": iter([150.0, 200.0, 450.0])}
    monkeypatch.setattr(train, "_train_rate", lambda bin_dir, run_dir, *args: next(rates[run_dir.name]))
    out = train.measure(tmp_path, tmp_path, 60, 4096, 1024, rounds=3, warmup_updates=0)
    assert out == {"structured": {"dense": 200.0, "structured": 450.0, "ratio": 1.5, "ratios": [1.5, 1.0, 3.0]}}


def test_a_training_run_gets_its_update_count_and_every_option(monkeypatch, tmp_path):
    seen = []
    result = type("Result", (), {"tokens_per_second": 123.0, "updates": 10})()
    monkeypatch.setattr(train, "train", lambda bin_dir, run_dir, arch, args, env: seen.append((arch, args)) or result)
    assert train._train_rate(tmp_path, tmp_path / "r", "a", 10, 4096, 1024, ("--cpu", "--x", "1")) == 123.0
    ((arch, args),) = seen
    assert arch == "a" and args[args.index("--max-update") + 1] == "10" and args[-3:] == ["--cpu", "--x", "1"]
    # one process: fairseq's default world size is every GPU the machine shows, data-parallel, its rate their sum
    assert args[args.index("--distributed-world-size") + 1] == "1"
    result.tokens_per_second = 0.0  # no rate logged: no ratio of it
    with pytest.raises(RuntimeError, match=r"r/train.log: fairseq-train logged no training rate for a \("):
        train._train_rate(tmp_path, tmp_path / "r", "a", 10, 4096, 1024, ())


def test_a_run_whose_epochs_each_took_under_half_a_second_has_the_rate_fairseq_logged(tmp_path):
    """fairseq logs an epoch's training time in whole seconds: a short run (a few updates on a GPU) logs
    ``train_wall 0``, which weighted its rate to 0 tokens/s (and a ratio to it divided by zero)."""
    from structmt.fairseq_cli import parse_train_log

    def summary(epoch: int, wps: float, updates: int, train_wall: int) -> str:
        return (
            f"x | INFO | train | epoch {epoch:03d} | loss 5 | wps {wps} | ups 9 | num_updates {updates} | lr 0.1 | "
            f"train_wall {train_wall} | wall 1\n"
        )

    log = tmp_path / "train.log"
    log.write_text(summary(1, 28088.9, 2, 0))
    assert parse_train_log(log, tmp_path / "checkpoint_last.pt").tokens_per_second == pytest.approx(28088.9)
    log.write_text(summary(1, 100.0, 2, 0) + summary(2, 300.0, 4, 0))
    assert parse_train_log(log, tmp_path / "checkpoint_last.pt").tokens_per_second == pytest.approx(200.0)
    log.write_text(summary(1, 100.0, 2, 0) + summary(2, 300.0, 4, 2))  # a timed epoch: the weights are known
    assert parse_train_log(log, tmp_path / "checkpoint_last.pt").tokens_per_second == pytest.approx(300.0)
    log.write_text("")
    assert parse_train_log(log, tmp_path / "checkpoint_last.pt").tokens_per_second == 0.0


# --------------------------------------------------------------------------------------------------
# #9 the CPU flat-memory goal needs both ends of its span

FLAT = "efficient peak memory per token, max / min over T = 1024…8192"


def _flat_rows(*peaks: tuple[int, float]) -> dict:
    return {"rows": [{"T": t, "batch": 8192 // t, "efficient_peak_bytes": mib * MiB} for t, mib in peaks]}


def test_cpu_flat_memory_is_not_judged_on_part_of_its_span():
    partial = _flat_rows((1024, 8.0), (2048, 8.0))  # "1.0, met" before
    goal = next(g for g in cpu.goals(partial) if g["goal"] == FLAT)
    assert goal["measured"] is None and goal["met"] is False
    assert f"| {FLAT} | not measured | ≤ 1.2 | – |" in cpu.table(partial)
    whole = next(g for g in cpu.goals(_flat_rows((1024, 8.0), (2048, 9.0), (8192, 8.0))) if g["goal"] == FLAT)
    assert whole["measured"] == pytest.approx(1.125) and whole["met"] is True
    zero = next(g for g in cpu.goals(_flat_rows((1024, 0.0), (8192, 8.0))) if g["goal"] == FLAT)
    assert zero["measured"] == float("inf") and zero["met"] is False  # a zero peak is measured, not dropped


# --------------------------------------------------------------------------------------------------
# #13 a printed ratio never seems to contradict its verdict


@pytest.mark.parametrize(
    "value, target, at_least, text",
    [
        (0.997, 1.0, True, "0.997"),
        (0.8996, 0.9, True, "0.8996"),
        (1.0, 1.0, True, "1.00"),
        (1.004, 1.0, True, "1.00"),
        (1.2004, 1.2, False, "1.2004"),
        (1.1996, 1.2, False, "1.20"),
        (53.4712, 15, True, "53.47"),
        (0.9999999999999, 1.0, True, "0.9999999999999"),
    ],
)
def test_verdict_numbers_keep_the_side_of_the_threshold(value, target, at_least, text):
    assert verdict_number(value, target, at_least) == text


def _machine() -> dict:
    return {"cpu": "test", "threads": 2, "torch": "x", "python": "y", "commit": "abc"}


def _decode_record(ratio: float, **extra) -> dict:
    hyp = {"sentences": 10, "sentences_per_s": 5.0}
    return {"command": "c", "machine": _machine(), "dense": hyp, "structured": hyp, "ratio": ratio,
            "ratios": [ratio], "cache_keys_by_length": {"dense": {"8": 32}, "structured": {"8": 20}},
            "step_ms_by_length": {"dense": {"8": 1.0}, "structured": {"8": 1.0}}, **extra}  # fmt: skip


def _train_record(ratio: float, **extra) -> dict:
    row = {"dense": 100.0, "structured": 100.0 * ratio, "ratio": ratio, "ratios": [ratio]}
    return {"command": "c", "machine": _machine(), "updates": 60, "results": {"multi30k": row}, **extra}


def test_report_prints_ratios_on_the_side_of_their_verdict():
    text = "\n".join(report.decode_section(_decode_record(0.997)))
    assert "Structured / dense: 0.997 (rounds: 1.00); goal ≥ 1.0: not met." in text
    lines = report.train_section(_train_record(0.8996))
    assert "| multi30k | 100 | 90 | 0.8996 | ≥ 0.9 | no | 0.90 |" in lines
    assert "Goal multi30k ≥ 0.9: not met; not by `multi30k` (0.8996).  " in lines


def test_decode_report_gives_output_tokens_per_second_beside_sentences_per_second():
    """Sentences/s alone mixes speed with output length: the tokens each model wrote, and their rate, are shown."""
    dense = {"sentences": 10, "sentences_per_s": 5.0, "output_tokens": 120, "seconds": 2.0}
    structured = {"sentences": 10, "sentences_per_s": 6.25, "output_tokens": 80, "seconds": 1.6}
    text = "\n".join(report.decode_section(_decode_record(1.25, dense=dense, structured=structured)))
    assert "| dense | 10 | 5.0 | 120 | 60 |" in text and "| structured | 10 | 6.2 | 80 | 50 |" in text
    assert "Output tokens/s, best rounds: structured / dense 0.83." in text
    assert "Output tokens/s" not in "\n".join(report.decode_section(_decode_record(1.25)))  # not counted: not shown


def test_attention_goal_tables_print_ratios_on_the_side_of_their_verdict():
    rows = {"rows": [{"T": 4096, "batch": 2, "flex_s": 0.2996, "efficient_fwd_s": 0.1}]}
    assert "| T=4096: Flex fwd / efficient fwd | 2.996 | ≥ 3 | no |" in cpu.table(rows)
    gpu = {"rows": [{"T": 16384, "batch": 2, "sdpa_flash_fb_s": 9.9996e-3, "triton_fb_s": 1e-3}]}
    assert f"| {SDPA_GOAL} | 9.9996 | ≥ 10 | no |" in ac.table(gpu)


# --------------------------------------------------------------------------------------------------
# #14 structmt-bench report: its folder, its files, the settings its text states


def test_report_needs_an_existing_results_folder(tmp_path, capsys):
    typo = tmp_path / "typo"
    err = _argparse_error(report.main, ["--results-dir", str(typo)], capsys)
    assert err.endswith(f": error: argument --results-dir: {typo}: no such folder")
    assert not typo.exists()


def test_report_names_a_file_that_is_not_json(tmp_path):
    (tmp_path / "bench_decode.json").write_text('{"command": ')
    with pytest.raises(DataError, match=r"bench_decode\.json: not a JSON record of structmt-bench \(Expecting"):
        report.render(tmp_path)
    (tmp_path / "bench_decode.json").write_bytes(b'{"command": "\xff"}')  # not UTF-8 either
    with pytest.raises(DataError, match=r"bench_decode\.json: not a JSON record of structmt-bench \('utf-8' codec"):
        report.render(tmp_path)


def test_report_states_the_settings_its_json_records():
    record = _train_record(1.1, structure={"window": 5, "rare": 1}, warmup_updates=10)
    text = "\n".join(report.train_section(record))
    assert "structured (`structured_transformer_multi30k`, w=5, r=1)" in text and "w=3" not in text
    assert "an untimed run of 10 updates of each model first, then rounds in which the order" in text
    text = "\n".join(report.decode_section(_decode_record(1.1, step_batch=16, first_by_round=["dense"])))
    assert "one decoder step for 16 sequences" in text and "64 sequences" not in text
    assert (
        "side by side in one run: an untimed warm-up batch of each, then 1 round, the model that goes first "
        "swapping every round (first: dense). Best round of each shown;"
    ) in text
    assert "median of the same number of rounds, after an untimed pass of each" in text
    # records without them: the settings the command fixed when they were written
    assert "`structured_transformer_multi30k`, w=3, r=2), same batches, alternating in one run" in "\n".join(
        report.train_section(_train_record(1.1))
    )
    assert "one decoder step for 64 sequences" in "\n".join(report.decode_section(_decode_record(1.1)))


def test_the_committed_benchmarks_page_is_its_json_rendered_by_the_code_now(tmp_path):
    """``structmt-bench report`` on a copy of results/ writes BENCHMARKS.md byte for byte."""
    results = REPO / "results"
    copy = copy_benchmark_inputs(tmp_path)
    report.main(["--results-dir", str(copy)])
    assert (copy / "BENCHMARKS.md").read_text(encoding="utf-8") == (results / "BENCHMARKS.md").read_text(
        encoding="utf-8"
    )


@pytest.mark.parametrize("swap", ["swapped", "both dense"])
def test_decode_refuses_a_pair_that_is_not_dense_then_structured(swap, monkeypatch, capsys, dict_dir):
    """A swapped pair (or two dense checkpoints) would print a ratio of something else as structured / dense."""
    from structmt.models.structured_transformer import StructuredTransformerModel

    structured = StructuredTransformerModel.__new__(StructuredTransformerModel)  # its class is what is checked
    dense = object()  # any other model class
    kinds = {"d.pt": structured if swap == "swapped" else dense, "s.pt": dense}
    monkeypatch.setattr(decode, "machine", lambda: "test machine")
    monkeypatch.setattr(decode, "load_model", lambda checkpoint, data_bin: (kinds[str(checkpoint)], None))
    write_split(dict_dir)  # the split it decodes
    argv = ["--dense", "d.pt", "--structured", "s.pt", "--data-bin", str(dict_dir)]
    which = "--dense d.pt: not a dense" if swap == "swapped" else "--structured s.pt: not a structured"
    assert which in _argparse_error(decode.main, argv, capsys)


def test_decode_refuses_a_pair_of_another_shape_or_direction(dict_dir, monkeypatch, capsys):
    """The ratio is the structure's only when everything else is the same: layers, widths, heads, dictionaries
    and the translation direction."""
    from conftest import build

    dense = build(dict_dir, "transformer_multi30k")[::-1]  # (model, task)
    same = build(dict_dir, "structured_transformer_multi30k")[::-1]  # (model, task)
    assert decode.pair_difference(dense, same) == ""
    shallow = build(dict_dir, "structured_transformer_multi30k", "--encoder-layers", "1")[::-1]  # (model, task)
    assert decode.pair_difference(dense, shallow) == (
        "parameter encoder.layers.1.fc1.bias is (256,) in the dense model, none in the structured one"
    )
    reverse = build(dict_dir, "structured_transformer_multi30k", "-s", "de", "-t", "en")[::-1]  # (model, task)
    assert decode.pair_difference(dense, reverse) == "they translate en→de and de→en"
    pairs = {"d.pt": dense, "s.pt": shallow}
    monkeypatch.setattr(decode, "machine", lambda: "test machine")
    monkeypatch.setattr(decode, "load_model", lambda checkpoint, data_bin: pairs[str(checkpoint)])
    write_split(dict_dir)  # the split it decodes
    argv = ["--dense", "d.pt", "--structured", "s.pt", "--data-bin", str(dict_dir)]
    assert "--dense d.pt and --structured s.pt are not one model shape: parameter encoder.layers.1" in (
        _argparse_error(decode.main, argv, capsys)
    )


class _Checkpoint:
    """A loaded model as ``structmt-bench decode`` handles it: where it is moved (``to``) is recorded."""

    def __init__(self, moved: list):
        self.moved = moved

    def to(self, *args):
        self.moved.append(args)
        return self


class _StructuredCheckpoint(_Checkpoint):
    """The class decode takes for the structured model's."""


@pytest.mark.parametrize(
    "options, device, precision, dtype",
    [
        ([], "cpu", "fp32", None),
        (["--device", "cuda"], "Fake GPU", "fp32", torch.float32),
        (["--device", "cuda", "--bf16"], "Fake GPU", "bf16", torch.bfloat16),
        (["--device", "cuda", "--fp16"], "Fake GPU", "fp16", torch.float16),
    ],
)
def test_decode_records_each_models_best_round_and_the_median_ratio_of_the_rounds(
    options, device, precision, dtype, dict_dir, tmp_path, monkeypatch, capsys
):
    """Both models decode --subset (test) at --beam (5) and --batch-size (64) for --repeats (3) rounds on --device,
    in the precision asked; a round's ratio is structured / dense of that round. The record keeps each model's
    best round, the median ratio (one slow round does not move it), which model went first in each round, and
    the step timing (its --repeats rounds, STEP_BATCH sequences of each length); the summary prints them."""
    moved: list[tuple] = []
    loaded: list[str] = []
    task = SimpleNamespace(load_dataset=loaded.append)
    models = {"d.pt": (_Checkpoint(moved), task), "s.pt": (_StructuredCheckpoint(moved), task)}
    rounds = [
        {"dense": {"sentences_per_s": 10.0}, "structured": {"sentences_per_s": 15.0}},
        {"structured": {"sentences_per_s": 40.0}, "dense": {"sentences_per_s": 20.0}},
        {"dense": {"sentences_per_s": 16.0}, "structured": {"sentences_per_s": 48.0}},
    ]
    steps = {
        "dense": {8: {"cache_keys": 8, "ms_per_step": 1.5}},
        "structured": {8: {"cache_keys": 3, "ms_per_step": 2.5}},
    }
    calls = []
    monkeypatch.setattr(decode, "machine", lambda: "test machine")
    monkeypatch.setattr(decode, "load_model", lambda checkpoint, data_bin: models[str(checkpoint)])
    monkeypatch.setattr(decode, "StructuredTransformerModel", _StructuredCheckpoint)
    monkeypatch.setattr(decode, "pair_difference", lambda dense, structured: "")
    monkeypatch.setattr(decode, "beam_rounds", lambda models, *args: calls.append(args) or rounds)
    monkeypatch.setattr(
        decode,
        "incremental_steps",
        lambda models, lengths, repeats, device: calls.append((lengths, repeats, device)) or steps,
    )
    monkeypatch.setattr("structmt.bench.common.require_cuda", lambda command: None)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda: "Fake GPU")
    write_split(dict_dir)  # the split it decodes
    out = tmp_path / "decode.json"
    decode.main(["--dense", "d.pt", "--structured", "s.pt", "--data-bin", str(dict_dir), "--out", str(out), *options])
    on = "cuda" if options else "cpu"
    assert calls == [("test", 5, 64, 3, on), ([8, 32, 128, 512], 3, on)]
    assert loaded == ["test", "test"] and moved == ([("cuda", dtype)] * 2 if dtype else [])
    record = json.loads(out.read_text())
    assert {k: v for k, v in record.items() if k not in ("command", "machine", "warmup")} == {
        "device": device,
        "precision": precision,
        "dense": {"checkpoint": "d.pt", "sentences_per_s": 20.0},
        "structured": {"checkpoint": "s.pt", "sentences_per_s": 48.0},
        "ratio": 2.0,
        "ratios": [1.5, 2.0, 3.0],
        "first_by_round": ["dense", "structured", "dense"],
        "step_batch": 64,
        "cache_keys_by_length": {"dense": {"8": 8}, "structured": {"8": 3}},
        "step_ms_by_length": {"dense": {"8": 1.5}, "structured": {"8": 2.5}},
    }
    assert capsys.readouterr().out.splitlines() == [
        "dense 20.0 sent/s, structured 48.0 sent/s (best of 3); ratio structured / dense, median of rounds: 2.00 "
        "(1.50, 2.00, 3.00)",
        "dense      after L steps (cached keys, ms per step of 64 sequences): L=8: 8, 1.5 ms",
        "structured after L steps (cached keys, ms per step of 64 sequences): L=8: 3, 2.5 ms",
    ]


def test_a_nan_training_ratio_meets_no_goal():
    record = json.loads((REPO / "results" / "bench_train.json").read_text())
    for name in record["results"]:
        record["results"][name]["ratio"] = float("nan")
    text = "\n".join(report.train_section(record))
    assert "| yes" not in text and "met by" not in text
    assert "Goal docs2048 ≥ 2.0: not met; not by" in text


@pytest.mark.parametrize(
    "counts, met",
    [
        ({"8": 20, "32": 20, "128": 20}, True),
        ({"8": 40, "32": 72, "128": 72}, True),  # a wide window still filling at L=8
        ({"8": 40, "32": 72, "128": 160}, False),
        ({"8": 20}, False),  # one length: nothing shows it stops
    ],
)
def test_the_decode_cache_goal_is_that_the_cache_stops_growing(counts, met):
    record = json.loads((REPO / "results" / "bench_decode.json").read_text())
    record["cache_keys_by_length"] = {"dense": counts, "structured": counts}
    record.pop("step_ms_by_length", None)
    text = "\n".join(report.decode_section(record))
    assert ("(as many keys at the two longest L): met." in text) == met


def test_attention_lengths_must_divide_the_tokens_per_batch(monkeypatch, capsys):
    for module, first in ((cpu, "run"), (ac, "run"), (ac, "require_cuda")):  # a check dropped: no benchmark run
        monkeypatch.setattr(module, first, _no_measurement)  # (that would write the committed results)
    for main in (cpu.main, ac.main):
        error = _argparse_error(main, ["--lengths", "32,48,100", "--tokens", "128"], capsys)
        assert error.endswith("--lengths 48,100: each T must divide --tokens 128, so that every T runs 128 tokens per "
                              "batch (tokens / T sequences of T)")  # fmt: skip


def test_a_traffic_floor_counts_no_more_keys_than_there_are():
    from structmt.bench.workload import bench_structure, candidates_at

    structure = bench_structure(8, 2048, 2)
    assert structure.keys_per_query == 4099 and candidates_at(structure, 4096) == 4096
    assert candidates_at(bench_structure(8, 3, 2), 4096) == 9 == bench_structure(8, 3, 2).keys_per_query
    assert cpu.gather_floor_bytes(1, 8, 4096, 64, candidates_at(structure, 4096)) == cpu.gather_floor_bytes(
        1, 8, 4096, 64, 4096
    )


def test_an_out_name_with_a_dot_keeps_it():
    from structmt.bench.common import output_path

    assert output_path(Path("runs/trial_w3.r2"), ".json") == Path("runs/trial_w3.r2.json")
    assert output_path(Path("runs/trial.json"), ".png") == Path("runs/trial.png")
    assert output_path(Path("runs/trial"), ".png") == Path("runs/trial.png")


@pytest.mark.parametrize(
    "command, argv, message",
    [
        ("train", ["--updates", "1"], "argument --updates: must be >= 2, got 1"),
        ("train", ["--cross-slope", "nan"], "argument --cross-slope: must be a finite number > 0, got nan"),
        ("train", ["--cross-slope", "0"], "argument --cross-slope: must be a finite number > 0, got 0"),
        ("compile", ["--candidates", "100000"], "argument --candidates: must be <= 1024, got 100000"),
        ("compile", ["--head-dims", "64", "0"], "argument --head-dims: must be >= 1, got 0"),
    ],
)
def test_bench_options_out_of_range_are_refused_before_any_work(command, argv, message, capsys):
    from structmt.bench import kernel_compile

    main = {"train": train.main, "compile": kernel_compile.main}[command]
    assert _argparse_error(main, argv, capsys).endswith(message)


def test_an_out_that_cannot_be_written_is_refused_before_anything_is_measured(tmp_path, capsys):
    from structmt.bench import kernel_compile

    (tmp_path / "afile").write_text("")
    for main in (cpu.main, ac.main, train.main, kernel_compile.main):
        blocked = _argparse_error(main, ["--out", str(tmp_path / "afile" / "x.json")], capsys)
        assert blocked.endswith(
            f"argument --out: {tmp_path / 'afile' / 'x.json'}: {tmp_path / 'afile'} is a file, not a folder"
        )
        folder = _argparse_error(main, ["--out", str(tmp_path)], capsys)
        assert folder.endswith(f"argument --out: {tmp_path}: a folder; give a file name in it")
        (tmp_path / "taken.json").mkdir(exist_ok=True)  # --out taken: the result would go to taken.json
        taken = _argparse_error(main, ["--out", str(tmp_path / "taken")], capsys)
        assert taken.endswith(f"the result would be written to {tmp_path / 'taken.json'}, a folder; give another name")
    argv = ["--dense", "d.pt", "--structured", "s.pt", "--data-bin", "bin", "--out", str(tmp_path)]
    assert _argparse_error(decode.main, argv, capsys).endswith("a folder; give a file name in it")


def test_pseudo_documents_concatenate_pairs_until_the_source_reaches_the_tokens(tmp_path, monkeypatch):
    spm = tmp_path / "spm"
    spm.mkdir()
    for split in ("train", "valid"):
        (spm / f"{split}.en").write_text("a b c\nd e\nf\ng h i j\nk\n")
        (spm / f"{split}.de").write_text("A\nB\nC\nD\nE\n")
    built = []

    def binarize(text_dir, bin_dir, src, tgt, splits):
        assert splits == ["train", "valid"] and (src, tgt) == ("en", "de")
        built.append((text_dir / "train.en").read_text())
        bin_dir.mkdir(exist_ok=True)
        (bin_dir / "train.en-de.en.bin").write_bytes(b"ids")

    monkeypatch.setattr(train, "binarize", binarize)
    train.pseudo_documents(spm, tmp_path / "docs", 4)
    assert (tmp_path / "docs" / "train.en").read_text() == "a b c d e\nf g h i j\n"  # "k" left over: dropped
    assert (tmp_path / "docs" / "train.de").read_text() == "A B\nC D\n"
    assert (tmp_path / "docs" / "valid.en").read_text() == "a b c d e\nf g h i j\n"  # each split's own documents
    train.pseudo_documents(spm, tmp_path / "docs", 4)  # the same documents: their data-bin is kept
    assert built == ["a b c d e\nf g h i j\n"]
    (spm / "train.en").write_text("a b c\nd e\nf\ng h i j\nk l m n\n")  # the data prepared again
    train.pseudo_documents(spm, tmp_path / "docs", 4)  # binarized again, not the old documents' ids
    assert built[1:] == ["a b c d e\nf g h i j\nk l m n\n"]
    with pytest.raises(DataError, match="--doc-tokens 16: the train split has 14 source pieces in all, too few"):
        train.pseudo_documents(spm, tmp_path / "big", 16)
    (tmp_path / "docs" / "bin" / "train.en-de.en.bin").unlink()  # a data-bin left unfinished
    train.pseudo_documents(spm, tmp_path / "docs", 4)  # the same documents: binarized again
    assert len(built) == 3
    (spm / "train.en").write_text("a b c d\ne\nf\ng\nh\n")  # new documents, and a file of the user's in the data-bin
    (tmp_path / "docs" / "bin" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match=r"bin holds files fairseq-preprocess does not write \(notes.txt\)"):
        train.pseudo_documents(spm, tmp_path / "docs", 4)
    assert (tmp_path / "docs" / "bin" / "notes.txt").read_text() == "mine" and len(built) == 3
    (spm / "valid.de").write_text("A\nB\n")  # a side shortened by hand: no longer sentence pairs
    with pytest.raises(DataError) as e:
        train.pseudo_documents(spm, tmp_path / "other", 4)
    assert str(e.value) == (
        f"{spm / 'valid.en'} has 5 lines, {spm / 'valid.de'} 2: not sentence pairs; delete {tmp_path} and run "
        "again (it is prepared anew)"
    )


@pytest.mark.parametrize(
    "name, change, says",
    [
        ("bench_train.json", lambda r: r.pop("results"), "KeyError: 'results'"),
        ("bench_decode.json", lambda r: r.pop("cache_keys_by_length"), "KeyError: 'cache_keys_by_length'"),
        ("bench_attention.json", lambda r: r.pop("settings"), "KeyError: 'settings'"),
        ("bench_train.json", lambda r: r["results"]["multi30k"].update(ratio="fast"), "TypeError: "),
        ("gpu/bench_attention_cuda.json", lambda r: r.pop("settings"), "KeyError: 'settings'"),
        ("bench_attention_cuda.json", lambda r: r.pop("rows"), "KeyError: 'rows'"),  # its place outside gpu/
        ("gpu/bench_train.json", lambda r: r.pop("results"), "KeyError: 'results'"),  # a GPU session's records
        ("gpu/bench_decode.json", lambda r: r.pop("cache_keys_by_length"), "KeyError: 'cache_keys_by_length'"),
    ],
)
def test_report_names_a_record_it_cannot_read(tmp_path, name, change, says):
    results = tmp_path / "results"
    (results / "gpu").mkdir(parents=True)
    committed = (REPO / "results" / where for where in (name, f"gpu/{name}", Path(name).name))  # a record of its kind
    record = json.loads(next(path for path in committed if path.exists()).read_text())
    change(record)
    (results / name).write_text(json.dumps(record))
    with pytest.raises(DataError, match=rf"{name}: not a record this code reads \({re.escape(says)}.*run the command"):
        report.render(results)


def test_compile_compiles_each_kernel_asked_for_and_records_the_target(tmp_path, monkeypatch, capsys):
    """By default sm_90 (H100/H200) and every dtype, without and with dropout, at D=64 and C=16: a line per kernel
    compiled (its warps, registers, spill stores, cubin size and seconds) and, with --out, the record of the
    target and of every row."""
    from structmt.bench import kernel_compile

    asked = []

    def compile_kernel(kernel, dtype, *, dropout, head_dim, candidates, arch):
        asked.append((kernel, dtype, dropout, head_dim, candidates, arch))
        return {"kernel": kernel, "num_warps": 4, "registers": 40, "spill_store_bytes": 8, "cubin_bytes": 9000,
                "compile_seconds": 0.5}  # fmt: skip

    monkeypatch.setattr(kernel_compile, "compile_kernel", compile_kernel)
    monkeypatch.setitem(sys.modules, "triton", SimpleNamespace(__version__="3.9.0"))  # nothing is compiled
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the interpreter tests' setting
    kernel_compile.main(["--kernels", "bwd"])
    assert asked == [
        ("bwd", dtype, dropout, 64, 16, 90)
        for dtype in (torch.float32, torch.bfloat16, torch.float16)
        for dropout in (False, True)
    ]
    assert capsys.readouterr().out.splitlines() == [
        "Triton 3.9.0, target sm_90, C=16 candidates per query",
        "kernel dtype     dropout    D warps regs spill B  cubin B     s",
        "bwd    float32   off       64     4   40       8     9000   0.5",
        "bwd    float32   on        64     4   40       8     9000   0.5",
        "bwd    bfloat16  off       64     4   40       8     9000   0.5",
        "bwd    bfloat16  on        64     4   40       8     9000   0.5",
        "bwd    float16   off       64     4   40       8     9000   0.5",
        "bwd    float16   on        64     4   40       8     9000   0.5",
    ]
    asked.clear()
    out = tmp_path / "sm80.json"
    argv = ["--arch", "80", "--dtypes", "float16", "--head-dims", "32", "--candidates", "8", "--dropout", "on"]
    kernel_compile.main([*argv, "--out", str(out)])
    assert asked == [("fwd", torch.float16, True, 32, 8, 80), ("bwd", torch.float16, True, 32, 8, 80)]
    lines = capsys.readouterr().out.splitlines()
    assert (lines[0], lines[-1]) == ("Triton 3.9.0, target sm_80, C=8 candidates per query", f"wrote {out}")
    record = json.loads(out.read_text())
    assert (record["command"], record["triton"], record["arch"]) == (
        f"structmt-bench compile {' '.join(argv)} --out {out}", "3.9.0", 80,
    )  # fmt: skip
    assert [row["kernel"] for row in record["kernels"]] == ["fwd", "bwd"]


def test_compile_declares_each_argument_as_the_launch_passes_it_and_reports_the_compiled_kernel(monkeypatch):
    """What Triton compiles: pointers 16-byte aligned (q, k, v, the output and weights in the input dtype; dk and dv
    fp32), an integer of 1 a constant, one that is a multiple of 16 known as one, others plain i32 (the seed with
    dropout: neither), the floats fp32; the row reports the kernel's launch, ptxas's registers, the cubin's size
    and the seconds to a tenth."""
    from structmt.attention import triton_kernel as tk
    from structmt.bench import kernel_compile

    kernels = tk._kernels()  # triton imported first, as this process's tests set TRITON_INTERPRET
    import triton

    compiled = []

    def compile(src, target, options):
        compiled.append((src, target.arch, options))
        return SimpleNamespace(asm={"ptx": "PTX", "cubin": b"c" * 300}, metadata=SimpleNamespace(shared=1024))

    monkeypatch.setattr(triton, "compile", compile)
    monkeypatch.setattr(kernel_compile, "_ptxas_resources", lambda ptx, arch: {"registers": 40, "of": (ptx, arch)})
    clock = iter([10.0, 11.26])
    monkeypatch.setattr(kernel_compile, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    row = kernel_compile.compile_kernel("bwd", torch.bfloat16, dropout=True, head_dim=128, candidates=16, arch=80)
    ((src, arch, options),) = compiled
    blocks, launch = tk._launch_config(kernels, 16, 128, 128, "bwd")
    assert arch == 80 and options == launch and launch["num_warps"] == 8
    at = {name: (i,) for i, name in enumerate(src.fn.arg_names)}
    aligned = [["tt.divisibility", 16]]
    declared = {
        n: (src.signature[n], src.constants.get(at[n]), src.attrs.get(at[n]))
        for n in ("Q", "DK", "IDX", "KIND", "sqb", "sqd", "H", "C", "seed", "scale", "DROPOUT")
    }
    assert declared == {
        "Q": ("*bf16", None, aligned),
        "DK": ("*fp32", None, aligned),
        "IDX": ("*i64", None, aligned),
        "KIND": ("*i8", None, aligned),
        "sqb": ("i32", None, aligned),
        "sqd": ("constexpr", 1, None),
        "H": ("i32", None, None),  # 8
        "C": ("i32", None, aligned),
        "seed": ("i32", None, None),
        "scale": ("fp32", None, None),
        "DROPOUT": ("constexpr", True, None),
    }
    assert row == {
        "kernel": "bwd", "dtype": "bfloat16", "dropout": True, "head_dim": 128, "candidates": 16, **blocks,
        "num_warps": 8, "registers": 40, "of": ("PTX", 80), "shared_bytes": 1024, "cubin_bytes": 300,
        "compile_seconds": 1.3,
    }  # fmt: skip


def test_compile_reads_registers_and_spills_from_the_ptxas_of_the_architecture(monkeypatch):
    """ptxas -v for sm_<arch> (sm_90a from 90 on: the architecture-specific features Triton targets); registers,
    spill stores and spill loads from its report; a report without them, or a failed ptxas, is an error."""
    from structmt.bench import kernel_compile

    ran, report = [], SimpleNamespace(returncode=0, stderr="")

    def run(cmd, capture_output, text):
        ran.append(cmd[:4])
        return report

    ptxas = SimpleNamespace(get_ptxas=lambda arch: SimpleNamespace(path=f"ptxas-{arch}"))
    monkeypatch.setitem(sys.modules, "triton.backends.nvidia.compiler", ptxas)
    monkeypatch.setattr(kernel_compile.subprocess, "run", run)
    report.stderr = "ptxas info    : Used 86 registers, used 1 barriers, 24 bytes spill stores, 16 bytes spill loads\n"
    assert kernel_compile._ptxas_resources("PTX", 90) == {
        "registers": 86, "spill_store_bytes": 24, "spill_load_bytes": 16,
    }  # fmt: skip
    assert kernel_compile._ptxas_resources("PTX", 80)["registers"] == 86
    assert ran == [["ptxas-90", "-v", "--gpu-name", "sm_90a"], ["ptxas-80", "-v", "--gpu-name", "sm_80"]]
    report.stderr = "ptxas info    : Used 86 registers\n"
    with pytest.raises(RuntimeError, match="could not read registers and spills from ptxas -v:\nptxas info"):
        kernel_compile._ptxas_resources("PTX", 90)
    report.returncode, report.stderr = 255, "ptxas fatal   : Unknown option\n"
    with pytest.raises(RuntimeError, match=r"ptxas failed \(ptxas-90 -v --gpu-name sm_90a .*\):\nptxas fatal"):
        kernel_compile._ptxas_resources("PTX", 90)


def test_compile_specialises_the_integers_the_op_passes_for_its_launch(monkeypatch):
    """A real launch specialises its integers (1: a constant, a multiple of 16: known as one), and the registers
    depend on it: compile once declared them all plain i32 and reported some twice the registers the launched
    kernel uses. The integers compile uses are those the op passes, recorded at its launch of both kernels on
    contiguous tensors of LAUNCH's shape."""
    from structmt.attention import triton_kernel as tk
    from structmt.bench.kernel_compile import _FLOATS, LAUNCH, launch_integers

    real = tk._kernels()
    launched: dict[str, dict] = {}

    class Recorder:
        def __init__(self, name: str, kernel) -> None:
            self.name, self.arg_names = name, kernel.arg_names

        def __getitem__(self, grid):
            return lambda *args, **kwargs: launched.setdefault(self.name, dict(zip(self.arg_names, args, strict=False)))

    fake = SimpleNamespace(**vars(real))
    fake.fwd, fake.bwd = Recorder("fwd", real.fwd), Recorder("bwd", real.bwd)
    monkeypatch.setattr(tk, "_ready", lambda device: fake)
    H, T, D, C = LAUNCH["heads"], LAUNCH["length"], 64, 16
    q, k, v, g = (torch.randn(2, H, T, D) for _ in range(4))
    index, kind = torch.zeros(2, T, C, dtype=torch.long), torch.ones(2, H, T, C, dtype=torch.int8)
    torch.ops.structmt.candidate_attention(q, k, v, index, kind, 0.125, 0.0, 0.0, None)
    torch.ops.structmt.candidate_attention_backward(g, q, k, v, index, kind, 0.125, 0.0, 0.0, None)
    ours = launch_integers(D, C, dropout=False)
    for name, args in launched.items():
        integers = {n: a for n, a in args.items() if isinstance(a, int) and n not in _FLOATS}
        assert integers and integers == {n: ours[n] for n in integers}, name
        assert all(isinstance(a, torch.Tensor | float) for n, a in args.items() if n not in integers), name
    assert set(launched) == {"fwd", "bwd"} and launch_integers(D, C, dropout=True)["seed"] % 16
    assert [n for n, value in ours.items() if value == 1] == ["sqd", "skd", "svd", "sgd"]
