"""Reliability: bad input fails clearly and leaves nothing behind; interrupted steps are never
trusted; no shell, no leaked keys, path options checked; random bytes at the data cleaning.

Run on their own with ``pytest -m reliability`` (the slow ones too: ``pytest -m reliability``
selects them whatever ``slow`` says).
"""

import ast
import codecs
import gzip
import os
import pickle
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import make_dict_dir, write_split
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from structmt import fairseq_cli
from structmt.data.prepare import PrepConfig, clean_pairs, prepare_parallel
from structmt.fairseq_cli import StepError, decode
from structmt.files import DataError, read_lines, text_lines
from structmt.paths import RunFolder

pytestmark = pytest.mark.reliability
REPO = Path(__file__).resolve().parents[1]
GOOD = ["a man rides a horse .", "two dogs play", "a woman reads"]


def _files(folder: Path, broken: str) -> dict[str, list[tuple[Path, Path]]]:
    """A tiny corpus (train/valid/test) with one defect, chosen by ``broken``."""
    folder.mkdir()
    texts = {f"{split}.{lang}": "".join(line + "\n" for line in GOOD) for split in ("train", "valid", "test")
             for lang in ("en", "de")}  # fmt: skip
    names = {key: key for key in texts}
    if broken == "line_counts":
        texts["train.de"] = "eins\nzwei\n"
    elif broken == "invalid_utf8":  # in the last split read: nothing may be written for the earlier ones
        texts["test.de"] = "ein Mann\nzwei \udcff Hunde\n"
    elif broken == "empty_test":
        texts["test.en"] = texts["test.de"] = ""
    elif broken == "nothing_left":  # every training pair dropped by cleaning
        texts["train.de"] = "\n \n\t\n"
    for key, text in texts.items():
        data = text.encode("utf-8", errors="surrogateescape")
        if broken == "truncated_gz" and key == "valid.en":
            names[key] = key + ".gz"
            data = gzip.compress(data)[:-12]
        (folder / names[key]).write_bytes(data)
    return {s: [(folder / names[f"{s}.en"], folder / names[f"{s}.de"])] for s in ("train", "valid", "test")}


@pytest.mark.parametrize(
    "broken, message",
    [
        ("line_counts", r"parallel files differ in length: {c}/train\.en has 3 lines, {c}/train\.de has 2"),
        ("invalid_utf8", r"{c}/test\.de:2: invalid UTF-8 at byte 5 of the line \(0x..: invalid start byte\)"),
        ("truncated_gz", r"{c}/valid\.en\.gz: cannot read .*truncated download, fetch it again"),
        ("empty_test", r"test: {c}/test\.en and {c}/test\.de hold no lines; a test set needs sentences to score"),
        ("nothing_left", r"train: no pair of {c}/train\.en and {c}/train\.de is left after cleaning \(.*'empty': 3"),
    ],
)
def test_bad_data_names_file_and_line_and_leaves_no_output(tmp_path, broken, message):
    splits = _files(tmp_path / "corpus", broken)
    out = tmp_path / "out"
    with pytest.raises(DataError, match=message.format(c=re.escape(str(tmp_path / "corpus")))):
        prepare_parallel(out, splits, PrepConfig(vocab_size=40))
    assert not [p for p in out.rglob("*") if p.is_file()]  # no partial text, no stamp, no temp file


@pytest.mark.reliability  # docs/reliability.md
def test_a_data_bin_folder_holding_other_files_is_refused_not_replaced(tmp_path):
    """The binarize stage replaces OUT/bin whole: ``structmt-prepare OUT`` given a folder of the user's own deleted
    the files in its bin/. They are named before any work, and kept; a folder of fairseq-preprocess's own files
    is rebuilt."""
    splits = _files(tmp_path / "corpus", "none")
    out = tmp_path / "out"
    bin_dir = prepare_parallel(out, splits, PrepConfig(vocab_size=40))
    made, stamp = sorted(p.name for p in bin_dir.iterdir()), (out / "spm" / ".spm_train.stamp").read_text()
    (bin_dir / "tool.sh").write_text("echo mine\n")
    with pytest.raises(DataError, match=rf"{re.escape(str(bin_dir))} holds files fairseq-preprocess does not write "
                       r"\(tool.sh\), and preparing the data replaces the folder whole"):  # fmt: skip
        prepare_parallel(out, splits, PrepConfig(vocab_size=36))
    assert (bin_dir / "tool.sh").read_text() == "echo mine\n"
    assert (out / "spm" / ".spm_train.stamp").read_text() == stamp  # refused before any work
    (bin_dir / "tool.sh").unlink()
    assert sorted(p.name for p in prepare_parallel(out, splits, PrepConfig(vocab_size=36)).iterdir()) == made


def test_cleaning_counts_every_dropped_line():
    src = ["a b", "   ", "", "x " * 300, "one", "a   b", "c d", "tiny"]
    tgt = ["c d", "eins", "zwei", "y", "1 2 3 4 5 6 7 8 9 10", "c   d", "\t", "klein"]
    kept, counts = clean_pairs(src, tgt, PrepConfig())
    assert kept == [("a b", "c d"), ("tiny", "klein")]
    assert (counts.read, counts.empty, counts.too_long, counts.bad_ratio, counts.duplicate, counts.kept) == (
        8, 3, 1, 1, 1, 2,
    )  # fmt: skip
    # what is kept: a short pair is never a bad ratio (4 tokens against 1), and a duplicate is the same pair, not
    # the same source with another translation
    kept, counts = clean_pairs(["a", "a b", "a b", "a b"], ["1 2 3 4", "c d", "x y", "c d"], PrepConfig())
    assert kept == [("a", "1 2 3 4"), ("a b", "c d"), ("a b", "x y")]
    assert (counts.bad_ratio, counts.duplicate, counts.kept) == (0, 1, 3)


def test_cleaning_keeps_a_sentence_of_exactly_the_length_and_ratio_limits():
    """The limits are inclusive: a sentence of exactly --max-tokens-per-sentence tokens and a pair of exactly the
    maximal length ratio are kept; one token more, or a larger ratio, is dropped."""
    six, seven = "a b c d e f", "a b c d e f g"
    src = [six, six, seven, "u v w x y z"]
    tgt = ["1 2 3 4 5 6", "1 2 3", "1 2 3 4 5 6 7", "1 2"]
    kept, counts = clean_pairs(src, tgt, PrepConfig(max_tokens_per_sentence=6, max_length_ratio=2.0))
    assert kept == [(six, "1 2 3 4 5 6"), (six, "1 2 3")]
    assert (counts.too_long, counts.bad_ratio, counts.kept) == (1, 1, 2)


def test_max_train_lines_keeps_exactly_that_many_cleaned_pairs(tmp_path, capsys):
    """``max_train_lines=2`` trains on the first 2 pairs left after cleaning, not one fewer."""
    from structmt.data.prepare import _read_split

    src, tgt = tmp_path / "train.en", tmp_path / "train.de"
    src.write_text("a\nb\n\nc\nd\n")
    tgt.write_text("1\n2\n3\n4\n5\n")
    assert _read_split("train", [(src, tgt)], PrepConfig(max_train_lines=2)) == (["a", "b"], ["1", "2"])
    assert "using 2 pairs" in capsys.readouterr().out


def test_line_break_characters_inside_a_line_become_spaces(tmp_path, capsys):
    f = tmp_path / "corpus.de"
    f.write_bytes("a\u2028b\nc\rd\ne\r\nf\x85g\n".encode())
    assert read_lines(f) == ["a b", "c d", "e", "f g"]
    assert f"{f}: 3 lines held line-break characters" in capsys.readouterr().out
    # a byte-order mark (an editor's) is not text: in a reference it would cost BLEU on the first sentence
    f.write_bytes(codecs.BOM_UTF8 + "Ein Mann\nzwei \ufeffHunde\n".encode())
    assert read_lines(f) == ["Ein Mann", "zwei \ufeffHunde"]  # only the file's first character is a mark


def test_every_character_python_breaks_a_line_at_becomes_a_space_inside_a_line():
    """Each one ``str.splitlines`` (and so a tool reading the corpus) ends a line at, besides "\\n": a line kept
    with one would be two lines to such a tool, and the two sides of the corpus would no longer pair up."""
    breaks = [c for c in map(chr, range(0x3000)) if c != "\n" and len(f"a{c}b".splitlines()) == 2]
    assert len(breaks) == 9
    assert text_lines("".join(f"a{c}b\n" for c in breaks)) == (["a b"] * len(breaks), len(breaks))


def test_a_gzip_file_whose_compressed_data_is_damaged_is_named_as_unreadable(tmp_path):
    """Not cut short but corrupt inside (a bad block, zlib's error): the same error naming the file, not a
    traceback."""
    corpus = tmp_path / "train.de.gz"
    data = bytearray(gzip.compress(b"ein Mann\n"))
    data[10] = 0xFF  # the first byte after the gzip header: a block type deflate does not have
    corpus.write_bytes(bytes(data))
    with pytest.raises(DataError, match=rf"^{re.escape(str(corpus))}: cannot read \(Error -3 while decompressing data"):
        read_lines(corpus)


def test_structmt_prepare_prints_the_data_bin_alone_on_stdout(tmp_path, monkeypatch, capsys):
    """``BIN=$(structmt-prepare ...)`` took its progress lines too: they go to stderr."""
    from structmt.data import cli

    def prepare_dataset(name, out_dir, cfg, base_url):
        print("[data] Multi30k source: offline mirror")
        return out_dir / "bin"

    monkeypatch.setattr(cli, "prepare_dataset", prepare_dataset)
    monkeypatch.setattr(cli, "setup", lambda verbose=False: None)
    cli.main([str(tmp_path / "m30k")])
    out, err = capsys.readouterr()
    assert out == f"{tmp_path / 'm30k' / 'bin'}\n" and "[data] Multi30k source: offline mirror" in err


def test_a_data_set_is_prepared_holding_its_data_folders_lock(tmp_path, monkeypatch):
    """Sweep jobs preparing one data folder take turns: the preparation runs while the folder's lock is held."""
    from filelock import FileLock, Timeout

    from structmt.data import datasets

    held = []

    def prepare_multi30k(out_dir, cfg):
        with pytest.raises(Timeout):
            FileLock(str(tmp_path / ".m30k.lock"), timeout=0).acquire()
        held.append(out_dir)
        return out_dir / "bin"

    monkeypatch.setattr(datasets, "prepare_multi30k", prepare_multi30k)
    assert datasets.prepare_dataset("multi30k_en_de", tmp_path / "m30k", PrepConfig()) == tmp_path / "m30k" / "bin"
    assert held == [tmp_path / "m30k"]


def test_a_data_folder_with_a_comma_or_a_vocabulary_sentencepiece_cannot_train_is_named(tmp_path, capsys):
    from structmt.data.cli import main

    with pytest.raises(SystemExit, match=r"m30k,v1: SentencePiece and fairseq-preprocess read comma-separated"):
        main([str(tmp_path / "m30k,v1"), "--mirror", str(tmp_path)])
    assert not list(tmp_path.iterdir())  # refused before any download or folder
    (tmp_path / "afile").write_text("")
    with pytest.raises(SystemExit, match=r"afile: a file; give a folder for the prepared data"):
        main([str(tmp_path / "afile"), "--mirror", str(tmp_path)])
    splits = _files(tmp_path / "corpus", "none")
    with pytest.raises(DataError, match=r"cannot train a vocabulary of 5 pieces on .*train\.en.*; choose another size"):
        prepare_parallel(tmp_path / "small", splits, PrepConfig(vocab_size=5))
    assert not (tmp_path / "small" / "spm" / "spm.model").exists()
    prepare_parallel(tmp_path / "big", splits, PrepConfig(vocab_size=10**5))
    pieces = len((tmp_path / "big" / "spm" / "spm.vocab").read_text().splitlines())
    assert f"the training text supports {pieces} pieces, fewer than the 100000 asked for" in capsys.readouterr().out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400), st.binary(max_size=400))
def test_random_bytes_are_read_and_cleaned_or_rejected_with_the_line(src_bytes, tgt_bytes):
    with tempfile.TemporaryDirectory() as tmp:
        paths = [Path(tmp) / "x.en", Path(tmp) / "x.de"]
        sides = []
        for path, data in zip(paths, (src_bytes, tgt_bytes), strict=True):
            path.write_bytes(data)
            try:
                text = data.decode("utf-8").removeprefix("\ufeff")  # a leading byte-order mark is no text
            except UnicodeDecodeError as err:
                line = data.count(b"\n", 0, err.start) + 1
                with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:{line}: invalid UTF-8"):
                    read_lines(path)
                return
            lines = read_lines(path)
            assert len(lines) == text.count("\n") + (not text.endswith("\n") and text != "")
            assert all(line.splitlines() in ([line], []) for line in lines)  # one line for every tool
            sides.append(lines)
        n = min(len(sides[0]), len(sides[1]))
        kept, counts = clean_pairs(sides[0][:n], sides[1][:n], PrepConfig(max_tokens_per_sentence=20))
        assert counts.read == n == counts.empty + counts.too_long + counts.bad_ratio + counts.duplicate + counts.kept
        assert len(set(kept)) == len(kept) == counts.kept
        for pair in kept:
            assert all(side and side == " ".join(side.split()) for side in pair)
        out = Path(tmp) / "kept.en"
        out.write_text("".join(s + "\n" for s, _ in kept), encoding="utf-8")
        with open(out, encoding="utf-8") as f:  # how fairseq-preprocess reads it
            assert sum(1 for _ in f) == len(kept)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200), st.integers(0, 60))
def test_truncated_gzip_is_rejected_or_read_whole(text, cut):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.en.gz"
        data = gzip.compress(text.encode("utf-8"))
        path.write_bytes(data[: max(0, len(data) - cut)])
        if cut == 0:
            assert read_lines(path) == text_lines(text)[0]
        else:
            with pytest.raises(DataError, match="cannot read"):
                read_lines(path)


# --------------------------------------------------------------------------
# interrupted or failed decoding leaves no hypothesis file a later step would trust


def test_failed_decoding_leaves_no_hypothesis_file(tmp_path):
    bin_dir = make_dict_dir(tmp_path)
    broken = tmp_path / "checkpoint_last.pt"
    broken.write_bytes(b"not a checkpoint")  # e.g. cut off by a full disk
    out = tmp_path / "hyp" / "test.de"
    with pytest.raises(StepError, match=r"fairseq_cli.generate failed \(exit \d+\); see .*test\.log"):
        decode(bin_dir, broken, "test", out)
    assert not out.exists() and not list(out.parent.glob(".test.de.*"))


def test_incomplete_generation_output_is_not_trusted(tmp_path, monkeypatch):
    """A generator that stopped early (killed while writing) must not yield a short hypothesis file."""

    def stopped_early(cmd, log, env=None):
        results = Path(cmd[cmd.index("--results-path") + 1])
        results.mkdir(parents=True)
        (results / "generate-test.txt").write_text("S-0\ta\nS-1\tb\nS-2\tc\nD-0\t-0.1\tA\nD-2\t-0.2\tC\n")
        return 1.0

    monkeypatch.setattr(fairseq_cli, "_run", stopped_early)
    out = tmp_path / "test.de"
    with pytest.raises(StepError, match="3 sources but 2 hypotheses"):
        decode(tmp_path, tmp_path / "c.pt", "test", out)
    assert not out.exists()


def test_a_trainer_left_running_by_a_killed_pipeline_is_named_not_joined_by_a_second(tmp_path, monkeypatch):
    """kill -9 of the pipeline alone left its fairseq-train running; the same command then started a second
    trainer in the same folder (one crashed on the other's checkpoint_last.pt.tmp, the log interleaved). The
    folder is found however the runs folder is spelt (train passes fairseq its resolved --save-dir)."""
    import socket

    monkeypatch.chdir(tmp_path)
    run_dir = Path("run")  # recipes --runs-dir runs: relative
    save_dir = RunFolder(run_dir).checkpoints.resolve()
    save_dir.mkdir(parents=True)
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "--save-dir", str(save_dir)])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # a pid now reused
    pid_file = RunFolder(run_dir).trainer_pid
    try:
        pid_file.write_text(f"{orphan.pid} {socket.gethostname()}\n")
        with pytest.raises(StepError, match=rf"^fairseq-train \(process {orphan.pid}\) is still training .*kill"):
            fairseq_cli.train(tmp_path, run_dir, "transformer_tiny", ["--max-update", "1"])
        assert fairseq_cli.live_trainer(tmp_path / "run") == orphan.pid  # spelt otherwise
        pid_file.write_text(f"{orphan.pid} another-node\n")  # a process of another machine: not seen from here
        assert fairseq_cli.live_trainer(run_dir) is None
        pid_file.write_text(f"{other.pid} {socket.gethostname()}\n")
        assert fairseq_cli.live_trainer(run_dir) is None
    finally:
        orphan.kill(), other.kill()
        orphan.wait(), other.wait()
    pid_file.write_text(f"{orphan.pid} {socket.gethostname()}\n")  # ended
    assert fairseq_cli.live_trainer(run_dir) is None
    for text in ("", "\n", f"not-a-pid {socket.gethostname()}\n"):  # emptied, edited by hand: no trainer
        pid_file.write_text(text)
        assert fairseq_cli.live_trainer(run_dir) is None


def test_a_step_stopped_by_a_signal_says_so_and_that_it_resumes(tmp_path):
    """SLURM's preemption sends SIGTERM: "failed (exit -15)" read as a bug in the run."""
    cmd = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"]
    with pytest.raises(StepError, match=r" was stopped by SIGTERM \(preempted, .*resumes from its last checkpoint$"):
        fairseq_cli._run(cmd, tmp_path / "log")


def test_the_trainers_pid_file_exists_while_it_runs(tmp_path):
    """It names the process and its machine: the host tells a process of this machine from one of another node
    sharing the runs folder."""
    pid_file = tmp_path / "trainer.pid"
    child = (  # waits up to 10 s for the file, then says whether it names its own process on this machine
        "import os, pathlib, socket, time\n"
        f"p = pathlib.Path({str(pid_file)!r})\n"
        "for _ in range(100):\n"
        "    if p.exists(): break\n"
        "    time.sleep(0.1)\n"
        "print(p.read_text() == f'{os.getpid()} {socket.gethostname()}\\n')\n"
    )
    fairseq_cli._run([sys.executable, "-c", child], tmp_path / "log", pid_file=pid_file)
    assert (tmp_path / "log").read_text().split()[-1] == "True" and not pid_file.exists()


def test_a_failed_step_quotes_its_logs_last_line_and_the_log_keeps_every_attempt(tmp_path):
    """The log is appended to (a resumed training's log holds every process), the child gets the environment it
    is given, and the error quotes the log's last line that is not blank."""
    log = tmp_path / "train.log"
    child = "import os, sys; print(os.environ['STRUCTMT_TEST_ATTEMPT']); print('last words'); print(); sys.exit(3)"
    for attempt in ("first", "second"):
        with pytest.raises(StepError) as e:
            fairseq_cli._run([sys.executable, "-c", child], log, env={**os.environ, "STRUCTMT_TEST_ATTEMPT": attempt})
        assert str(e.value) == f"{sys.executable} failed (exit 3); see {log}, which ends: last words"
    said = [line for line in log.read_text().splitlines() if line.strip() and not line.startswith("$ ")]
    assert said == ["first", "last words", "second", "last words"]


def test_a_steps_log_is_read_from_where_it_ended_to_its_last_complete_line(tmp_path):
    """What an earlier attempt logged is not progress of this one; what the step logs last is read as it ends
    (the thread reads only every ``every`` seconds)."""
    log = tmp_path / "train.log"
    log.write_text("an earlier attempt\n")
    read: list[str] = []
    with fairseq_cli._watching(log, read.append, every=60):
        with open(log, "a", encoding="utf-8") as f:
            f.write("line 1\nline 2\nhalf a li")
    assert read == ["line 1\nline 2"]


def test_train_runs_fairseq_train_into_the_runs_resolved_checkpoints_folder(tmp_path, monkeypatch, capsys):
    """The command, its log, environment and pid file; the wall-clock is the checkpoint's training time less what
    a fine-tune carried over; and progress is said from the log, against ``--max-update``."""
    from structmt import checkpoints
    from structmt.paths import PLUGIN_DIR

    monkeypatch.chdir(tmp_path)
    run_dir = Path("run")  # recipes --runs-dir runs: relative
    calls = []

    def trained(cmd, log, env=None, pid_file=None):
        calls.append((cmd, log, env, pid_file))
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(
            "x | INFO | train | epoch 001 | loss 4.5 | wps 2000 | ups 4 | num_updates 20 | train_wall 5 | wall 6\n"
        )
        return 6.0

    monkeypatch.setattr(fairseq_cli, "_run", trained)
    monkeypatch.setattr(checkpoints, "training_seconds", lambda checkpoint: 100.0)
    env = {"OMP_NUM_THREADS": "1"}
    args = ["--max-update", "20", "--lr", "0.1"]
    result = fairseq_cli.train(tmp_path / "bin", run_dir, "structured_transformer_tiny", args, env, carried=40.0)
    run = RunFolder(run_dir)
    cmd = [*fairseq_cli.FAIRSEQ_PYTHON, "-m", "fairseq_cli.train", str(tmp_path / "bin"), "--user-dir", str(PLUGIN_DIR)]
    cmd += ["--arch", "structured_transformer_tiny", "--save-dir", str(tmp_path.resolve() / "run" / "checkpoints")]
    assert calls == [(cmd + ["--log-format", "simple", *args], run.train_log, env, run.trainer_pid)]
    assert (result.updates, result.wall_seconds, result.tokens_per_second) == (20, 60.0, 2000.0)
    assert result.checkpoint == run.last_checkpoint
    assert capsys.readouterr().out == "[run] 20/20 updates, loss 4.50, 2.0k tok/s\n"


# --------------------------------------------------------------------------
# safety


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            yield node, name


class _NotAllowed:
    """A class no checkpoint should carry: torch's safe loader must refuse it."""


def test_checkpoints_load_with_weights_only_and_only_what_fairseq_pickles_allowlisted(tmp_path):
    """docs/reliability.md, Safety: with the plugin imported, a checkpoint holding fairseq's argparse.Namespace,
    and numpy arrays and scalars among its metrics (fairseq-train --eval-bleu's n-gram counts: such a run could
    not resume, nor be decoded), loads under torch's default weights_only=True, written by numpy 2 or numpy 1
    (numpy.core, the name a cluster's older numpy pickles); any other pickled class is still refused, and named;
    no code of the package turns safe loading off (weights_only=False) or names torch's environment switches."""
    import argparse
    import zipfile

    import numpy as np

    import structmt  # noqa: F401  (the allowlist)
    from structmt.checkpoints import checkpoint_updates, load_model

    ok, bad = tmp_path / "ok.pt", tmp_path / "bad.pt"
    metrics = {"_bleu_counts": np.array([12, 7, 3, 1]), "_bleu_sys_len": np.float64(25.5)}
    torch.save(
        {
            "args": argparse.Namespace(arch="structured_transformer_multi30k"),
            "w": torch.ones(2),
            "extra_state": {"metrics": {"valid": metrics}},
            "optimizer_history": [{"num_updates": 7}],
        },
        ok,
    )
    numpy1 = tmp_path / "numpy1.pt"  # the same file as numpy 1 pickles it
    with zipfile.ZipFile(ok) as source, zipfile.ZipFile(numpy1, "w") as target:
        for info in source.infolist():
            content = source.read(info.filename)
            if info.filename.endswith("data.pkl"):
                assert b"numpy._core.multiarray" in content
                content = content.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            target.writestr(info, content)
    for path in (ok, numpy1):
        state = torch.load(path)
        assert state["args"].arch == "structured_transformer_multi30k" and checkpoint_updates(path) == 7
        assert state["extra_state"]["metrics"]["valid"]["_bleu_counts"].tolist() == [12, 7, 3, 1]
        assert state["extra_state"]["metrics"]["valid"]["_bleu_sys_len"] == 25.5
    # torch's legacy format (a checkpoint saved with _use_new_zipfile_serialization=False) cannot be memory-mapped:
    # it was called "a copy cut short"; it is read whole
    legacy = tmp_path / "legacy.pt"
    torch.save(torch.load(ok), legacy, _use_new_zipfile_serialization=False)
    assert checkpoint_updates(legacy) == 7
    torch.save({"args": _NotAllowed(), "optimizer_history": [{"num_updates": 7}]}, bad)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(bad)
    refused = r"bad.pt: torch's safe loader \(weights_only\) refuses test_reliability._NotAllowed"
    for read in (checkpoint_updates, lambda path: load_model(path, tmp_path)):  # load_model: decode, analyse
        with pytest.raises(ValueError, match=refused):
            read(bad)
    offenders = []
    for path in sorted((REPO / "structmt").rglob("*.py")):
        text = path.read_text()
        for node, name in _calls(ast.parse(text, str(path))):
            if any(
                k.arg == "weights_only" and not (isinstance(k.value, ast.Constant) and k.value.value is True)
                for k in node.keywords
            ):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: {name}(weights_only=...)")
        if "WEIGHTS_ONLY_LOAD" in text:  # torch's environment switches for safe loading: left as torch sets them
            offenders.append(f"{path.relative_to(REPO)}: torch's weights_only environment switch")
    assert not offenders


def test_no_subprocess_runs_a_shell():
    offenders = []
    for path in sorted((REPO / "structmt").rglob("*.py")):
        for node, name in _calls(ast.parse(path.read_text(), str(path))):
            where = f"{path.relative_to(REPO)}:{node.lineno}"
            if name in ("os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput"):
                offenders.append(f"{where}: {name}")
            if name.startswith("subprocess."):
                if any(k.arg == "shell" for k in node.keywords):
                    offenders.append(f"{where}: shell= argument")
                if node.args and isinstance(node.args[0], ast.Constant | ast.JoinedStr | ast.BinOp):
                    offenders.append(f"{where}: command given as a string")
    assert not offenders


def test_wandb_key_never_reaches_logs_or_results(tmp_path, monkeypatch):
    from structmt.pipeline import leaderboard
    from structmt.pipeline.tracking import WandbSettings, log_experiment

    secret = "0123456789abcdef0123456789abcdef01234567"  # the shape of a W&B API key
    monkeypatch.setenv("WANDB_API_KEY", secret)
    monkeypatch.setenv("WANDB_MODE", "offline")
    log = tmp_path / "train.log"
    log.write_text("x | INFO | train_inner | epoch 001: 50 / 136 loss=12.3, num_updates=50, lr=0.00025\n")
    row = {"run_id": "run-k", "test_set": "test_2016_flickr", "bleu": 30.0, "chrf": 55.0, "bleu_signature": "s"}
    folder = log_experiment(
        "run-k", {"model": {"window": 3}}, log, [row], tmp_path / "wandb", WandbSettings(project="p")
    )
    assert folder is not None
    leaderboard.add_rows(tmp_path / "results" / "leaderboard.csv", [row])
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) > 3
    assert not [p for p in written if secret.encode() in p.read_bytes()]


@pytest.mark.parametrize(
    "command, message",
    [
        (["structmt.analysis.report", "missing.pt", "."], "argument checkpoint: missing.pt: no such file"),
        (["structmt.pipeline.translate", "no/such/run"], "argument run_dir: no/such/run: no such folder"),
        (["structmt.data.cli", "out", "--mirror", "nowhere"], "argument --mirror: nowhere: no such folder"),
        (
            ["structmt.data.cli", "out", "--base-url", "http://m.example"],
            "--base-url='http://m.example' serves the WMT",
        ),
        (
            ["structmt.data.cli", "out", "--data", "wmt14_en_de", "--mirror", "."],
            "--mirror='.' is a folder of Multi30k",
        ),
        (
            ["structmt.data.cli", "out", "--data", "wmt16_en_ro", "--base-url", "m.example/wmt"],
            "--base-url='m.example/wmt' is no URL; give the scheme",
        ),
    ],
)
def test_path_options_are_checked_before_use(tmp_path, command, message):
    result = subprocess.run(
        [sys.executable, "-m", *command], cwd=tmp_path, capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    assert result.returncode == 2 and message in result.stderr
    assert os.listdir(tmp_path) == []


def _render_figure(args: tuple[Path, int]) -> None:
    from structmt.figures import pyplot, save

    folder, i = args
    for j in range(5):
        fig, ax = pyplot().subplots()
        ax.plot([0, i, j])
        save(fig, folder / "leaderboard.png")


@pytest.mark.reliability
def test_concurrent_jobs_render_the_same_figure_safely(tmp_path):
    """Sweep jobs (processes) publishing the leaderboard at once: each writes its own temporary file."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("fork")) as pool:
        list(pool.map(_render_figure, [(tmp_path, i) for i in range(8)]))
    assert [p.name for p in tmp_path.iterdir()] == ["leaderboard.png"]
    assert (tmp_path / "leaderboard.png").read_bytes()[:4] == b"\x89PNG"


def test_fairseq_copies_a_checkpoint_whole_or_not_at_all(tmp_path, monkeypatch):
    """fairseq copies each saved checkpoint to checkpoint_last.pt: a kill during the copy leaves the old file,
    never part of the new one (structmt.fairseq_fixes), and the copy itself is exact."""
    import shutil

    from fairseq.file_io import PathManager

    import structmt  # noqa: F401  (applies the fixes, as --user-dir does)

    src, dst = tmp_path / "checkpoint_1_250.pt", tmp_path / "checkpoint_last.pt"
    src.write_bytes(b"new" * 1000)
    dst.write_bytes(b"old")

    def killed_half_way(a, b):
        Path(b).write_bytes(Path(a).read_bytes()[:1500])
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "copyfile", killed_half_way)
    with pytest.raises(KeyboardInterrupt):
        PathManager.copy(str(src), str(dst), overwrite=True)
    assert dst.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == sorted([dst.name, src.name])
    monkeypatch.undo()
    with pytest.raises(FileExistsError, match=r"checkpoint_last.pt exists and overwrite is False"):
        PathManager.copy(str(src), str(dst))
    assert dst.read_bytes() == b"old"
    assert PathManager.copy(str(src), str(dst), overwrite=True)
    assert dst.read_bytes() == src.read_bytes()


def test_a_file_is_on_the_disk_before_it_replaces_the_old_one(tmp_path, monkeypatch):
    """Written whole (temp file + rename) is not enough after a power cut: a rename can reach the disk before the
    file's blocks, leaving an empty file where the old one was. The temp file is synced before the rename, the
    folder after it; for structmt's writes, fairseq's checkpoint copy and a WMT archive's extracted files (their
    stage's stamp vouches for them). The sync comes before the file takes the old one's mode, which may not let
    its owner read it (opening it to sync failed)."""
    import zipfile

    from fairseq.file_io import PathManager

    import structmt  # noqa: F401  (applies the fixes, as --user-dir does)
    from structmt.data.wmt import extract_members
    from structmt.files import write_text_atomic

    events = []
    real_fsync, real_replace, real_chmod = os.fsync, os.replace, os.chmod

    def fsync(fd):
        events.append(("sync", Path(os.readlink(f"/proc/self/fd/{fd}")).name))
        real_fsync(fd)

    def replace(a, b):
        events.append(("rename", Path(a).name, Path(b).name))
        real_replace(a, b)

    def chmod(path, mode):
        events.append(("chmod", Path(path).name))
        real_chmod(path, mode)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "chmod", chmod)
    folder = tmp_path / "out"
    write_text_atomic(folder / "LEADERBOARD.md", "rows\n")
    assert len(events) == 4
    (_, tmp), chmod_tmp, (_, renamed, name), last = events
    assert (
        tmp.startswith(".LEADERBOARD.md.")
        and chmod_tmp == ("chmod", tmp)
        and (renamed, name) == (tmp, "LEADERBOARD.md")
    )
    assert last == ("sync", "out")
    events.clear()
    (folder / "checkpoint_1_250.pt").write_bytes(b"new")
    assert PathManager.copy(str(folder / "checkpoint_1_250.pt"), str(folder / "checkpoint_last.pt"), overwrite=True)
    assert events == [
        ("sync", "checkpoint_last.pt.tmp-copy"),
        ("rename", "checkpoint_last.pt.tmp-copy", "checkpoint_last.pt"),
        ("sync", "out"),
    ]
    assert (folder / "checkpoint_last.pt").read_bytes() == b"new" and (
        folder / "LEADERBOARD.md"
    ).read_text() == "rows\n"
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as z:
        z.writestr("corpus/a.en", "a\n")
    events.clear()
    extract_members(tmp_path / "a.zip", "0" * 64, ["corpus/a.en"], tmp_path / "extracted")
    synced = [e[1] for e in events if e[0] == "sync"]
    assert synced.index("a.en") < next(i for i, name in enumerate(synced) if "stamp" in name)  # the file, then
    assert (tmp_path / "extracted" / "a.en").read_text() == "a\n"


def test_a_temporary_name_already_taken_is_never_reused_and_the_temporary_file_or_folder_is_private(
    tmp_path, monkeypatch
):
    """Where the random name drawn is another's file, another name is drawn: that file is neither written nor
    removed; any other failure to make it (its folder gone, not writable) is raised as it is. The temporary file is
    readable by its owner alone (0o600), the folder too (0o700)."""
    import secrets

    from structmt.files import new_temporary

    drawn, real = iter(["0" * 16, "0" * 16, "1" * 16]), secrets.token_hex
    monkeypatch.setattr(secrets, "token_hex", lambda nbytes: next(drawn, None) or real(nbytes))
    (taken := tmp_path / f".kept.txt.{'0' * 16}.tmp").write_text("another's")
    with new_temporary(tmp_path, ".kept.txt.", ".tmp") as tmp:
        assert tmp == tmp_path / f".kept.txt.{'1' * 16}.tmp" and tmp.read_bytes() == b""
        assert tmp.stat().st_mode & 0o777 == 0o600
    assert list(tmp_path.iterdir()) == [taken] and taken.read_text() == "another's"
    with new_temporary(tmp_path, ".analysis-", directory=True) as folder:
        assert folder.is_dir() and folder.stat().st_mode & 0o777 == 0o700
    assert list(tmp_path.iterdir()) == [taken]
    for directory in (False, True):  # any other failure is itself, at once (not "no new name after 100 tries")
        with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "gone"))):
            with new_temporary(tmp_path / "gone", ".kept.txt.", directory=directory):
                pass


def test_a_new_file_written_whole_gets_the_mode_open_gives_under_the_umask(tmp_path, monkeypatch):
    """Not the temporary file's 0o600, nor a fixed 0o644: a user whose umask is 002 (a shared group) gets 0o664."""
    from structmt import files

    for umask, mode in ((0o002, 0o664), (0o027, 0o640)):
        monkeypatch.setattr(files, "_UMASK", umask)
        files.write_text_atomic(new := tmp_path / f"new-{umask:o}.md", "rows\n")
        assert (new.read_text(), new.stat().st_mode & 0o777) == ("rows\n", mode)


def test_a_file_rewritten_whole_keeps_its_group(tmp_path):
    """A team's file (a shared leaderboard) keeps its group, not the writer's own, where the writer may give it
    that group."""
    from structmt.files import write_text_atomic

    shared = tmp_path / "leaderboard.csv"
    shared.write_text("old\n")
    for group in [g for g in os.getgroups() if g != os.getegid()] + [os.getegid() + 1]:
        try:
            os.chown(shared, -1, group)
            break
        except PermissionError:
            continue
    else:
        pytest.skip("this user may give a file no group but its own")
    write_text_atomic(shared, "new\n")
    assert (shared.read_text(), shared.stat().st_gid) == ("new\n", group)


def test_a_checkpoints_updates_and_training_time_are_those_of_its_last_save(tmp_path):
    """A resumed training appends to ``optimizer_history``: its last entry counts; a checkpoint without fairseq's
    ``previous_training_time`` has no training time (None, not 0)."""
    from structmt.checkpoints import checkpoint_updates, training_seconds

    checkpoint = tmp_path / "checkpoint_last.pt"
    torch.save({"optimizer_history": [{"num_updates": 100}, {"num_updates": 250}]}, checkpoint)
    assert checkpoint_updates(checkpoint) == 250
    assert training_seconds(checkpoint) is None
    torch.save({"extra_state": {"previous_training_time": 12}}, checkpoint)
    assert training_seconds(checkpoint) == 12.0
    assert training_seconds(tmp_path / "missing.pt") is None  # no file: no time (not 0 s)


def test_a_legacy_torch_checkpoint_cut_short_is_not_called_a_file_torch_did_not_write(tmp_path):
    """torch's legacy (non-zip) format begins with a pickle's 0x80: cut short, it is damaged, not a foreign file."""
    from structmt.checkpoints import checkpoint_state

    checkpoint = tmp_path / "checkpoint_last.pt"
    torch.save({"optimizer_history": [{"num_updates": 7}]}, checkpoint, _use_new_zipfile_serialization=False)
    checkpoint.write_bytes(checkpoint.read_bytes()[:40])
    with pytest.raises(ValueError) as e:
        checkpoint_state(checkpoint)
    assert str(e.value).startswith(f"{checkpoint}: cannot be read (") and "torch did not write it" not in str(e.value)


@pytest.mark.parametrize(
    "error, why",
    [
        (  # torch 2.4 and 2.5: the reason on the line of "WeightsUnpickler error:", among torch's advice
            pickle.UnpicklingError(
                "Weights only load failed. Re-running `torch.load` with `weights_only` set to `False` will likely "
                "succeed, but it can result in arbitrary code execution.\n Please file an issue with the following so "
                "that we can make `weights_only=True` compatible with your use case: WeightsUnpickler error: "
                "Unsupported operand 118\n\nCheck the documentation of torch.load to learn more about types accepted "
                "by default with weights_only https://pytorch.org/docs/stable/generated/torch.load.html."
            ),
            "UnpicklingError: Unsupported operand 118)",
        ),
        (  # no "WeightsUnpickler error:": the first line that is not the advice to turn weights_only off
            RuntimeError("Re-running `torch.load` with `weights_only` set to `False` may succeed\nfile is short"),
            "RuntimeError: file is short)",
        ),
        (EOFError(), "EOFError: empty or cut short)"),  # torch says nothing
    ],
)
def test_why_a_checkpoint_cannot_be_read_is_torchs_reason_in_one_line(tmp_path, monkeypatch, error, why):
    """However torch words it, never its advice to load with weights_only=False (unsafe for a file of unknown
    origin, and never the fix for a damaged one)."""
    from structmt.checkpoints import checkpoint_state

    checkpoint = tmp_path / "checkpoint_last.pt"
    torch.save({"optimizer_history": [{"num_updates": 7}]}, checkpoint)  # torch's zip archive: torch's reason said

    def unreadable(*args, **kwargs):
        raise error

    monkeypatch.setattr(torch, "load", unreadable)
    with pytest.raises(ValueError) as e:
        checkpoint_state(checkpoint)
    assert str(e.value).startswith(f"{checkpoint}: cannot be read ({why}; a copy cut short")


def test_a_truncated_checkpoint_is_an_error_that_says_what_to_do(tmp_path):
    from structmt.checkpoints import checkpoint_updates

    checkpoint = tmp_path / "checkpoints" / "checkpoint_last.pt"
    checkpoint.parent.mkdir()
    torch.save({"optimizer_history": [{"num_updates": 250}]}, checkpoint)
    assert checkpoint_updates(checkpoint) == 250
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])
    with pytest.raises(ValueError, match=rf"^{re.escape(str(checkpoint))}: cannot be read .*give it instead, or copy"):
        checkpoint_updates(checkpoint)
    # damaged pickled data (flipped bytes: a memo key that is not there) reaches the unpickler as a KeyError
    torch.save({"optimizer_history": [{"num_updates": 250}]}, tmp_path / "whole.pt")
    with zipfile.ZipFile(tmp_path / "whole.pt") as whole, zipfile.ZipFile(checkpoint, "w") as damaged:
        for member in whole.namelist():
            damaged.writestr(member, b"\x80\x02h\x05." if member.endswith("data.pkl") else whole.read(member))
    with pytest.raises(ValueError, match=rf"^{re.escape(str(checkpoint))}: cannot be read \(KeyError: 5\); "):
        checkpoint_updates(checkpoint)
    for state in ({"model": {}}, {"optimizer_history": []}):  # a .pt that fairseq-train did not write: no bare
        torch.save(state, checkpoint)  # KeyError or IndexError
        with pytest.raises(ValueError, match=rf"^{re.escape(str(checkpoint))}: not a checkpoint fairseq-train wrote"):
            checkpoint_updates(checkpoint)


@pytest.mark.parametrize(
    "output, message",
    [
        (
            "S-0\ta\nS-2\tc\nD-0\t-0.1\tA\nD-2\t-0.2\tC\n",
            r"2 hypotheses for the 3 sentences of test \(ids 0 to 2\); without a hypothesis: 1; ids beyond them: none",
        ),
        (
            "S-0\ta\nS-1\tb\nS-5\tc\nD-0\t-0\tA\nD-1\t-0\tB\nD-5\t-0\tC\n",
            r"without a hypothesis: 2; ids beyond them: 5;",
        ),
        ("", r"0 hypotheses for the 3 sentences of test \(ids 0 to 2\); without a hypothesis: 0, 1, 2;"),
        (
            "S-0\ta\nS-1\tb\nS-3\tc\nD-0\t-0\tA\nD-1\t-0\tB\nD-3\t-0\tC\n",
            r"without a hypothesis: 2; ids beyond them: 3;",
        ),
    ],
)
def test_generation_output_with_another_sentences_ids_is_not_trusted(tmp_path, monkeypatch, output, message):
    """Sources and hypotheses in equal number but not one per sentence of the subset (an id missing, one beyond
    it): an error naming the ids, never a hypothesis file with a line from elsewhere or a bare KeyError."""

    def generated(cmd, log, env=None):
        results = Path(cmd[cmd.index("--results-path") + 1])
        results.mkdir(parents=True)
        (results / "generate-test.txt").write_text(output)
        return 1.0

    monkeypatch.setattr(fairseq_cli, "_run", generated)
    monkeypatch.setattr(fairseq_cli, "_sentences", lambda bin_dir, subset: 3)
    out = tmp_path / "test.de"
    with pytest.raises(StepError, match=message):
        decode(tmp_path, tmp_path / "c.pt", "test", out)
    assert not out.exists()


@pytest.mark.reliability  # docs/reliability.md
def test_a_blank_source_line_gets_a_blank_hypothesis_as_structmt_translate_gives_it(tmp_path, monkeypatch):
    """A test set of the user's own with a blank source line: fairseq-generate decodes end-of-sentence alone into
    words, which were scored against the reference; structmt-translate gives the line back blank. Both blank."""

    def generated(cmd, log, env=None):
        results = Path(cmd[cmd.index("--results-path") + 1])
        results.mkdir(parents=True)
        text = "S-0\ta b\nS-1\t\nS-2\t \nD-1\t-0.5\tEine Frau\nD-0\t-0.1\tA B\nD-2\t-0.5\tEine Frau\n"
        (results / "generate-test.txt").write_text(text)
        return 1.0

    monkeypatch.setattr(fairseq_cli, "_run", generated)
    monkeypatch.setattr(fairseq_cli, "_sentences", lambda bin_dir, subset: 3)
    out = decode(tmp_path, tmp_path / "c.pt", "test", tmp_path / "test.de")
    assert out.read_text() == "A B\n\n\n"


def test_decode_runs_fairseq_generate_with_the_pipelines_decoding_options(tmp_path, monkeypatch, capsys):
    """The command (docs/plugin.md's fairseq-generate line is checked against these options) and its log; an
    earlier attempt's results are removed first (they would be read as this one's); the last line says the
    sentences decoded."""
    from structmt.paths import PLUGIN_DIR

    out = tmp_path / "hyps" / "test_2016_flickr.de"
    raw = tmp_path / "hyps" / "test_2016_flickr.de.fairseq"
    raw.mkdir(parents=True)
    (raw / "generate-test.txt").write_text("S-0\tstale\nD-0\t-1\tstale\n")
    calls = []

    def generated(cmd, log, env=None):
        results = Path(cmd[cmd.index("--results-path") + 1]) / "generate-test.txt"
        calls.append((cmd, log, results.exists()))
        results.write_text("S-1\tb\nS-0\ta\nD-1\t-0.2\tB\nD-0\t-0.1\tA\n")
        return 1.0

    monkeypatch.setattr(fairseq_cli, "_run", generated)
    monkeypatch.setattr(fairseq_cli, "_sentences", lambda bin_dir, subset: 2)
    log = tmp_path / "decode.log"
    decode(tmp_path / "bin", tmp_path / "c.pt", "test", out, beam=3, lenpen=0.6, batch_size=16, log=log)
    cmd = [*fairseq_cli.FAIRSEQ_PYTHON, "-m", "fairseq_cli.generate", str(tmp_path / "bin"), "--user-dir"]
    cmd += [str(PLUGIN_DIR), "--path", str(tmp_path / "c.pt"), "--gen-subset", "test", "--beam", "3", "--lenpen", "0.6"]
    cmd += ["--batch-size", "16", "--max-len-a", "1.2", "--max-len-b", "10", "--remove-bpe", "sentencepiece"]
    cmd += ["--required-batch-size-multiple", "1", "--results-path", str(raw)]
    assert calls == [(cmd, log, False)]
    assert out.read_text() == "A\nB\n"
    assert capsys.readouterr().out == "[hyps] test_2016_flickr: 2/2 sentences\n"


def test_the_sentences_of_a_subset_are_counted_from_its_binarized_index(tmp_path):
    write_split(tmp_path, "test")
    assert fairseq_cli._sentences(tmp_path, "test") == 2 and fairseq_cli._sentences(tmp_path, "valid") == 0


_TRAINS = """
import sys, threading
from pathlib import Path
from structmt.console import setup
from structmt.fairseq_cli import _run
setup()
pid_file = Path(sys.argv[1])
child = f"import os, time; open({str(pid_file)!r} + '.tmp', 'w').write(str(os.getpid())); "
child += f"os.replace({str(pid_file)!r} + '.tmp', {str(pid_file)!r}); time.sleep(300)"
cmd = [sys.executable, "-c", child]
if sys.argv[2] == "idle":  # no child: ended by the signal as without the handler
    pid_file.write_text("0")
    import time
    time.sleep(300)
if sys.argv[2] == "thread":  # as a recipe trains its pair, one thread each
    thread = threading.Thread(target=_run, args=(cmd, pid_file.with_suffix(".log")), daemon=True)
    thread.start()
    thread.join()
else:
    _run(cmd, pid_file.with_suffix(".log"))
"""


@pytest.mark.parametrize("where", ["main", "thread", "idle"])
def test_a_sigterm_to_the_command_alone_ends_its_training_too(tmp_path, where):
    """``kill PID`` or a container's stop signals the command alone: its fairseq-train child, reparented, trained
    on to the end (using the GPU, writing checkpoints) after the command had exited 143."""
    import signal
    import time

    pid_file = tmp_path / "child.pid"
    command = subprocess.Popen([sys.executable, "-c", _TRAINS, str(pid_file), where], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not pid_file.exists() and time.time() < deadline and command.poll() is None:
        time.sleep(0.2)
    child = int(pid_file.read_text())
    command.send_signal(signal.SIGTERM)
    assert command.wait(timeout=20) == -signal.SIGTERM  # the child asked to end (SIGTERM), not killed after 30 s
    said = command.stderr.read()
    if where == "idle":
        assert said == ""
        return
    assert "terminated (SIGTERM): 1 child process(es) stopped\n" in said
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)  # ended and reaped


def test_a_sigterm_leaves_no_temporary_file_or_folder_behind(data_bin, tmp_path):
    """A SIGTERM ends the process by the signal (the finally blocks that remove temporary files do not run): the
    atomic write's temporary file and structmt-analyze's folder of figures are removed by the handler, the file
    written before stays whole, and a temporary path whose block has ended is left alone."""
    import signal

    code = (
        "import os, signal, sys\nfrom pathlib import Path\nfrom structmt.analysis import report\n"
        "from structmt.console import temporary_path\nfrom structmt.files import atomic_path, write_text_atomic\n"
        "out = Path(sys.argv[1])\nwrite_text_atomic(out / 'kept.txt', 'whole')\n"
        "with temporary_path(out / 'done.txt'):\n    (out / 'done.txt').write_text('renamed into place')\n"
        "def analyze(checkpoint, data_dir, subset, drawn, **_):\n    (drawn / 'figure.png').write_bytes(b'png')\n"
        "    with atomic_path(out / 'kept.txt') as tmp:\n        tmp.write_text('half')\n"
        "        print(sorted(p.name for p in out.iterdir()), flush=True)\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "report.analyze = analyze\n"
        "report.main([sys.argv[2], sys.argv[3], '--subset', 'valid', '--out-dir', str(out)])\n"
    )
    argv = [str(tmp_path), str(data_bin / "dict.en.txt"), str(data_bin)]  # any file: analyze reads none
    ended = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert ended.returncode == -signal.SIGTERM and ended.stderr == ""
    before = ended.stdout.strip()
    assert ".kept.txt." in before and ".analysis-" in before  # both were there when the signal came
    assert sorted(p.name for p in tmp_path.iterdir()) == ["done.txt", "kept.txt"]
    assert (tmp_path / "kept.txt").read_text() == "whole"


@pytest.mark.parametrize("made_by", ["open", "mkdir"])
def test_a_sigterm_as_a_temporary_file_or_folder_is_made_leaves_nothing_behind(data_bin, tmp_path, made_by):
    """The SIGTERM comes the moment the atomic write's temporary file (os.open) or structmt-analyze's folder
    (os.mkdir) exists: its name was registered before it was made, so the handler removes it (made by mkstemp or
    TemporaryDirectory and registered after, it was left)."""
    import signal

    code = (
        "import os, signal, sys\nfrom pathlib import Path\nfrom structmt.analysis import report\n"
        "from structmt.console import setup\nfrom structmt.files import write_text_atomic\n"
        "out, made_by = Path(sys.argv[1]), sys.argv[4]\nreal = getattr(os, made_by)\n"
        "def made(path, *args, **kwargs):\n    result = real(path, *args, **kwargs)\n"
        "    if '.kept.txt.' in str(path) or '.analysis-' in str(path):\n        os.kill(os.getpid(), signal.SIGTERM)\n"
        "    return result\n"
        "setattr(os, made_by, made)\n"
        "if made_by == 'open':\n    setup()\n    write_text_atomic(out / 'kept.txt', 'whole')\n"
        "else:\n    report.main([sys.argv[2], sys.argv[3], '--subset', 'valid', '--out-dir', str(out)])\n"
    )
    argv = [str(tmp_path), str(data_bin / "dict.en.txt"), str(data_bin), made_by]
    ended = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert ended.returncode == -signal.SIGTERM and ended.stderr == ""
    assert list(tmp_path.iterdir()) == []


def test_a_child_started_while_the_command_is_being_terminated_is_ended_at_once(monkeypatch):
    """A thread that waited on a run's lock starts its fairseq-train after the SIGTERM handler ended the others."""
    from structmt import console

    monkeypatch.setattr(console, "_terminating", terminating := __import__("threading").Event())
    terminating.set()
    assert console.run_child([sys.executable, "-c", "import time; time.sleep(60)"]) == -15


def test_a_child_that_ignores_the_sigterm_is_killed_after_its_wait_and_reaped(tmp_path, monkeypatch, capsys):
    """The handler, run here for a signal whose default is to be ignored (the test process goes on): a child that
    outlives its 30 s is killed (it trained on before) and reaped, no zombie; the temporary files are removed and
    a child started after it is ended at once."""
    import signal
    import threading

    from structmt import console

    trained_on = tmp_path / "trained on"
    stubborn = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, sys, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint(flush=True)"
            "\ntime.sleep(3)\nopen(sys.argv[1], 'w').close()",
            str(trained_on),
        ],
        stdout=subprocess.PIPE,
    )
    stubborn.stdout.readline()  # it ignores SIGTERM now
    stubborn.stdout.close()
    (tmp_path / ".kept.txt.tmp").write_text("half")
    monkeypatch.setattr(console, "_terminating", terminating := threading.Event())
    monkeypatch.setattr(console, "_children", {stubborn})
    monkeypatch.setattr(console, "_temporary", {str(tmp_path / ".kept.txt.tmp")})
    waited: list[tuple[int, float]] = []
    monkeypatch.setattr(console, "_exits", lambda pid, within: waited.append((pid, within)) or False)  # it did not end
    previous = signal.getsignal(signal.SIGWINCH)
    try:
        console._terminated(signal.SIGWINCH, None)
    finally:
        signal.signal(signal.SIGWINCH, previous)
    assert waited == [(stubborn.pid, 30.0)] and terminating.is_set()
    with pytest.raises(ChildProcessError):
        os.waitpid(stubborn.pid, os.WNOHANG)  # reaped by the handler
    assert not trained_on.exists() and list(tmp_path.iterdir()) == []
    assert capsys.readouterr().err == "terminated (SIGTERM): 1 child process(es) stopped\n"


def test_a_child_is_waited_for_as_long_as_it_is_given_and_left_for_its_popen_to_reap():
    from structmt.console import _exits

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)"])
    assert not _exits(proc.pid, within=0.0)  # running
    assert _exits(proc.pid, within=30.0)  # ended within its time
    assert proc.poll() == 0  # its Popen reaps it, with its exit status
    assert _exits(proc.pid, within=0.0)  # reaped already


def test_an_interrupted_wait_on_a_child_ends_the_child_and_forgets_it(tmp_path, monkeypatch):
    """Ctrl-C (or any exception) while a command waits on its fairseq-train: the child does not train on."""
    import signal
    import time

    from structmt import console

    pid_file = tmp_path / "child.pid"

    def interrupt(signum, frame):
        if pid_file.exists():  # once the child runs (a loaded machine may take seconds to start it)
            raise KeyboardInterrupt

    monkeypatch.setattr(console, "_children", set())
    written = f"{pid_file}.part"  # renamed into place: the file is there only once whole
    child = f"import os, time; open({written!r}, 'w').write(str(os.getpid())); "
    child += f"os.rename({written!r}, {str(pid_file)!r}); time.sleep(30)"
    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.5, 0.1)
    try:
        with pytest.raises(KeyboardInterrupt):
            console.run_child([sys.executable, "-c", child])
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # killed: its Popen, interrupted, leaves it for this test to reap
        try:
            ended, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # reaped by its Popen
            break
        if ended:
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the interrupted command's child ran on")
    assert not console._children
    assert console.run_child([sys.executable, "-c", "pass"]) == 0 and not console._children


def test_removing_a_temporary_path_removes_a_link_not_its_target_and_minds_no_missing_path(tmp_path):
    from structmt.console import remove_path

    target = tmp_path / "target"
    (target / "sub").mkdir(parents=True)
    (target / "sub" / "kept.txt").write_text("kept")
    (tmp_path / "link").symlink_to(target)
    remove_path(tmp_path / "link")
    assert not os.path.lexists(tmp_path / "link") and (target / "sub" / "kept.txt").read_text() == "kept"
    remove_path(tmp_path / "never made")  # registered before it was made: the signal came in between
    remove_path(target)
    assert list(tmp_path.iterdir()) == []
