"""What the command-line tools say about a wrong argument: the missing file or folder is named with what to give
instead, and the help says where things go and what the defaults are."""

from __future__ import annotations

import io
import json
import logging
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_dict_dir, write_split

from structmt.analysis import report as analyze
from structmt.data import cli as prepare
from structmt.data.prepare import MULTI30K_VOCAB, WMT_VOCAB, PrepConfig
from structmt.files import DataError
from structmt.leaderboard_csv import add_rows, read_rows
from structmt.pipeline import sweep_report, translate


def _help(main, monkeypatch, capsys) -> str:
    """``main(["-h"])``'s text in one line (no wrapping)."""
    monkeypatch.setenv("COLUMNS", "1000")
    with pytest.raises(SystemExit) as e:
        main(["-h"])
    assert e.value.code == 0
    return " ".join(capsys.readouterr().out.split())


# --- structmt-sweep-report ---------------------------------------------------------------------------------------


def test_sweep_report_names_a_missing_leaderboard(tmp_path):
    with pytest.raises(SystemExit) as e:
        sweep_report.main(["--results-dir", str(tmp_path / "none")])
    assert str(e.value) == (
        f"error: {tmp_path / 'none' / 'leaderboard.csv'} does not exist; give --results-dir the folder whose "
        "leaderboard.csv the sweep's runs were evaluated into (default: results/), or run the sweep first "
        "(structmt-run -m +sweep=wr_small)"
    )


@pytest.fixture
def board(tmp_path: Path) -> Path:
    """A leaderboard of one schedule ``s`` on data ``m``: a dense run, two structured runs of role mix ``auto``
    and one with a structured cross band; and schedule ``d`` with a dense run only."""
    row = {"data": "m", "schedule": "s", "test_set": "t", "bleu": 30.0, "seed": 1}
    rows = [
        row | {"run_id": "dense", "hypothesis": "dense.de"},
        row | {"run_id": "w1", "window": 1, "rare": 0, "heads": "auto", "hypothesis": "w1.de"},
        row | {"run_id": "w3", "window": 3, "rare": 0, "heads": "auto", "hypothesis": "w3.de"},
        row | {"run_id": "x", "window": 3, "rare": 0, "heads": "syn:1", "cross": "w4/slope1", "hypothesis": "x.de"},
        row | {"run_id": "d", "schedule": "d", "hypothesis": "d.de"},
    ]
    add_rows(tmp_path / "leaderboard.csv", rows)
    return tmp_path


@pytest.mark.parametrize(
    "args, what, present",
    [
        (["--heads", "pos:1,syn:2,rare:1"], "data=m schedule=s test_set=t heads=pos:1,syn:2,rare:1",
         "heads present: auto, syn:1"),
        (["--heads", "syn:1"], "data=m schedule=s test_set=t heads=syn:1", "cross present: w4/slope1"),
        (["--data", "n"], "data=n schedule=s test_set=t heads=auto", "data present: m"),
        (["--schedule", "z"], "data=m schedule=z test_set=t heads=auto", "schedule present: d, s"),
        (["--test-set", "u"], "data=m schedule=s test_set=u heads=auto", "test_set present: t"),
        (["--seed", "2"], "data=m schedule=s test_set=t seed=2 heads=auto", "seed present: 1"),
        (["--schedule", "d"], "data=m schedule=d test_set=t heads=auto", "only dense runs"),
    ],
)  # fmt: skip
def test_sweep_report_says_which_values_the_leaderboard_has(board, args, what, present):
    with pytest.raises(SystemExit) as e:
        sweep_report.main(["--data", "m", "--schedule", "s", "--test-set", "t", *args, "--results-dir", str(board)])
    assert str(e.value) == (
        f"error: no structured rows for {what} with dense cross-attention and options '' in "
        f"{board / 'leaderboard.csv'}; {present} (--options selects another options column)"
    )


def test_sweep_report_asks_for_the_structured_architecture_when_given_the_dense_one(board):
    """``--arch transformer_multi30k`` names a dense baseline's architecture: the report says which to give, not
    that no structured run is of it."""
    with pytest.raises(SystemExit) as e:
        sweep_report.main(["--data", "m", "--schedule", "s", "--test-set", "t", "--arch", "transformer_multi30k",
                           "--results-dir", str(board)])  # fmt: skip
    assert str(e.value) == "error: --arch transformer_multi30k: give the structured architecture (structured_...)"


# --- structmt-analyze -------------------------------------------------------------------------------------------


def test_analyze_names_a_folder_that_is_not_a_data_bin(tmp_path, capsys):
    checkpoint = tmp_path / "checkpoint_last.pt"
    checkpoint.write_bytes(b"")
    with pytest.raises(SystemExit) as e:
        analyze.main([str(checkpoint), str(tmp_path)])
    assert e.value.code == 2
    assert (
        capsys.readouterr()
        .err.splitlines()[-1]
        .endswith(
            f"error: argument data_dir: {tmp_path} is not a fairseq data-bin (no dict.*.txt): give the data-bin the "
            "model was trained on, e.g. runs/data/multi30k_en_de/bin"
        )
    )


def test_analyze_names_a_file_that_is_not_a_checkpoint_in_one_line(dict_dir, tmp_path, monkeypatch):
    monkeypatch.setattr("structmt.console.setup", lambda verbose=False: None)  # keep the test process's console
    notes = tmp_path / "README.md"
    notes.write_text("# notes\n")
    write_split(dict_dir)  # the split it analyses
    with pytest.raises(ValueError) as e:  # the console prints it as one `error:` line
        analyze.main([str(notes), str(dict_dir), "--out-dir", str(tmp_path / "out")])
    assert str(e.value).startswith(f"{notes}: not a fairseq checkpoint, or one cut short (")
    assert str(e.value).endswith("the newest checkpoint_<epoch>_<updates>.pt") and "\n" not in str(e.value)


def test_an_analysis_that_fails_changes_none_of_its_files_not_even_the_figures(dict_dir, tmp_path, monkeypatch):
    """The figures were drawn into the output folder while the numbers were computed: a report that failed
    after them (its page, say) left new figures beside the old page and JSON. They wait in a folder of their
    own, moved in with the rest."""
    from structmt.analysis import report

    monkeypatch.setattr("structmt.console.setup", lambda verbose=False: None)
    write_split(dict_dir)
    checkpoint, out = tmp_path / "model.pt", tmp_path / "out"
    checkpoint.write_bytes(b"weights")
    out.mkdir()
    (out / "analysis_heads.png").write_bytes(b"old figure")

    def analyze(checkpoint, data_dir, subset, figures_dir, **settings):
        (figures_dir / "analysis_heads.png").write_bytes(b"new figure")
        return {"roles": {"encoder": [], "decoder": []}, "seconds": 1.0}

    def broken_page(result, command):
        raise KeyError("a number the page shows")

    monkeypatch.setattr(report, "analyze", analyze)
    monkeypatch.setattr(report, "markdown", broken_page)
    args = [str(checkpoint), str(dict_dir), "--out-dir", str(out)]
    with pytest.raises(KeyError):
        report.main(args)
    assert [(p.name, p.read_bytes()) for p in out.iterdir()] == [("analysis_heads.png", b"old figure")]
    monkeypatch.setattr(report, "markdown", lambda result, command: "page\n")
    report.main(args)
    assert sorted(p.name for p in out.iterdir()) == ["ANALYSIS.md", "analysis.json", "analysis_heads.png", "roles.json"]
    assert (out / "analysis_heads.png").read_bytes() == b"new figure"


def test_analyze_help_gives_the_defaults_of_subset_and_out_dir(monkeypatch, capsys):
    text = _help(analyze.main, monkeypatch, capsys)
    assert (
        "--subset SUBSET the split of data_dir whose sentences are analysed (default: test, as the committed "
        "analyses; for roles to train with, valid: the pipeline scores the test splits)"
    ) in text
    assert (
        "--out-dir OUT_DIR where ANALYSIS.md, analysis.json, roles.json and the figures go (default: results/, the "
        "committed analysis, whose roles.json model=structured_multi30k_roles reads; for a trial give a folder "
        "under runs/)"
    ) in text


def test_the_pipeline_commands_of_an_install_without_the_checkout_say_to_install_from_a_clone(tmp_path):
    """A non-editable install (pip install .) copies the package alone: structmt-run failed inside Hydra ("Primary
    config directory not found") and structmt-prepare on a checksum file (FileNotFoundError)."""
    import os
    import shutil
    import subprocess

    from structmt.paths import PLUGIN_DIR, checkout_problem

    assert checkout_problem("structmt-run") == ""  # this checkout
    site = tmp_path / "site"
    shutil.copytree(PLUGIN_DIR, site / "structmt", ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(site)}
    for code, said in (
        ("from structmt.data.cli import main; main(['out'])", "structmt-prepare reads the structmt checkout's data/"),
        (
            "import sys; sys.argv = ['structmt-run']; from structmt.pipeline.app import main; main()",
            "structmt-run reads the structmt checkout's conf/ and data/",
        ),
    ):
        result = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True)
        assert result.returncode == 1 and result.stderr.startswith(f"error: {said}, and {site} has none"), result.stderr
        assert "`pip install --no-build-isolation -e .`" in result.stderr  # plain -e builds without the kernel
    assert not (tmp_path / "out").exists()


# --- structmt-translate -----------------------------------------------------------------------------------------


class _Unread:
    """Standard input that must not be read (an interactive terminal: reading it would wait)."""

    @property
    def buffer(self):
        raise AssertionError("standard input was read before the run folder was checked")


@pytest.mark.reliability  # docs/reliability.md
def test_translate_checks_the_run_folder_before_reading_stdin(tmp_path, monkeypatch):
    monkeypatch.setattr(translate, "setup", lambda verbose=False: None)
    monkeypatch.setattr(sys, "stdin", _Unread())
    with pytest.raises(SystemExit) as e:
        translate.main([str(tmp_path)])
    checkpoint = tmp_path / "checkpoints" / "checkpoint_last.pt"
    assert str(e.value) == f"error: {checkpoint} not found: is {tmp_path} a finished structmt run folder?"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--lenpen", "nan"], "argument --lenpen: must be a finite number, got nan"),
        (["--lenpen", "x"], "argument --lenpen: 'x' is not a number"),
        (["--checkpoint", "nonesuch.pt"], "argument --checkpoint: nonesuch.pt: no such file"),
    ],
)
def test_translate_refuses_a_length_penalty_or_checkpoint_it_cannot_use(tmp_path, monkeypatch, capsys, argv, message):
    with pytest.raises(SystemExit):
        translate.main([str(tmp_path), *argv])
    assert message in capsys.readouterr().err


def test_translate_uses_the_checkpoint_given(tmp_path, monkeypatch, capsys):
    given: list[Path] = []

    class Stub:
        def __init__(self, run_dir, checkpoint=None, **settings):
            given.append(checkpoint)
            self.checkpoint = checkpoint

        def translate(self, lines):
            return lines

    (weights := tmp_path / "checkpoint_1_100.pt").write_bytes(b"")
    monkeypatch.setattr(translate, "setup", lambda verbose=False: None)
    monkeypatch.setattr(translate, "Translator", Stub)
    monkeypatch.setattr(translate, "which_training", lambda *a: (logging.DEBUG, ""))
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"a\n")))
    translate.main([str(tmp_path), "--checkpoint", str(weights)])
    assert given == [weights] and capsys.readouterr().out == "a\n"


def test_translate_reads_stdin_once_the_run_folder_is_found(tmp_path, monkeypatch, capsys):
    class Stub:
        def __init__(self, run_dir, **settings):
            self.checkpoint = run_dir / "checkpoint_last.pt"  # none: the training is said not to have finished

        def translate(self, lines):
            return [line.upper() for line in lines]

    monkeypatch.setattr(translate, "setup", lambda verbose=False: None)
    monkeypatch.setattr(translate, "Translator", Stub)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"a dog\n\nruns\n")))
    translate.main([str(tmp_path)])
    assert capsys.readouterr().out == "A DOG\n\nRUNS\n"


@pytest.mark.parametrize(
    "argv, beam",
    [([], (2, 0.6)), (["--beam", "3"], (3, 0.6)), (["--lenpen", "1.2"], (2, 1.2)), (["--lenpen", "0"], (2, 0.0))],
)
def test_translate_searches_with_the_runs_own_beam_unless_given_one(tmp_path, monkeypatch, argv, beam):
    """A run trained with ``train.beam=2`` was scored at beam 2: translating it at fairseq's default 5 would not
    be the system on the leaderboard; likewise its length penalty (``train.lenpen``)."""
    import sentencepiece

    searched: list[tuple[int, float]] = []

    class Task:
        def build_generator(self, models, cfg):
            searched.append((cfg.beam, cfg.lenpen))

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "checkpoint_last.pt").write_bytes(b"")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "spm.model").write_bytes(b"")
    spec = {"data": {"src": "en", "tgt": "de"}, "schedule": {"beam": 2, "lenpen": 0.6}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    monkeypatch.setattr(translate, "load_model", lambda *a, **k: (None, Task()))
    monkeypatch.setattr(sentencepiece, "SentencePieceProcessor", lambda **k: None)
    monkeypatch.setattr(translate, "setup", lambda verbose=False: None)
    monkeypatch.setattr(translate, "which_training", lambda *a: (logging.DEBUG, ""))
    monkeypatch.setattr(translate.Translator, "translate", lambda self, lines: [])  # the search itself: not here
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))
    translate.main([str(tmp_path), *argv])
    assert searched == [beam]


@pytest.mark.parametrize(
    "arch, argv, overrides",
    [
        ("structured_transformer_multi30k", [], {}),
        ("structured_transformer_multi30k", ["--struct-impl", "auto"], {"struct_impl": "auto"}),
        ("transformer_multi30k", ["--struct-impl", "auto"], {}),  # a dense model has no kernel to choose
    ],
)
def test_translate_attends_with_the_kernel_asked_for(tmp_path, monkeypatch, caplog, capsys, arch, argv, overrides):
    """A run trained with --struct-impl triton stores that kernel; translating it here (on the CPU) failed with no
    way to choose another: --struct-impl overrides the run's own. The checkpoint's architecture decides (the
    run's spec.json says dense here): a dense one is said to have no kernel to choose."""
    import sentencepiece

    loaded: list[dict] = []

    class Task:
        def build_generator(self, models, cfg):
            return None

    (tmp_path / "checkpoints").mkdir()
    torch.save({"cfg": {"model": {"arch": arch}}}, tmp_path / "checkpoints" / "checkpoint_last.pt")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "spm.model").write_bytes(b"")
    spec = {"data": {"src": "en", "tgt": "de"}, "model": {"arch": "transformer_multi30k"}, "schedule": {"beam": 2}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    monkeypatch.setattr(translate, "load_model", lambda ckpt, folder, **k: loaded.append(k) or (None, Task()))
    monkeypatch.setattr(sentencepiece, "SentencePieceProcessor", lambda **k: None)
    monkeypatch.setattr(translate, "setup", lambda verbose=False: None)
    monkeypatch.setattr(translate, "which_training", lambda *a: (logging.DEBUG, ""))
    monkeypatch.setattr(translate.Translator, "translate", lambda self, lines: [])
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))
    translate.main([str(tmp_path), *argv])
    assert loaded == [{"source_lang": "en", "target_lang": "de", **overrides}]
    dense = "is a dense model (--arch transformer_multi30k): no kernel to choose"
    assert (dense in caplog.text) == (arch == "transformer_multi30k" and bool(argv))
    with pytest.raises(SystemExit):
        translate.main([str(tmp_path), "--struct-impl", "fast"])
    assert "argument --struct-impl: invalid choice: 'fast'" in capsys.readouterr().err


def _trained_run(tmp_path: Path, *, updates: int = 3500, finished: int | None = 3500) -> tuple[Path, Path]:
    """A run folder whose checkpoint holds ``updates`` and whose ``train.json`` (absent when ``finished`` is None)
    records a training of ``finished`` updates at commit aaaa… on machine M in 100.0 s."""
    run_dir = tmp_path / "multi30k_en_de-reproduce-dense-0000abcd"
    checkpoint = run_dir / "checkpoints" / "checkpoint_last.pt"
    checkpoint.parent.mkdir(parents=True)
    torch.save({"optimizer_history": [{"num_updates": updates}]}, checkpoint)
    if finished is not None:
        record = {"updates": finished, "wall_seconds": 100.04, "git_commit": "a" * 40, "machine": "M"}
        (run_dir / "train.json").write_text(json.dumps(record))
    return run_dir, checkpoint


def _scored(csv: Path, run_id: str, *trainings: tuple[str, str, str]) -> None:
    """Leaderboard rows of ``run_id``: one per (test set, BLEU, training commit), each trained in 100.0 s."""
    add_rows(
        csv,
        [
            {
                "run_id": run_id,
                "test_set": t,
                "hypothesis": f"{t}.{c}",
                "bleu": b,
                "train_commit": c * 40,
                "train_seconds": "100.0",
            }
            for t, b, c in trainings
        ],
    )


def test_translate_says_which_training_its_checkpoint_is_and_that_trainings_scores(tmp_path):
    run_dir, checkpoint = _trained_run(tmp_path)
    csv = tmp_path / "leaderboard.csv"
    _scored(csv, run_dir.name, ("test_2016_flickr", "37.1", "b"), ("test_2016_flickr", "36.5", "a"))
    _scored(csv, "another-run", ("test_2016_flickr", "20", "a"))
    assert translate.which_training(run_dir, checkpoint, csv) == (
        logging.INFO,
        f"{run_dir.name}: checkpoint_last.pt at 3500 updates, trained at aaaaaaaa on M in 100.0 s; its rows in "
        f"{csv}: test_2016_flickr BLEU 36.50",
    )


def test_translate_warns_when_the_leaderboard_rows_of_the_run_id_are_of_another_training(tmp_path):
    run_dir, checkpoint = _trained_run(tmp_path)
    csv = tmp_path / "leaderboard.csv"
    _scored(csv, run_dir.name, ("test_2016_flickr", "37.1", "b"), ("test_2017_flickr", "30", "b"))
    level, line = translate.which_training(run_dir, checkpoint, csv)
    assert level == logging.WARNING
    assert line.endswith(
        f"; the rows of {run_dir.name} in {csv} are of another training (bbbbbbbb in 100.0 s): their scores are not "
        "this checkpoint's"
    )


def test_translate_says_when_another_trainings_rows_are_its_own_hypotheses(tmp_path):
    """Trained again (another commit, another time) to byte-identical hypotheses: the rows' scores are this
    checkpoint's, not "not this checkpoint's"."""
    from dataclasses import asdict

    from structmt.pipeline.spec import RunSpec

    run_dir, checkpoint = _trained_run(tmp_path)
    (run_dir / "spec.json").write_text(json.dumps(asdict(RunSpec())))
    (run_dir / "test_2016_flickr.de").write_text("Ein Mann .\n")
    csv = tmp_path / "leaderboard.csv"
    _scored(csv, run_dir.name, ("test_2016_flickr", "37.1", "b"))
    (tmp_path / "test_2016_flickr.b").write_text("Ein Mann .\n")  # the row's kept hypotheses, as written
    rows = [r | {"hypothesis": str(tmp_path / "test_2016_flickr.b")} for r in read_rows(csv)]
    csv.unlink()
    add_rows(csv, rows)
    level, line = translate.which_training(run_dir, checkpoint, csv)
    assert (level, line.split("; ", 1)[1]) == (
        logging.INFO,
        f"rows of {run_dir.name} in {csv} are of another training (bbbbbbbb in 100.0 s), whose hypotheses this "
        "training's own decoding repeats byte for byte: test_2016_flickr BLEU 37.10",
    )
    (run_dir / "test_2016_flickr.de").write_text("Ein Hund .\n")
    assert translate.which_training(run_dir, checkpoint, csv)[0] == logging.WARNING


def test_translate_says_when_no_row_is_of_its_training(tmp_path):
    run_dir, checkpoint = _trained_run(tmp_path)
    assert translate.which_training(run_dir, checkpoint, tmp_path / "none.csv") == (
        logging.INFO,
        f"{run_dir.name}: checkpoint_last.pt at 3500 updates, trained at aaaaaaaa on M in 100.0 s; no row of it in "
        f"{tmp_path / 'none.csv'}",
    )


@pytest.mark.parametrize(
    "updates, finished, says",
    [
        (1200, None, "checkpoint_last.pt at 1200 updates; its training has not finished (train.json missing)"),
        (
            4000,
            3500,
            "checkpoint_last.pt at 4000 updates, but its finished training recorded 3500 (trained on since, "
            "or the checkpoint was replaced): no recorded training or leaderboard row is of these weights",
        ),
    ],
)
def test_translate_warns_when_the_checkpoint_is_not_of_a_finished_training(tmp_path, updates, finished, says):
    run_dir, checkpoint = _trained_run(tmp_path, updates=updates, finished=finished)
    csv = tmp_path / "leaderboard.csv"
    _scored(csv, run_dir.name, ("test_2016_flickr", "36.5", "a"))
    assert translate.which_training(run_dir, checkpoint, csv) == (logging.WARNING, f"{run_dir.name}: {says}")


def test_translate_is_not_stopped_by_a_leaderboard_to_fix_by_hand(tmp_path):
    run_dir, checkpoint = _trained_run(tmp_path)
    csv = tmp_path / "leaderboard.csv"
    csv.write_text("run_id,something\n")
    level, line = translate.which_training(run_dir, checkpoint, csv)
    assert level == logging.WARNING and f"; its scores are not looked up: {csv}:1: the header" in line


def test_translate_help_gives_the_unit_of_the_batch_size(monkeypatch, capsys):
    text = _help(translate.main, monkeypatch, capsys)
    assert "--batch-size BATCH_SIZE sentences per beam-search batch (default: 64)" in text


# --- structmt-prepare -------------------------------------------------------------------------------------------


def test_prepare_help_says_where_the_data_bin_and_the_downloads_go(monkeypatch, capsys):
    text = _help(prepare.main, monkeypatch, capsys)
    assert (
        "out_dir the data folder to write (the pipeline's: runs/data/DATA): raw/ and spm/ hold the text and the "
        "SentencePiece model, and out_dir/bin the fairseq data-bin (printed at the end) to give fairseq-train; "
        "downloads are kept in out_dir/../download, shared with the data folders beside it"
    ) in text
    assert "the data set to prepare (default: multi30k_en_de)" in text


def test_prepare_passes_its_options_and_the_recipes_language_pair_to_the_preparation(tmp_path, monkeypatch, capsys):
    """--vocab-size, --max-train-lines, --mirror and --base-url reach the preparation; a WMT recipe's languages are
    its manifest's, and an unset --vocab-size is the data set's default."""
    asked = []

    def prepare_dataset(name, out_dir, cfg, base_url):
        asked.append((name, out_dir, cfg, base_url))
        return out_dir / "bin"

    monkeypatch.setattr(prepare, "prepare_dataset", prepare_dataset)
    monkeypatch.setattr(prepare, "setup", lambda verbose=False: None)
    out = tmp_path / "out"
    wmt = ["--data", "wmt16_en_ro", "--vocab-size", "123", "--max-train-lines", "7", "--base-url", "http://m.example"]
    prepare.main([str(out), *wmt])
    prepare.main([str(out), "--mirror", str(tmp_path)])
    prepare.main([str(out), "--data", "wmt14_en_de"])
    assert asked == [
        ("wmt16_en_ro", out, PrepConfig(src="en", tgt="ro", vocab_size=123, max_train_lines=7), "http://m.example"),
        ("multi30k_en_de", out, PrepConfig(vocab_size=MULTI30K_VOCAB, mirror=str(tmp_path)), None),
        ("wmt14_en_de", out, PrepConfig(src="en", tgt="de", vocab_size=WMT_VOCAB), None),
    ]
    assert capsys.readouterr().out == f"{out / 'bin'}\n" * 3


def test_prepare_takes_verbose_and_ends_on_a_data_error_with_its_one_line(tmp_path, monkeypatch):
    """-v reaches the console set-up (third-party log records and tracebacks shown); a data set that cannot be
    prepared ends the command with status 1 and one line "error: ..." as every command's errors, no traceback."""
    verbose: list[bool] = []

    def prepare_dataset(name, out_dir, cfg, base_url):
        raise DataError(f"{out_dir}: a damaged download")

    monkeypatch.setattr(prepare, "prepare_dataset", prepare_dataset)
    monkeypatch.setattr(prepare, "setup", verbose.append)
    for argv in ([], ["-v"]):
        with pytest.raises(SystemExit) as stop:
            prepare.main([str(tmp_path), *argv])
        assert stop.value.code == f"error: {tmp_path}: a damaged download"
    assert verbose == [False, True]


# --- path arguments ---------------------------------------------------------------------------------------------


def test_a_path_of_the_wrong_kind_is_named_as_such_not_as_missing(tmp_path, monkeypatch, capsys):
    """A checkpoint given where a run folder is wanted (translate), a folder where a checkpoint is (analyze)."""
    checkpoint = tmp_path / "checkpoint_last.pt"
    checkpoint.write_bytes(b"")
    (tmp_path / "bin").mkdir()
    data = make_dict_dir(tmp_path / "bin")
    monkeypatch.setenv("COLUMNS", "1000")
    out = [str(checkpoint), str(data), "--out-dir"]  # a folder to write into: not a file, nor under one (it
    for main, argv, says in [  # was FileExistsError after the argument checks, or after the leaderboard was read)
        (translate.main, [str(checkpoint)], f"argument run_dir: {checkpoint}: a file; give a folder"),
        (analyze.main, [str(tmp_path), str(tmp_path)], f"argument checkpoint: {tmp_path}: a folder; give a file"),
        (analyze.main, [*out, str(checkpoint)], f"argument --out-dir: {checkpoint}: a file; give a folder"),
        (
            sweep_report.main,
            ["--out-dir", f"{checkpoint}/sweeps"],
            f"argument --out-dir: {checkpoint}/sweeps: {checkpoint} is a file, not a folder",
        ),
    ]:
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2 and says in capsys.readouterr().err
    with pytest.raises(SystemExit, match=f"{checkpoint}/m30k: {checkpoint} is a file, not a folder; give a folder"):
        prepare.main([f"{checkpoint}/m30k", "--mirror", str(tmp_path)])


def test_a_path_given_from_the_home_folder_is_that_path(tmp_path, monkeypatch):
    """``--checkpoint=~/w.pt`` (the shell leaves a ``~`` after ``=`` as it is) names the file in the home folder, as
    does a folder given so."""
    from structmt.files import existing_dir, existing_file, output_dir

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "w.pt").write_bytes(b"")
    (tmp_path / "run").mkdir()
    assert existing_file("~/w.pt") == tmp_path / "w.pt"
    assert existing_dir("~/run") == tmp_path / "run"
    assert output_dir("~/out") == tmp_path / "out"


class _Parsed(Exception):
    """Raised in place of parsing: carries the parser a command built."""


def test_length_ratio_counts_a_splits_pieces_with_their_end_of_sentence(dict_dir, capsys):
    """The slope for --struct-cross-slope: the split's source pieces over its target pieces, each sentence's </s>
    counted as fairseq counts it; a split or pair the data-bin lacks is named, with those it holds."""
    from fairseq.data import indexed_dataset

    from structmt.data import length_ratio

    write_split(dict_dir, "valid")
    for lang, sentences in (("en", ([4, 5, 6, 7, 8, 2], [9, 2])), ("de", ([4, 5, 2], [6, 2]))):
        builder = indexed_dataset.make_builder(f"{dict_dir}/train.en-de.{lang}.bin", "mmap", vocab_size=100)
        for ids in sentences:
            builder.add_item(torch.tensor(ids))
        builder.finalize(f"{dict_dir}/train.en-de.{lang}.idx")
    length_ratio.main([str(dict_dir)])
    assert capsys.readouterr().out == "train: 8 en / 5 de tokens; --struct-cross-slope 1.60\n"
    length_ratio.main([str(dict_dir), "--split", "valid"])
    assert capsys.readouterr().out == "valid: 5 en / 5 de tokens; --struct-cross-slope 1.00\n"
    with pytest.raises(SystemExit) as e:
        length_ratio.main([str(dict_dir), "--src", "de", "--tgt", "en"])
    assert str(e.value) == (
        f"error: {dict_dir} holds no train.de-en (train.de-en.de.bin/.idx; --split train, --src de, --tgt en); "
        "it holds: train.en-de, valid.en-de"
    )


@pytest.mark.parametrize(
    "module, argv",
    [
        ("structmt.pipeline.translate", ["x"]),
        ("structmt.pipeline.leaderboard", []),
        ("structmt.pipeline.sweep_report", []),
        ("structmt.pipeline.recipes", ["demo"]),
        ("structmt.analysis.report", ["x", "y"]),
        ("structmt.data.cli", ["x"]),
        ("structmt.data.length_ratio", ["x"]),
        ("structmt.bench.attention", []),
        ("structmt.bench.attention_cuda", []),
        ("structmt.bench.decode", []),
        ("structmt.bench.train", []),
        ("structmt.bench.kernel_compile", []),
        ("structmt.bench.report", []),
    ],
)
def test_every_option_of_every_command_has_a_help_text(module, argv, monkeypatch):
    import argparse
    import importlib

    def capture(parser, *args, **kwargs):
        if parser.description != "pre":  # not a pre-parser (parse_known_args)
            raise _Parsed(parser)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(_Parsed) as e:
        importlib.import_module(module).main(argv)
    parser = e.value.args[0]
    silent = [a.option_strings or a.dest for a in parser._actions if not a.help]
    assert not silent, f"{module}: options without help: {silent}"


@pytest.mark.reliability  # docs/reliability.md
def test_translate_refuses_a_line_longer_than_the_models_source_positions_naming_it(monkeypatch, capsys):
    """A line past the model's source positions (fairseq-interactive refuses it too) stops the command
    before anything is translated or written, naming the line and its length."""

    class Task:
        source_dictionary = target_dictionary = None

        def max_positions(self):
            return (5, 5)

    class Model:
        def max_positions(self):
            return (4, 1024)

    class Pieces:
        def encode(self, line, out_type):
            return line.split()

    class Dictionary:
        def encode_line(self, text, add_if_not_exist):
            return torch.zeros(len(text.split()) + 1)  # the pieces and the end of sentence

    translator = translate.Translator.__new__(translate.Translator)
    translator.task, translator.models, translator.sp = Task(), [Model()], Pieces()
    Task.source_dictionary = Task.target_dictionary = Dictionary()
    with pytest.raises(DataError, match=r"input line 2: 5 source positions .* than the 4 the model takes \(1 more"):
        translator.translate(["a b c", "a b c d", "a b", "a b c d e f"])

    translator.checkpoint = Path("checkpoint_last.pt")
    monkeypatch.setattr(translate, "setup", lambda verbose=False: None)
    monkeypatch.setattr(translate, "Translator", lambda run_dir, **settings: translator)
    monkeypatch.setattr(translate, "which_training", lambda *a: (logging.DEBUG, ""))
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"a\na b c d e\n")))
    with pytest.raises(SystemExit, match="^error: input line 2: 6 source positions"):
        translate.main(["."])
    assert capsys.readouterr().out == ""


def test_translate_gives_a_blank_line_for_a_blank_line_and_the_others_as_alone(data_bin):
    """A blank input line comes back blank (the model is not asked to translate nothing, which would invent a
    sentence); every other line gets the translation it gets alone."""
    import sentencepiece as spm
    from conftest import build
    from fairseq.dataclass.configs import GenerationConfig

    size = ["--encoder-layers", "1", "--decoder-layers", "1", "--encoder-embed-dim", "16", "--decoder-embed-dim", "16"]
    size += ["--encoder-attention-heads", "2", "--decoder-attention-heads", "2"]
    size += ["--encoder-ffn-embed-dim", "32", "--decoder-ffn-embed-dim", "32"]
    task, model = build(data_bin, "transformer", *size, seed=3)
    translator = translate.Translator.__new__(translate.Translator)
    translator.task, translator.models, translator.batch_size, translator._torch = task, [model], 64, torch
    translator.sp = spm.SentencePieceProcessor(model_file=str(data_bin.parent / "spm" / "spm.model"))
    translator.generator = task.build_generator([model], GenerationConfig(beam=2, max_len_a=0, max_len_b=8))
    sentences = ["A man rides a bike .", "Two dogs play in the snow ."]
    alone = [translator.translate([s])[0] for s in sentences]
    assert all(alone)  # an untrained model writes something for a real sentence
    assert translator.translate(["", sentences[0], "  \t", sentences[1], ""]) == ["", alone[0], "", alone[1], ""]
    assert translator.translate(["", " "]) == ["", ""]
    # a line of only characters the SentencePiece model drops (a zero-width space, a byte-order mark) is no text
    assert translator.sp.encode("\u200b \ufeff", out_type=str) == []
    assert translator.translate(["\u200b", sentences[0], "\ufeff "]) == ["", alone[0], ""]


def test_translate_gives_each_line_its_best_hypothesis_as_words_in_its_own_place_whatever_the_batches():
    """Lines go to the beam search in batches of at most ``batch_size``; each comes back in its own place as its
    best hypothesis (the beam's first), its pieces joined into words ("\u2581" a space, nothing between the pieces
    of a word, no space at either end). A model without a limit of source positions takes a line of any length."""
    words = ["a", "dog", "runs", "two", "cats", "sleep", "here", "x"]
    batches: list[int] = []

    class Dictionary:
        def encode_line(self, text, add_if_not_exist):
            return torch.tensor([words.index(w) for w in text.split()] + [len(words)])  # and the end of sentence

        def string(self, tokens):  # each word capitalised, in two pieces where it has two letters or more
            return " ".join(f"\u2581{words[i][0].upper()} {words[i][1:]}".strip() for i in tokens.tolist())

    class Dataset:
        def __init__(self, tokens):
            self.tokens = tokens

        def __getitem__(self, i):
            return i

        def collater(self, ids):
            return {"id": torch.tensor(ids), "source": [self.tokens[i] for i in ids]}

    class Task:
        source_dictionary = target_dictionary = Dictionary()

        def max_positions(self):
            return None

        def build_dataset_for_inference(self, tokens, lengths):
            return Dataset(tokens)

        def inference_step(self, generator, models, sample):
            batches.append(len(sample["id"]))
            worse = torch.tensor([words.index("x")])
            return [[{"tokens": source[:-1]}, {"tokens": worse}] for source in sample["source"]]

    class Model:
        def max_positions(self):
            return None

    class Pieces:
        def encode(self, line, out_type):
            return line.split()

    translator = translate.Translator.__new__(translate.Translator)
    translator.task, translator.models, translator.sp, translator.generator = Task(), [Model()], Pieces(), None
    translator.batch_size, translator._torch = 2, torch
    lines = ["a dog runs", "", "two cats sleep here a dog runs", "x", "dog", "  ", "cats sleep"]
    assert translator.translate(lines) == [
        "A Dog Runs",
        "",
        "Two Cats Sleep Here A Dog Runs",
        "X",
        "Dog",
        "",
        "Cats Sleep",
    ]
    assert batches == [2, 2, 1]


def test_translate_names_a_run_folder_without_its_sentencepiece_model_or_with_a_damaged_spec(tmp_path, monkeypatch):
    """Either is an error naming the file, before standard input is read (not a traceback from SentencePiece or
    from reading the run's settings)."""

    class Task:
        def build_generator(self, models, cfg):
            return None

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "checkpoint_last.pt").write_bytes(b"")
    (tmp_path / "spec.json").write_text(json.dumps({"data": {"src": "en", "tgt": "de"}}))
    monkeypatch.setattr(translate, "setup", lambda verbose=False: None)
    monkeypatch.setattr(translate, "load_model", lambda *a, **k: (None, Task()))
    monkeypatch.setattr(sys, "stdin", _Unread())
    with pytest.raises(SystemExit) as e:
        translate.main([str(tmp_path)])
    spm_model = tmp_path / "model" / "spm.model"
    assert str(e.value) == f"error: {spm_model} not found: is {tmp_path} a finished structmt run folder?"
    spm_model.parent.mkdir()
    spm_model.write_bytes(b"")
    (tmp_path / "spec.json").write_text('{"data": {"src": "en"}}')
    with pytest.raises(SystemExit) as e:
        translate.main([str(tmp_path)])
    assert str(e.value).startswith(f"error: {tmp_path / 'spec.json'}: not the settings structmt-run writes (KeyError")


def test_translate_loads_the_checkpoint_given_and_stops_searching_where_the_pipelines_decoding_does(
    tmp_path, monkeypatch
):
    """``--checkpoint`` weights are those loaded, not the run's own; the search's length limit is the one the
    pipeline decodes its test sets with (``MAX_LEN_A`` times the source length plus ``MAX_LEN_B``), not
    fairseq's default of 200 tokens whatever the source."""
    import sentencepiece
    from fairseq.dataclass.configs import GenerationConfig

    from structmt.fairseq_cli import MAX_LEN_A, MAX_LEN_B

    loaded: list[Path] = []
    searched: list[tuple[float, int]] = []

    class Task:
        def build_generator(self, models, cfg):
            searched.append((cfg.max_len_a, cfg.max_len_b))

    for path in (tmp_path / "checkpoints" / "checkpoint_last.pt", tmp_path / "model" / "spm.model"):
        path.parent.mkdir()
        path.write_bytes(b"")
    (tmp_path / "spec.json").write_text(json.dumps({"data": {"src": "en", "tgt": "de"}}))
    other = tmp_path / "checkpoint_1_100.pt"
    other.write_bytes(b"")
    monkeypatch.setattr(translate, "load_model", lambda ckpt, folder, **k: loaded.append(ckpt) or (None, Task()))
    monkeypatch.setattr(sentencepiece, "SentencePieceProcessor", lambda **k: None)
    assert translate.Translator(tmp_path, checkpoint=other).checkpoint == other and loaded == [other]
    default = GenerationConfig()
    assert searched == [(MAX_LEN_A, MAX_LEN_B)] != [(default.max_len_a, default.max_len_b)]


def test_translate_reads_input_without_its_byte_order_mark_and_writes_utf8_whatever_the_locale(monkeypatch):
    assert translate.read_input("\ufeffa\n\ufeffb\n".encode()) == ["a", "\ufeffb"]  # at the start only

    class Stub:
        checkpoint = Path("checkpoint_last.pt")

        def translate(self, lines):
            return ["Mädchen", "\u0153uvre"]  # latin-1 has no œ

    out = io.BytesIO()
    monkeypatch.setattr(translate, "setup", lambda verbose=False: None)
    monkeypatch.setattr(translate, "Translator", lambda run_dir, **settings: Stub())
    monkeypatch.setattr(translate, "which_training", lambda *a: (logging.DEBUG, ""))
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"a\nb\n")))
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(out, encoding="latin-1"))
    translate.main(["."])
    assert out.getvalue() == "Mädchen\n\u0153uvre\n".encode()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"a\nb\n")))
    monkeypatch.setattr(sys, "stdout", text := io.StringIO())  # a caller's text stream, no bytes beneath
    translate.main(["."])
    assert text.getvalue() == "Mädchen\n\u0153uvre\n"


def test_translate_names_the_run_of_the_current_folder_and_translates_when_its_record_cannot_be_read(
    tmp_path, monkeypatch, caplog, capsys
):
    """``structmt-translate .`` in a run folder looks its rows up under the folder's name (its run id), not "";
    a leaderboard or train.json that cannot be read is a warning, never a reason not to translate."""

    class Stub:
        checkpoint = tmp_path / "checkpoints" / "checkpoint_last.pt"

        def translate(self, lines):
            return [line.upper() for line in lines]

    asked: list[Path] = []
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "multi30k_en_de-x-dense-0000abcd").symlink_to(tmp_path)  # a run folder linked under its id
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(translate, "setup", lambda verbose=False: None)
    monkeypatch.setattr(translate, "Translator", lambda run_dir, **settings: Stub())
    monkeypatch.setattr(translate, "which_training", lambda run_dir, *a: asked.append(run_dir) or {}["wall_seconds"])
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"a dog\n")))
    translate.main(["."])
    assert asked == [tmp_path] and asked[0].name == tmp_path.name
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"a dog\n")))
    translate.main(["runs/multi30k_en_de-x-dense-0000abcd"])
    assert asked[1] == tmp_path / "runs" / "multi30k_en_de-x-dense-0000abcd"  # named by the link: its run id
    assert capsys.readouterr().out == "A DOG\n" * 2
    assert (
        f"{tmp_path.name}: which training made checkpoint_last.pt is not said (KeyError('wall_seconds'))" in caplog.text
    )


def test_translate_warns_for_a_leaderboard_it_cannot_read_and_a_checkpoint_of_another_folder(tmp_path):
    run_dir, checkpoint = _trained_run(tmp_path)
    level, line = translate.which_training(run_dir, checkpoint, tmp_path)  # a folder
    assert level == logging.WARNING and "; its scores are not looked up: [Errno 21] Is a directory" in line
    other = tmp_path / "elsewhere.pt"
    torch.save({"optimizer_history": [{"num_updates": 3500}]}, other)  # the finished training's update count
    assert translate.which_training(run_dir, other, tmp_path / "none.csv") == (
        logging.WARNING,
        f"{run_dir.name}: {other} at 3500 updates, not a checkpoint of this run folder: no recorded training or "
        f"leaderboard row of {run_dir.name} is of these weights",
    )


@pytest.mark.parametrize(
    "text, says",
    [
        ('{"data": {"src": "en", "tgt": "de"', "JSONDecodeError: Expecting ',' delimiter"),
        ('{"model": {}}', "KeyError: 'data'"),
        ('{"data": {"src": "en"}}', "KeyError: 'tgt'"),
        ("[]", "TypeError: list indices"),
    ],
)
def test_translate_names_a_spec_json_that_is_not_a_runs_settings(tmp_path, text, says):
    from structmt.pipeline.spec import read_spec

    (tmp_path / "spec.json").write_text(text)
    with pytest.raises(ValueError) as e:
        read_spec(tmp_path)
    assert str(e.value).startswith(f"{tmp_path / 'spec.json'}: not the settings structmt-run writes ({says}")
