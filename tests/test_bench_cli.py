"""The ``structmt-bench`` command line: ``-h`` lists the commands and exits 0, an unknown command exits 2
naming them; every command names itself ``structmt-bench COMMAND`` in its usage and error lines and takes
``-v/--verbose`` (:func:`structmt.console.setup`); ``train --also-no-cross`` (old, hidden name:
``--no-cross-too``); the help of an output option states its default under ``results/`` and that a run
replaces the committed file there. Nothing is measured: fakes stand in for the benchmarks."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_split

from structmt.bench import __main__ as bench
from structmt.bench import train
from structmt.paths import REPO_ROOT

COMMANDS = ["attention", "decode", "train", "compile", "report"]
#: module of each command's main → the arguments it needs besides the one under test
MODULES = {
    "attention": ("attention", []),
    "attention --device cuda": ("attention", ["--device", "cuda"]),
    "decode": ("decode", ["--dense", "d.pt", "--structured", "s.pt", "--data-bin", "bin"]),
    "train": ("train", []),
    "compile": ("kernel_compile", []),
    "report": ("report", []),
}
#: the modules that set up the console (attention hands --device cuda to attention_cuda)
SETUP_IN = ("attention", "attention_cuda", "decode", "train", "kernel_compile", "report")
#: what each command does first once its arguments are parsed (a fake stops it there)
FIRST_STEP = {"attention": "run", "attention_cuda": "require_cuda", "decode": "machine", "train": "machine",
              "kernel_compile": "_refuse_interpreter", "report": "render"}  # fmt: skip
TRIAL = "give a path under runs/ for a trial run"
COMMITTED = f"a run replaces the committed result there; {TRIAL}"


class Stop(Exception):
    """What the fake console setup raises: the command parsed its arguments; nothing runs after."""


@pytest.fixture(autouse=True)
def setups(monkeypatch):
    """The ``verbose`` of every :func:`structmt.console.setup` a command calls (the test process's console
    stays as it is)."""
    seen: list[bool] = []
    for module in SETUP_IN:
        monkeypatch.setattr(f"structmt.bench.{module}.setup", seen.append)
    monkeypatch.setenv("COLUMNS", "300")  # argparse: help lines unwrapped
    return seen


@pytest.fixture
def nothing_runs(monkeypatch):
    """Each command's first step after parsing fails the test: a check that stops being made fails at once, not
    after a real benchmark (structmt-bench train ran a 60-update training for 10 minutes)."""

    def ran(*args, **kwargs):
        raise AssertionError("the command ran past its argument checks")

    for module, first in FIRST_STEP.items():
        monkeypatch.setattr(f"structmt.bench.{module}.{first}", ran)


def _main(command: str):
    return importlib.import_module(f"structmt.bench.{MODULES[command][0]}").main


def _exit(main, argv, capsys) -> tuple[int | str | None, str, str]:
    with pytest.raises(SystemExit) as stop:
        main(argv)
    out, err = capsys.readouterr()
    return stop.value.code, out, err


# --------------------------------------------------------------------------------------------------
# structmt-bench -h, an unknown command


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_lists_every_command_with_a_line_and_exits_0(flag, capsys):
    code, out, err = _exit(bench.main, [flag], capsys)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == "usage: structmt-bench [-h] [-v] COMMAND [options]"
    listed = lines[lines.index("commands:") + 1 :]
    assert [line.split()[0] for line in listed] == COMMANDS
    assert all(line.startswith("  ") and len(line.split()) > 3 for line in listed)  # a description each
    assert "  -v, --verbose  show third-party log records, debug output and tracebacks" in lines


def test_help_of_the_installed_command_exits_0():
    done = subprocess.run(
        [sys.executable, "-m", "structmt.bench", "--help"], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT
    )
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.startswith("usage: structmt-bench [-h] [-v] COMMAND [options]\n")
    assert "\n  report     write results/BENCHMARKS.md from the bench_*.json files\n" in done.stdout


@pytest.mark.parametrize(
    "argv, message",
    [
        (["foo"], "unknown command 'foo'; the commands: attention, decode, train, compile, report"),
        (
            ["-v", "atention", "-h"],
            "unknown command 'atention'; the commands: attention, decode, train, compile, report",
        ),
        ([], "the following arguments are required: COMMAND"),
        (["-v"], "the following arguments are required: COMMAND"),
    ],
)
def test_an_unknown_or_missing_command_exits_2_naming_the_commands(argv, message, capsys):
    code, out, err = _exit(bench.main, argv, capsys)
    assert code == 2 and out == ""
    assert err.splitlines() == [
        "usage: structmt-bench [-h] [-v] COMMAND [options]",
        f"structmt-bench: error: {message}",
    ]


# --------------------------------------------------------------------------------------------------
# each command names itself, and takes -v


@pytest.mark.parametrize(
    "command, argv, message",
    [
        ("attention", ["--lengths", "0"], "argument --lengths: '0': every number must be >= 1, got 0"),
        ("train", ["--doc-tokens", "512,512"], "argument --doc-tokens: '512,512': 512 is given twice; give each"),
        ("attention", ["--device", "gpu"], "argument --device: invalid choice: 'gpu'"),
        ("attention --device cuda", ["--repeats", "0"], "argument --repeats: must be >= 1, got 0"),
        ("decode", ["--bf16"], "--bf16 and --fp16 need --device cuda"),
        ("decode", ["--fp16"], "--bf16 and --fp16 need --device cuda"),
        ("train", ["--fp16"], "--bf16 and --fp16 need --device cuda"),
        ("train", ["--bf16"], "--bf16 and --fp16 need --device cuda"),
        ("compile", ["--head-dims", "0"], "argument --head-dims: must be >= 1, got 0"),
        ("report", ["--results-dir", "no/such/folder"], "argument --results-dir: no/such/folder: no such folder"),
    ],
)
def test_every_command_names_itself_in_its_usage_and_error_lines(command, argv, message, capsys, nothing_runs):
    code, out, err = _exit(_main(command), [*MODULES[command][1], *argv], capsys)
    assert code == 2 and out == ""
    lines = err.splitlines()
    assert lines[0].startswith(f"usage: structmt-bench {command} [-h] [-v] ")
    assert lines[-1].startswith(f"structmt-bench {command}: error: {message}")


@pytest.mark.parametrize("command", MODULES)
def test_every_command_names_itself_in_its_help(command, capsys):
    code, out, _ = _exit(_main(command), [*MODULES[command][1], "-h"], capsys)
    assert code == 0
    assert out.startswith(f"usage: structmt-bench {command} [-h] [-v] ")
    assert "  -v, --verbose         show third-party log records, debug output and tracebacks\n" in out


@pytest.mark.parametrize("command", MODULES)
@pytest.mark.parametrize("flag, verbose", [("-v", True), ("--verbose", True), (None, False)])
def test_every_command_takes_verbose_and_sets_up_the_console_with_it(command, flag, verbose, monkeypatch, nothing_runs):
    def setup(verbose: bool) -> None:
        raise Stop(verbose)  # right after parsing: nothing is measured

    for module in SETUP_IN:
        monkeypatch.setattr(f"structmt.bench.{module}.setup", setup)
    argv = [*MODULES[command][1], *([flag] if flag else [])]
    with pytest.raises(Stop) as stop:
        _main(command)(argv)
    assert stop.value.args == (verbose,)


@pytest.mark.parametrize("argv", [["-v", "report"], ["report", "-v"], ["--verbose", "report"]])
def test_verbose_before_or_after_the_command_means_the_same(argv, setups, tmp_path, capsys):
    bench.main([*argv, "--results-dir", str(tmp_path)])
    assert setups == [True]
    assert capsys.readouterr().out == f"wrote {tmp_path / 'BENCHMARKS.md'}\n"


def test_a_command_runs_without_verbose(setups, tmp_path, capsys):
    bench.main(["report", "--results-dir", str(tmp_path)])
    assert setups == [False]


# --------------------------------------------------------------------------------------------------
# train --also-no-cross (--no-cross-too: the old name)

ROW = {"dense": 100.0, "structured": 120.0, "ratio": 1.2, "ratios": [1.2]}


@pytest.fixture
def fake_train(monkeypatch, tmp_path):
    """Run ``structmt-bench train`` with fakes: the work folders it measured in, by name (``run.calls``: each
    measurement's folder name and the arguments after it; a result of ROW for each variant measured)."""
    measured: list[str] = []
    calls: list[tuple] = []

    def measure(bin_dir, work, *args):
        measured.append(work.name)
        calls.append((work.name, *args))
        return {variant: ROW for variant in args[5]}

    monkeypatch.setattr(train, "machine", lambda: "test machine")
    monkeypatch.setattr(train, "prepare_dataset", lambda *a, **k: tmp_path / "bin")
    monkeypatch.setattr(train, "pseudo_documents", lambda spm, out, n: out)
    monkeypatch.setattr(train, "measure", measure)

    def run(*options: str) -> list[str]:
        train.main(["--doc-tokens", "512", "--cross-window", "-1", "--out", str(tmp_path / "t.json"), *options])
        return measured

    run.calls = calls
    return run


def test_train_measures_without_cross_attention_only_when_asked(fake_train, capsys):
    assert fake_train() == ["sentences", "docs512-runs"]
    assert capsys.readouterr().err == ""


def test_train_also_no_cross_adds_the_runs_without_cross_attention(fake_train, capsys):
    assert fake_train("--also-no-cross") == ["sentences", "docs512-runs", "docs512-no-cross-runs"]
    assert capsys.readouterr().err == ""


def test_train_no_cross_too_still_works_with_a_deprecation_note(fake_train, capsys):
    assert fake_train("--no-cross-too") == ["sentences", "docs512-runs", "docs512-no-cross-runs"]
    assert capsys.readouterr().err == (
        "structmt-bench train: warning: --no-cross-too is deprecated; it is --also-no-cross now\n"
    )


@pytest.mark.parametrize(
    "options, device_args, device, precision",
    [
        ([], ("--cpu",), "cpu", "fp32"),  # fairseq-train takes a GPU whenever it sees one
        (["--device", "cuda"], (), "Fake GPU", "fp32"),
        (["--device", "cuda", "--bf16"], ("--bf16",), "Fake GPU", "bf16"),
        (["--device", "cuda", "--fp16"], ("--fp16",), "Fake GPU", "fp16"),
    ],
)
def test_train_measures_at_the_defaults_and_records_what_it_ran(
    options, device_args, device, precision, fake_train, monkeypatch, tmp_path, capsys
):
    """The defaults (60 timed updates after 10 untimed ones, 2 rounds) reach every measurement, with the device's
    fairseq-train options and each run's token budget and positions (sentences: 4096 and 1024; documents of N
    pieces: 2N + 512 and 4N); the record states them and the device and precision; a line per result."""
    import torch

    monkeypatch.setattr("structmt.bench.common.require_cuda", lambda command: None)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda: "Fake GPU")
    fake_train(*options)
    assert fake_train.calls == [
        ("sentences", 60, 4096, 1024, device_args, 2, train.STRUCTURED, 10),
        ("docs512-runs", 60, 1536, 2048, device_args, 2, train.STRUCTURED, 10),
    ]
    record = json.loads((tmp_path / "t.json").read_text())
    assert {k: record[k] for k in ("device", "precision", "updates", "warmup_updates")} == {
        "device": device, "precision": precision, "updates": 60, "warmup_updates": 10,
    }  # fmt: skip
    assert record["results"] == {"multi30k": ROW, "docs512": ROW}
    assert capsys.readouterr().out.splitlines() == [
        f"{name:18s} dense    100 tok/s  structured    120 tok/s (best of 2)  ratio 1.20 (median; rounds 1.20)"
        for name in ("multi30k", "docs512")
    ]


def test_train_options_reach_every_measurement_and_name_its_results(fake_train, tmp_path):
    """--updates, --rounds and --warmup-updates reach every measurement; --cross-window W (0 included; -1: none)
    adds a model crossW with structured cross-attention of that half-width and --cross-slope, measured beside
    the structured one and recorded as NAME_crossW; --also-no-cross measures the longest documents once more,
    the structured model only, without cross-attention."""
    options = ["--doc-tokens", "256,128", "--updates", "5", "--rounds", "3", "--warmup-updates", "0"]
    fake_train(*options, "--cross-window", "0", "--cross-slope", "1.5", "--also-no-cross")
    cross_options = ("--struct-cross-window", "0", "--struct-cross-slope", "1.5")
    cross = {**train.STRUCTURED, "cross0": ("structured_transformer_multi30k", cross_options)}
    assert fake_train.calls == [
        ("sentences", 5, 4096, 1024, ("--cpu",), 3, cross, 0),
        ("docs256-runs", 5, 1024, 1024, ("--cpu",), 3, cross, 0),
        ("docs128-runs", 5, 768, 512, ("--cpu",), 3, cross, 0),
        ("docs256-no-cross-runs", 5, 1024, 1024, ("--cpu", "--no-cross-attention"), 3, train.STRUCTURED, 0),
    ]
    assert list(json.loads((tmp_path / "t.json").read_text())["results"]) == [
        "multi30k", "multi30k_cross0", "docs256", "docs256_cross0", "docs128", "docs128_cross0", "docs256_no_cross",
    ]  # fmt: skip


def test_train_help_names_also_no_cross_and_hides_the_old_name(capsys):
    _, out, _ = _exit(train.main, ["-h"], capsys)
    assert "  --also-no-cross       also measure the longest documents with decoders without cross-attention" in out
    assert "no-cross-too" not in out


# options renamed for one naming across the tools (--out: a file written; --data-bin: a binarised data folder)


@pytest.mark.parametrize("old, value", [("--data", "old/bin"), ("--data-bin", "new/bin")])
def test_decode_takes_data_bin_and_its_old_name_data_with_a_deprecation_note(old, value, monkeypatch, capsys, tmp_path):
    from structmt.bench import decode

    def load_model(checkpoint, data_bin):
        raise Stop(data_bin)

    data = tmp_path / value
    data.mkdir(parents=True)
    write_split(data)  # the split it decodes
    monkeypatch.setattr(decode, "machine", lambda: "test machine")
    monkeypatch.setattr(decode, "load_model", load_model)
    with pytest.raises(Stop) as stopped:
        decode.main(["--dense", "d.pt", "--structured", "s.pt", old, str(data)])
    assert stopped.value.args == (data,)
    warned = "structmt-bench decode: warning: --data is deprecated; it is --data-bin now\n"
    assert capsys.readouterr().err == (warned if old == "--data" else "")


def test_decode_without_data_bin_names_it(capsys):
    from structmt.bench import decode

    code, _, err = _exit(decode.main, ["--dense", "d.pt", "--structured", "s.pt"], capsys)
    assert code == 2 and err.splitlines()[-1] == (
        "structmt-bench decode: error: the following arguments are required: --data-bin"
    )


@pytest.mark.parametrize(
    ("command", "old", "new"), [("decode", "--data ", "--data-bin"), ("compile", "--json", "--out")]
)
def test_help_shows_the_new_name_only(command, old, new, capsys):
    _, out, _ = _exit(_main(command), ["-h"], capsys)
    assert f"  {new} " in out and old not in out


def test_an_old_name_sets_what_the_new_name_sets_with_its_type_and_checks():
    import argparse

    from structmt.bench.common import add_old_name

    p = argparse.ArgumentParser(prog="tool")
    add_old_name(p, "--json", p.add_argument("--out", type=Path))
    add_old_name(p, "--flag-too", p.add_argument("--also-flag", action="store_true"))
    add_old_name(p, "--n-old", p.add_argument("--n", type=int, choices=[1, 2], default=1))
    assert vars(p.parse_args([])) == {"out": None, "also_flag": False, "n": 1}
    assert vars(p.parse_args(["--json", "a.json", "--flag-too", "--n-old", "2"])) == {
        "out": Path("a.json"), "also_flag": True, "n": 2,
    }  # fmt: skip
    with pytest.raises(SystemExit):
        p.parse_args(["--n-old", "3"])  # the new option's choices hold for the old name


# --------------------------------------------------------------------------------------------------
# what an output option replaces under results/


@pytest.mark.parametrize(
    "command, option, help_line",
    [
        (
            "attention",
            "--out OUT",
            "where to write OUT.json and OUT.png (default: results/bench_attention; "
            f"a run replaces the committed .json and .png there; {TRIAL})",
        ),
        (
            "attention --device cuda",
            "--out OUT",
            "JSON file to write (default: results/bench_attention_cuda.json; "
            f"a run replaces the result that structmt-bench report renders there; {TRIAL})",
        ),
        (
            "decode",
            "--out OUT",
            f"JSON file to write (default: results/bench_decode.json; {COMMITTED})",
        ),
        (
            "train",
            "--out OUT",
            f"JSON file to write (default: results/bench_train.json; {COMMITTED})",
        ),
        (
            "report",
            "--results-dir RESULTS_DIR",
            "the folder of the bench_*.json files, where BENCHMARKS.md is written "
            f"(default: results; a run replaces the committed BENCHMARKS.md there; {TRIAL})",
        ),
    ],
)
def test_output_help_states_the_default_under_results_and_that_a_run_replaces_it(command, option, help_line, capsys):
    _, out, _ = _exit(_main(command), [*MODULES[command][1], "-h"], capsys)
    words = " ".join(out.split()) + " "  # the help on the option's line or, after a long option, on the next
    assert f" {option} {help_line} " in words


def test_compile_refuses_a_triton_older_than_its_api_needs():
    from structmt.bench import kernel_compile

    for version in ("3.3.0", "3.9.0+git0", "4.1.0"):
        kernel_compile._refuse_old_triton(version)
    with pytest.raises(SystemExit) as e:
        kernel_compile._refuse_old_triton("3.2.0")
    assert str(e.value).startswith(
        "error: structmt-bench compile needs Triton >= 3.3 (its ASTSource API); this environment has Triton 3.2.0."
    )
