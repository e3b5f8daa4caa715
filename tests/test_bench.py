"""The benchmark harness: its memory probe sees a T×T tensor when there is one, and the
goal table and BENCHMARKS.md are computed from the measured rows, not written by hand."""

from pathlib import Path

from structmt.bench.attention import goals, peak_bytes, run, table
from structmt.bench.report import render


def test_peak_memory_probe_sees_the_quadratic_path_and_not_the_efficient_one():
    T, heads = 2048, 8
    square = heads * T * T * 4  # one float32 T×T score matrix per head (batch 1)
    reference = peak_bytes("reference", T, T, heads, 64, 2, 3)
    efficient = peak_bytes("efficient", T, T, heads, 64, 2, 3)
    assert reference >= square
    assert 0 < efficient < square / 4


def _rows(efficient_4096: float) -> dict:
    rows = [
        {"T": 32, "batch": 256, "sdpa_s": 1.0, "efficient_s": 1.1, "efficient_peak_bytes": 2**20},
        {"T": 1024, "batch": 8, "efficient_s": 1.0, "efficient_peak_bytes": 8 * 2**20},
        {"T": 4096, "batch": 2, "sdpa_s": 16.0, "efficient_s": efficient_4096, "flex_s": 0.9,
         "efficient_fwd_s": 0.3, "floor_s": 0.25, "efficient_peak_bytes": 9 * 2**20},
        {"T": 8192, "batch": 1, "efficient_s": 1.0, "efficient_peak_bytes": 8 * 2**20},
    ]  # fmt: skip
    return {"rows": rows}


def test_goals_are_computed_from_the_rows():
    met = {g["goal"]: (round(g["measured"], 3), g["met"]) for g in goals(_rows(1.0))}
    assert met == {
        "T=4096: SDPA f+b / efficient f+b": (16.0, True),
        "T=4096: Flex fwd / efficient fwd": (3.0, True),
        "T=4096: efficient f+b / memory-traffic floor": (4.0, True),
        "efficient peak memory per token, max / min over T = 1024…8192": (1.125, True),
        "T=32: efficient f+b / SDPA f+b": (1.1, True),
    }
    slower = {g["goal"]: g["met"] for g in goals(_rows(2.0))}
    assert not slower["T=4096: SDPA f+b / efficient f+b"] and not slower["T=4096: efficient f+b / memory-traffic floor"]
    assert "| T=4096: SDPA f+b / efficient f+b | 8.00 | ≥ 15 | no |" in table(_rows(2.0))


def test_report_says_what_has_not_been_run(tmp_path):
    text = render(tmp_path)
    assert text.count("Not run yet") == 3


def test_report_marks_every_training_and_decoding_goal(tmp_path):
    import json

    machine = {"cpu": "test", "torch_threads": 2, "torch": "x", "python": "y", "commit": "abc"}
    row = lambda ratio: {"dense": 100.0, "structured": 100.0 * ratio, "ratio": ratio, "ratios": [ratio]}  # noqa: E731
    train = {"docs2048": row(1.8), "docs2048_cross32": row(2.5), "docs2048_no_cross": row(2.2), "multi30k": row(0.95)}
    (tmp_path / "bench_train.json").write_text(
        json.dumps({"command": "c", "machine": machine, "updates": 60, "results": train})
    )
    hyp = {"sentences": 10, "sentences_per_s": 5.0}
    decode = {
        "command": "c",
        "machine": machine,
        "dense": hyp,
        "structured": hyp,
        "ratio": 0.97,
        "ratios": [0.97],
        "cache_keys_by_length": {"dense": {"8": 32, "32": 128}, "structured": {"8": 20, "32": 20}},
    }
    (tmp_path / "bench_decode.json").write_text(json.dumps(decode))
    lines = render(tmp_path).splitlines()
    marks = {line.split(" | ")[0].strip("| "): line.split(" | ")[5] for line in lines if line.startswith("| docs")}
    # no leaderboard here: the cross band's BLEU is unmeasured, so its speed-up is no verdict (tests/test_results.py)
    assert marks == {"docs2048": "no", "docs2048_cross32": "yes, BLEU not measured", "docs2048_no_cross": "–"}
    assert any(line.startswith("| multi30k |") and "| ≥ 0.9 | yes |" in line for line in lines)
    goal_line = (
        "Goal docs2048 ≥ 2.0: not met; fast enough but no verdict without a measured BLEU: `docs2048_cross32`; "
        "not by `docs2048` (1.80)."
    )
    assert any(line.startswith(goal_line) for line in lines)
    assert "goal ≥ 1.0: not met" in "\n".join(lines)
    assert "stops growing with the output length (as many keys at the two longest L): met" in "\n".join(lines)


def test_a_memory_probe_whose_process_dies_is_not_measured_and_says_so_at_once():
    """The parent kept the child's end of the pipe open, so a child that died (an exception, an out-of-memory
    kill) left it waiting 30 minutes, then printed "peak -0.0 MiB". Run in a process of its own, with a time
    limit far below that wait."""
    import subprocess
    import sys

    code = "from structmt.bench.attention import peak_bytes\nprint(peak_bytes('no_such_impl', 32, 64, 2, 8, 1, 1))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    said, value = out.stdout.splitlines()[-2:]
    assert value == "-1" and "ValueError: no_such_impl" in out.stderr
    assert said.startswith(
        "T=32 no_such_impl: the memory measurement ended without a result (its process's exit code 1"
    )


def _hanging_probe(conn, *args) -> None:
    """A memory probe's process that never sends (the spawned child imports it from this module)."""
    import time

    time.sleep(120)


def _probe_that_dies_slowly(conn, *args) -> None:
    """A memory probe's process that closes its end of the pipe without sending, then takes a while to exit."""
    import time

    conn.close()
    time.sleep(3)


def test_a_memory_probe_that_closes_its_pipe_before_it_exits_is_not_said_to_be_late(monkeypatch, capsys):
    """The child's end of the pipe closes before its process has exited: the parent, seeing the pipe's end, found
    the child still alive and said it had been stopped after the time limit (seen with the tests on both cores)."""
    from structmt.bench import attention

    monkeypatch.setattr(attention, "_peak_child", _probe_that_dies_slowly)
    assert peak_bytes("efficient", 32, 64, 2, 8, 1, 1) == -1
    assert capsys.readouterr().out == (
        "T=32 efficient: the memory measurement ended without a result (its process's exit code 0; its error, if "
        "any, is above)\n"
    )


def _probe_that_hangs_after_sending(conn, *args) -> None:
    """A memory probe's process that sends its result, then does not exit."""
    import time

    conn.send(4096)
    conn.close()
    time.sleep(120)


def test_a_memory_probe_that_hangs_after_its_result_is_stopped_and_its_result_kept(monkeypatch):
    """The parent joined the child without a time limit once it had the result: a child stuck as it exits
    (a thread that does not end) held the benchmark for ever."""
    import multiprocessing
    import time

    from structmt.bench import attention

    monkeypatch.setattr(attention, "PEAK_EXIT_S", 0.5)
    monkeypatch.setattr(attention, "_peak_child", _probe_that_hangs_after_sending)
    before, start = set(multiprocessing.active_children()), time.monotonic()
    assert peak_bytes("efficient", 32, 64, 2, 8, 1, 1) == 4096
    assert time.monotonic() - start < 60  # not the child's two minutes
    assert set(multiprocessing.active_children()) <= before  # stopped, not left behind


def test_a_memory_probe_past_its_time_limit_is_stopped_and_not_measured(monkeypatch, capsys):
    """A probe with no result within the limit (a step that swaps, a hang) was waited for without end: after the
    limit the parent joined the child with no timeout. Now the child is stopped and the length recorded as not
    measured."""
    import time

    from structmt.bench import attention

    monkeypatch.setattr(attention, "PEAK_TIMEOUT_S", 0.5)
    monkeypatch.setattr(attention, "_peak_child", _hanging_probe)
    start = time.monotonic()
    assert peak_bytes("efficient", 32, 64, 2, 8, 1, 1) == -1
    assert time.monotonic() - start < 60  # not the child's two minutes
    assert capsys.readouterr().out == (
        "T=32 efficient: the memory measurement ended without a result (none within 0.5 s: its process was stopped)\n"
    )


def test_the_cpu_flex_step_stays_compiled_past_dynamos_recompile_limit(monkeypatch):
    """One compiled FlexAttention serves every length; past dynamo's limit (8 shapes) it fell back to unfused
    eager Flex with a warning, and the benchmark's Flex row measured that. Dynamo traces with its eager backend
    here (the compiler is not what is tested)."""
    import warnings

    import torch

    from structmt.bench import workload
    from structmt.bench.attention import make_step

    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compile_(fn, **{**kw, "backend": "eager"}))
    workload.compiled_flex.cache_clear()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for length in range(16, 16 * 11, 16):  # 10 shapes
                q, k, v, r = workload.inputs(length, 2 * length, 2, 16, 1)
                make_step("flex", q, k, v, r, 3)[0]()
    finally:
        workload.compiled_flex.cache_clear()
    assert not [w for w in caught if "without torch.compile" in str(w.message)]


def test_the_report_says_which_kernel_the_cpu_efficient_rows_ran(tmp_path, monkeypatch):
    """The efficient rows run the fused C++ kernel where it was built, else gathered copies, some 25 times slower
    at T=1024: a re-run on an install without the kernel printed the same labels. The record says which ran,
    as candidate_kernel chose it, and BENCHMARKS.md says so (a record from before says nothing)."""
    import json

    from structmt.attention import functional
    from structmt.bench.report import EFFICIENT_KERNELS, attention_section

    def recorded() -> str:
        record = run([16], 32, 1, 8, 1, 1, ["efficient"], repeats=1, memory=False, dense_limit=0)
        return record["settings"]["efficient_kernel"]

    built = "fused" if functional._KERNELS is not None else "gather"
    assert recorded() == built and built in EFFICIENT_KERNELS
    monkeypatch.setattr(functional, "_KERNELS", None)
    assert recorded() == "gather"
    record = json.loads((Path(__file__).resolve().parents[1] / "results" / "bench_attention.json").read_text())
    assert record["settings"]["efficient_kernel"] == "fused"  # the committed record (9847e1b on) says which ran
    assert "The efficient rows ran structmt's fused C++ kernel." in "\n".join(attention_section(record))
    del record["settings"]["efficient_kernel"]  # as a record from before 48ec6d0
    assert "efficient rows ran" not in "\n".join(attention_section(record))
    record["settings"]["efficient_kernel"] = "gather"
    assert "The efficient rows ran the gathered-copies path, the C++ kernel not being built" in "\n".join(
        attention_section(record)
    )
