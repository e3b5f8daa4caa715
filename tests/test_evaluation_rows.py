"""What ``evaluate_run`` and ``valid_bleu`` put in a leaderboard row, through the real evaluation path (only
the decoder is stubbed): a re-run that differs is rows of its own and a W&B run of its own, a structured run's
paired bootstrap is against its dense partner's hypotheses, the provenance and timing columns come from the
right places, and the schedule's beam reaches every decode."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from structmt.paths import DataFolder
from structmt.pipeline import evaluation, leaderboard
from structmt.pipeline.evaluation import evaluate_run, paired_bootstrap, score, valid_bleu
from structmt.pipeline.spec import DataSpec, ModelSpec, RunSpec, Schedule
from structmt.pipeline.sweep_report import report

DENSE = ModelSpec(arch="transformer_multi30k")
STRUCTURED = ModelSpec(arch="structured_transformer_multi30k", window=3, rare=2)
REFS = ["Ein Mann fährt Rad .", "Zwei Hunde spielen im Schnee .", "Eine Frau liest ein Buch im Park ."]
quiet = lambda msg: None  # noqa: E731


@pytest.fixture
def runs(monkeypatch, tmp_path):
    """``runs(model, outputs, schedule)``: a trained run (train.json, no checkpoint needed) whose decoder writes
    ``outputs[0]`` (a list of lines, the same for every subset) and records each call's beam; ``outputs`` can
    be changed between evaluations."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setattr(leaderboard, "publish", lambda results_dir: None)
    bin_dir = tmp_path / "data" / "bin"
    raw = bin_dir.parent / "raw"
    raw.mkdir(parents=True)
    for subset in ("valid", "test", "test1"):
        (raw / f"{subset}.de").write_text("\n".join(REFS) + "\n")
    monkeypatch.setattr(evaluation, "prepare_data", lambda spec, runs_dir: DataFolder(bin_dir.parent))
    beams: list[int] = []

    def make(model: ModelSpec, outputs: list[list[str]], schedule: Schedule | None = None, metrics=None) -> RunSpec:
        spec = RunSpec(data=DataSpec(), model=model, schedule=schedule or Schedule(max_update=10))
        run_dir = tmp_path / "runs" / spec.run_id()
        run_dir.mkdir(parents=True)
        (run_dir / "train.log").write_text("")
        metrics = metrics or {"checkpoint": "c.pt", "updates": 10, "wall_seconds": 1.0, "tokens_per_second": 2.0}
        (run_dir / "train.json").write_text(json.dumps(metrics))
        make.outputs[spec.run_id()] = outputs
        return spec

    def fake_decode(bin_dir, checkpoint, subset, out, *, beam, lenpen=1.0, **kwargs):
        beams.append(beam if lenpen == 1.0 else (beam, lenpen))
        out.write_text("\n".join(make.outputs[out.parent.name][0]) + "\n")
        return out

    monkeypatch.setattr(evaluation, "decode", fake_decode)
    make.outputs = {}  # type: ignore[attr-defined]
    make.beams = beams  # type: ignore[attr-defined]
    make.runs_dir = tmp_path / "runs"  # type: ignore[attr-defined]
    make.results_dir = tmp_path / "results"  # type: ignore[attr-defined]
    return make


def _evaluate(runs, spec: RunSpec, baseline: RunSpec | None = None) -> list[dict]:
    return evaluate_run(spec, runs_dir=runs.runs_dir, results_dir=runs.results_dir, baseline=baseline, log=quiet)


def _board(runs) -> list[dict[str, str]]:
    return leaderboard.read_rows(runs.results_dir / "leaderboard.csv")


@pytest.mark.reliability  # docs/reliability.md
def test_a_rerun_with_other_hypotheses_is_rows_and_a_wandb_run_of_its_own(runs):
    outputs = [["Ein Mann fährt .", "Zwei Hunde .", "Eine Frau liest ."]]
    spec = runs(DENSE, outputs)
    result = runs.runs_dir / spec.run_id() / "result.json"
    first = _evaluate(runs, spec)
    first_id = json.loads(result.read_text())["wandb_id"]
    assert re.fullmatch(re.escape(spec.run_id()) + r"-[0-9a-f]{8}", first_id)

    result.unlink()  # evaluated again on another machine: other hypotheses
    outputs[0] = ["Ein Mann fährt Rad .", "Zwei Hunde .", "Eine Frau liest ."]
    again = _evaluate(runs, spec)
    board = _board(runs)
    assert len(board) == 4  # 2 test sets × 2 evaluations, none dropped
    assert [r["hypothesis"] for r in board[:2]] == [r["hypothesis"] for r in first]
    for old, new in zip(first, again, strict=True):
        assert re.fullmatch(re.escape(old["hypothesis"][: -len(".de")]) + r"\.[0-9a-f]{8}\.de", new["hypothesis"])
        assert new["bleu"] != old["bleu"]
    wandb_id = json.loads(result.read_text())["wandb_id"]
    assert wandb_id.startswith(spec.run_id() + "-") and wandb_id != first_id

    result.unlink()  # the first evaluation's hypotheses again: no third pair of rows
    outputs[0] = ["Ein Mann fährt .", "Zwei Hunde .", "Eine Frau liest ."]
    _evaluate(runs, spec)
    assert len(_board(runs)) == 4
    assert json.loads(result.read_text())["wandb_id"] == first_id


@pytest.mark.reliability  # docs/reliability.md
def test_a_training_again_with_the_same_hypotheses_keeps_the_row_and_says_where_its_numbers_are(runs):
    """The row is keyed by its hypotheses: a run trained again (its folder deleted, another machine) that decoded
    the same ones adds no row, and its training's seconds and machine went unsaid."""
    spec = runs(DENSE, [REFS])
    _evaluate(runs, spec)
    board = _board(runs)
    run = runs.runs_dir / spec.run_id()
    (run / "result.json").unlink()
    trained = json.loads((run / "train.json").read_text()) | {"wall_seconds": 99.0, "machine": "OTHER MACHINE"}
    (run / "train.json").write_text(json.dumps(trained))
    said: list[str] = []
    evaluate_run(spec, runs_dir=runs.runs_dir, results_dir=runs.results_dir, baseline=None, log=said.append)
    assert _board(runs) == board
    kept = [line for line in said if "the same hypotheses as the leaderboard's rows of an earlier training" in line]
    assert len(kept) == 1  # one line for the test sets of one earlier training
    assert kept[0].startswith(f"[{spec.run_id()}] test_2016_flickr, test_2017_flickr: the same hypotheses")
    assert kept[0].endswith(f"(99.0 s, 2.0 tokens/s on OTHER MACHINE) are in {run / 'train.json'}")
    (run / "result.json").unlink()
    said.clear()
    evaluate_run(spec, runs_dir=runs.runs_dir, results_dir=runs.results_dir, baseline=None, log=said.append)
    assert len([line for line in said if "earlier training" in line]) == 1  # said each time


def test_rows_of_a_training_that_recorded_no_time_are_not_said_to_be_another_training(runs):
    """A leaderboard's rows from before their training's seconds were recorded name no training: evaluated again
    with the same hypotheses, the run is not said to repeat the hypotheses of an earlier training."""
    spec = runs(DENSE, [REFS])
    _evaluate(runs, spec)
    csv_path = runs.results_dir / "leaderboard.csv"
    untimed = [r | {"train_seconds": ""} for r in _board(runs)]
    csv_path.unlink()
    leaderboard.add_rows(csv_path, untimed)
    (runs.runs_dir / spec.run_id() / "result.json").unlink()
    said: list[str] = []
    evaluate_run(spec, runs_dir=runs.runs_dir, results_dir=runs.results_dir, baseline=None, log=said.append)
    assert not [line for line in said if "earlier training" in line]
    assert _board(runs) == untimed


def test_each_test_set_is_scored_against_its_own_references(runs, monkeypatch):
    """The fixture's subsets share one reference file, so scoring test_2017_flickr against test_2016_flickr's
    references passed every test. Here each subset has its own, and the decoder writes exactly those of the
    subset it is asked for: every score is 100 only if each reads its own subset's references."""
    raw = runs.results_dir.parent / "data" / "raw"
    own = {"valid": REFS[::-1], "test": REFS, "test1": ["Ein Kind lacht .", "Ein Hund rennt .", "Es regnet ."]}
    for subset, lines in own.items():
        (raw / f"{subset}.de").write_text("\n".join(lines) + "\n")
    asked = []

    def decode_perfectly(bin_dir, checkpoint, subset, out, *, beam, **kwargs):
        asked.append(subset)
        out.write_text("\n".join(own[subset]) + "\n")
        return out

    monkeypatch.setattr(evaluation, "decode", decode_perfectly)
    spec = runs(DENSE, [[]])
    rows = _evaluate(runs, spec)
    # in the data set's test-set order, here and on the leaderboard
    assert [(r["test_set"], r["bleu"]) for r in rows] == [("test_2016_flickr", 100.0), ("test_2017_flickr", 100.0)]
    assert [r["test_set"] for r in _board(runs)] == ["test_2016_flickr", "test_2017_flickr"]
    assert valid_bleu(spec, runs_dir=runs.runs_dir, log=quiet) == 100.0
    assert sorted(asked) == ["test", "test1", "valid"]


@pytest.mark.parametrize("lines", [2, 4])
def test_hypotheses_and_references_of_other_lengths_stop_naming_both(tmp_path, lines):
    """A decoding cut short (or one with lines to spare) is never scored against the first lines of the references
    (or the first lines of the hypotheses): the step stops naming both files and their line counts."""
    hyp, ref = tmp_path / "hyp.de", tmp_path / "ref.de"
    hyp.write_text("\n".join((REFS + REFS)[:lines]) + "\n")
    ref.write_text("\n".join(REFS) + "\n")
    message = f"{hyp} has {lines} lines but the reference {ref} has 3"
    with pytest.raises(evaluation.StepError, match=f"^{re.escape(message)}$"):
        score(hyp, ref)


def test_an_evaluated_run_whose_decodings_are_gone_reaches_another_leaderboard_with_its_rows_own_files(runs):
    """The run folder's decodings removed (or decoded again since): a leaderboard the run has not reached yet keeps
    the hypotheses its rows name, not the run folder's, and does not stop for want of them."""
    spec = runs(DENSE, [["Ein Mann fährt .", "Zwei Hunde .", "Eine Frau liest ."]])
    rows = _evaluate(runs, spec)
    for name in ("test_2016_flickr", "test_2017_flickr"):
        (runs.runs_dir / spec.run_id() / f"{name}.de").unlink()
    other = runs.results_dir.parent / "other"
    here = evaluate_run(spec, runs_dir=runs.runs_dir, results_dir=other, log=quiet)
    for mine, theirs in zip(here, rows, strict=True):
        kept = evaluation.row_file(mine["hypothesis"])
        assert kept == other / "hyps" / Path(theirs["hypothesis"]).name
        assert kept.read_bytes() == evaluation.row_file(theirs["hypothesis"]).read_bytes()


def test_rows_of_a_slice_or_another_vocabulary_are_labelled_so():
    """A test-set slice is named ``[:n]`` in the ``test_set`` column and a vocabulary other than the data set's
    default ``-vocabN`` in ``data``, so such rows are never compared with the full ones; the slice's label still
    names its test set."""
    sliced = RunSpec(data=DataSpec(vocab_size=1000, max_train_lines=2000, max_eval_lines=100), model=DENSE)
    assert evaluation.row_labels(sliced, "test_2016_flickr") == {
        "data": "multi30k_en_de-vocab1000-train2000",
        "test_set": "test_2016_flickr[:100]",
        "options": "",
    }
    assert evaluation.row_labels(RunSpec(model=DENSE), "test_2016_flickr")["test_set"] == "test_2016_flickr"
    assert evaluation.named_test_set("test_2016_flickr[:100]") == "test_2016_flickr"


def test_a_structured_runs_bootstrap_is_against_its_dense_partners_hypotheses(runs):
    dense = runs(DENSE, [["Ein Mann .", "Zwei Hunde .", "Eine Frau liest ."]])
    structured = runs(STRUCTURED, [["Ein Mann fährt Rad .", "Zwei Hunde spielen .", "Eine Frau liest ein Buch ."]])
    dense_rows = _evaluate(runs, dense)
    rows = _evaluate(runs, structured, baseline=dense)
    assert [(r["p_value_vs_dense"], r["bleu_ci95"]) for r in dense_rows] == [("", "")] * 2
    for r in rows:
        name = r["test_set"]
        expected = paired_bootstrap(
            runs.runs_dir / dense.run_id() / f"{name}.de",
            runs.runs_dir / structured.run_id() / f"{name}.de",
            runs.results_dir.parent / "data" / "raw" / ("test.de" if name == "test_2016_flickr" else "test1.de"),
        )
        assert (r["p_value_vs_dense"], r["bleu_ci95"]) == expected
        assert expected[1] > 0
    board = _board(runs)
    assert {(r["run_id"], r["p_value_vs_dense"]) for r in board} == {
        (dense.run_id(), ""),
        (structured.run_id(), str(rows[0]["p_value_vs_dense"])),
    }


def test_a_p_value_left_empty_is_filled_once_the_dense_run_has_hypotheses(runs, monkeypatch):
    """A structured run evaluated before its dense partner (or first with baseline=false) has its p-values left
    empty; evaluated again once the partner has hypotheses, they are computed from its kept hypotheses and filled
    into its rows, never added as rows of their own; a value once there is never changed."""
    dense = runs(DENSE, [["Ein Mann .", "Zwei Hunde .", "Eine Frau liest ."]])
    structured = runs(STRUCTURED, [["Ein Mann fährt Rad .", "Zwei Hunde spielen .", "Eine Frau liest ein Buch ."]])
    said: list[str] = []
    evaluate_run(structured, runs_dir=runs.runs_dir, results_dir=runs.results_dir, baseline=dense, log=said.append)
    assert any("(evaluate it first); the p-value against it is left empty" in line for line in said)
    assert [r["p_value_vs_dense"] for r in _board(runs)] == ["", ""]
    _evaluate(runs, dense)
    published: list[Path] = []
    monkeypatch.setattr(leaderboard, "publish", published.append)
    rows = _evaluate(runs, structured, baseline=dense)
    assert published == [runs.results_dir]  # no row added, but the values filled in reach the markdown
    for r in rows:
        expected = paired_bootstrap(
            runs.runs_dir / dense.run_id() / f"{r['test_set']}.de",
            Path(r["hypothesis"]),
            runs.results_dir.parent
            / "data"
            / "raw"
            / ("test.de" if r["test_set"] == "test_2016_flickr" else "test1.de"),
        )
        assert (r["p_value_vs_dense"], r["bleu_ci95"]) == expected and expected[0] != ""
    board = [r for r in _board(runs) if r["run_id"] == structured.run_id()]
    assert [(r["p_value_vs_dense"], r["bleu_ci95"]) for r in board] == [
        (str(r["p_value_vs_dense"]), str(r["bleu_ci95"])) for r in rows
    ]
    assert len(_board(runs)) == 4
    stored = json.loads((runs.runs_dir / structured.run_id() / "result.json").read_text())["rows"]
    assert [r["p_value_vs_dense"] for r in stored] == [r["p_value_vs_dense"] for r in rows]
    runs.outputs[dense.run_id()][0] = REFS  # the dense run decoded again: the filled values stay
    (runs.runs_dir / dense.run_id() / "result.json").unlink()
    _evaluate(runs, dense)
    assert _evaluate(runs, structured, baseline=dense) == rows
    assert [r for r in _board(runs) if r["run_id"] == structured.run_id()] == board


def test_a_p_value_left_empty_on_one_test_set_is_filled_against_that_test_sets_references(runs):
    """The dense partner had decoded one test set only when the structured run was evaluated: the other test set's
    p-value, filled in once the partner has its hypotheses, pairs them with that test set's own references; the
    value already there stays."""
    raw = runs.results_dir.parent / "data" / "raw"
    (raw / "test1.de").write_text("Ein Kind lacht im Park .\nZwei Katzen schlafen .\nEin Mann liest ein Buch .\n")
    dense = runs(DENSE, [["Ein Mann .", "Zwei Hunde .", "Eine Frau liest ."]])
    other = runs.results_dir.parent / "other"
    evaluate_run(dense, runs_dir=runs.runs_dir, results_dir=other, log=quiet)  # no row here: its run folder pairs
    (runs.runs_dir / dense.run_id() / "test_2017_flickr.de").unlink()
    structured = runs(STRUCTURED, [["Ein Mann fährt Rad .", "Zwei Hunde spielen .", "Eine Frau liest ein Buch ."]])
    first = _evaluate(runs, structured, baseline=dense)
    assert first[0]["p_value_vs_dense"] != "" and first[1]["p_value_vs_dense"] == ""
    _evaluate(runs, dense)  # its rows reach this leaderboard, with their files
    rows = _evaluate(runs, structured, baseline=dense)
    assert rows[0] == first[0]
    dense_row = evaluation.first_evaluation(_board(runs), dense.run_id(), "test_2017_flickr")
    pair = (evaluation.row_file(dense_row["hypothesis"]), evaluation.row_file(rows[1]["hypothesis"]))
    expected = paired_bootstrap(*pair, raw / "test1.de")
    assert (rows[1]["p_value_vs_dense"], rows[1]["bleu_ci95"]) == expected
    assert expected != paired_bootstrap(*pair, raw / "test.de")


def test_an_evaluation_waits_for_the_runs_lock(runs):
    """Another job training or evaluating the run holds its lock: this evaluation, and a sweep's validation
    score, decode nothing until it is released."""
    import threading

    from structmt.pipeline.training import run_lock

    spec = runs(DENSE, [REFS])

    def waits(evaluate, decodes: int):
        runs.beams.clear()
        done: list = []
        with run_lock(runs.runs_dir, spec.run_id()):
            job = threading.Thread(target=lambda: done.append(evaluate()))
            job.start()
            job.join(1.0)
            assert job.is_alive() and runs.beams == []
        job.join(30)
        assert not job.is_alive() and len(runs.beams) == decodes
        return done[0]

    assert len(waits(lambda: _evaluate(runs, spec), 2)) == 2
    assert waits(lambda: valid_bleu(spec, runs_dir=runs.runs_dir, log=quiet), 1) == 100.0


def test_provenance_and_timing_columns_come_from_training_and_this_evaluation(runs, monkeypatch):
    metrics = {"checkpoint": "c.pt", "updates": 7, "wall_seconds": 1.04, "tokens_per_second": 2.0}  # not max_update
    trained = {"git_commit": "t" * 40, "machine": "TRAIN MACHINE"}
    spec = runs(DENSE, [REFS], schedule=Schedule(max_update=10, seed=7), metrics=metrics | trained)
    monkeypatch.setattr(evaluation, "git_commit", lambda: "s" * 40)
    monkeypatch.setattr(evaluation, "machine_label", lambda: "EVAL MACHINE")
    _evaluate(runs, spec)
    (row, _) = _board(runs)
    assert row["direction"] == "en-de"  # source-target
    assert {k: row[k] for k in ("train_commit", "train_machine", "git_commit", "machine", "updates", "seed")} == {
        "train_commit": "t" * 40,
        "train_machine": "TRAIN MACHINE",  # which the training's seconds and tokens/s were measured on
        "git_commit": "s" * 40,
        "machine": "EVAL MACHINE",
        "updates": "7",
        "seed": "7",
    }
    assert (row["train_seconds"], row["train_tokens_per_s"]) == ("1.0", "2.0")


def test_the_schedules_beam_reaches_every_decode_and_the_sweep_objective_is_bleu(runs):
    hyps = ["Ein Mann fährt .", "Zwei Hunde spielen im Schnee .", "Eine Frau liest ein Buch ."]
    penalised = runs(DENSE, [hyps], schedule=Schedule(max_update=10, beam=2, lenpen=0.6))
    rows = _evaluate(runs, penalised)
    valid_bleu(penalised, runs_dir=runs.runs_dir, log=quiet)
    assert runs.beams == [(2, 0.6)] * 3 and {r["options"] for r in rows} == {"beam=2 lenpen=0.6"}  # and labelled
    runs.beams.clear()
    spec = runs(DENSE, [hyps], schedule=Schedule(max_update=10, beam=2))
    _evaluate(runs, spec)
    got = valid_bleu(spec, runs_dir=runs.runs_dir, log=quiet)
    assert runs.beams == [2, 2, 2]  # test, test1, valid
    s = score(runs.runs_dir / spec.run_id() / "valid.de", runs.results_dir.parent / "data" / "raw" / "valid.de")
    import sacrebleu

    exact = sacrebleu.corpus_bleu(hyps, [REFS]).score
    assert got == s.bleu == pytest.approx(exact, abs=0.01) and abs(got - s.chrf) > 1
    assert 0 < got < 100
    assert valid_bleu(spec, runs_dir=runs.runs_dir, log=quiet) == got and runs.beams == [2, 2, 2]  # kept, not redone


def test_a_sweep_members_wandb_run_has_its_validation_bleu(runs, monkeypatch):
    """A sweep member is scored on the validation set before its evaluation, so that its W&B run has the sweep's
    objective; a run evaluated (and logged) before it had the score (a sweep member since, or scored after its
    evaluation by older code) is logged again with it, once."""
    logged: list[dict | None] = []
    configs: list[dict] = []

    def log_experiment(run_id, config, *args, valid=None, **kwargs):
        logged.append(valid)
        configs.append(config)
        return Path("offline-run-x")

    monkeypatch.setattr(evaluation.tracking, "log_experiment", log_experiment)
    monkeypatch.setattr(evaluation, "train_run", lambda spec, **kw: None)
    hyps = ["Ein Mann fährt .", "Zwei Hunde spielen im Schnee .", "Eine Frau liest ein Buch ."]
    where = {"runs_dir": runs.runs_dir, "results_dir": runs.results_dir, "log": quiet}

    member = runs(DENSE, [hyps])
    evaluation.run_experiment(member, **where, objective=True)
    bleu = valid_bleu(member, runs_dir=runs.runs_dir, log=quiet)
    assert 0 < bleu < 100 and logged == [score_of(runs, member)] and logged[0]["bleu"] == bleu

    earlier = runs(STRUCTURED, [hyps])
    evaluation.run_experiment(earlier, **where)  # not a sweep member: no validation score to log
    evaluation.run_experiment(earlier, **where, objective=True)  # now one: logged again, with it
    evaluation.run_experiment(earlier, **where, objective=True)  # and not again
    assert logged[1:] == [None, score_of(runs, earlier)]

    older = runs(DENSE, [hyps], schedule=Schedule(max_update=10, seed=2))  # older code: logged, then scored
    evaluation.run_experiment(older, **where)
    valid_bleu(older, runs_dir=runs.runs_dir, log=quiet)
    result = runs.runs_dir / older.run_id() / "result.json"
    result.write_text(json.dumps({k: v for k, v in json.loads(result.read_text()).items() if k != "wandb_valid"}))
    evaluation.run_experiment(older, **where, objective=True)  # logged again, with the score it has had
    evaluation.run_experiment(older, **where, objective=True)
    assert logged[3:] == [None, score_of(runs, older)]
    # a dense run's model is its arch alone (its rows leave window and rare empty), a structured run's has them
    assert configs[0]["model"] == {"arch": "transformer_multi30k"}
    assert (configs[1]["model"]["window"], configs[1]["model"]["rare"]) == (3, 2)


def score_of(runs, spec: RunSpec) -> dict:
    return json.loads((runs.runs_dir / spec.run_id() / "valid.json").read_text())


def test_a_structured_configuration_runs_its_dense_baseline_first_and_scores_against_it(monkeypatch, tmp_path):
    """``structmt-run model=structured_tiny``: the dense model of the same data and schedule first, then the
    structured one with it as the bootstrap's baseline; ``make demo``'s ``compare`` evaluates in that order too
    (a structured run evaluated first would find no dense hypotheses and keep an empty p-value for good)."""
    from hydra import compose, initialize_config_dir

    from structmt.pipeline import app, recipes

    with initialize_config_dir(config_dir=str(Path(app.REPO_ROOT) / "conf"), version_base="1.3"):
        cfg = compose(config_name="structmt", overrides=["model=structured_tiny", f"runs_dir={tmp_path}"])
    calls: list[tuple[str, str | None]] = []
    record = lambda spec, *, baseline=None, **kw: calls.append((spec.model.arch, baseline and baseline.model.arch))  # noqa: E731
    monkeypatch.setattr(app, "run_experiment", record)
    app.run(cfg)
    assert calls == [("transformer_tiny", None), ("structured_transformer_tiny", "transformer_tiny")]

    monkeypatch.setattr(recipes, "prepare_data", lambda spec, runs_dir: None)
    monkeypatch.setattr(recipes, "train_run", lambda spec, **kw: None)
    calls.clear()
    monkeypatch.setattr(
        recipes, "evaluate_run", lambda spec, *, baseline=None, **kw: record(spec, baseline=baseline) or []
    )
    dense, structured = (RunSpec(model=DENSE), RunSpec(model=STRUCTURED))
    recipes.compare(dense, structured, runs_dir=tmp_path, results_dir=tmp_path)
    assert calls == [("transformer_multi30k", None), ("structured_transformer_multi30k", "transformer_multi30k")]


def test_a_structured_run_without_its_dense_partners_hypotheses_says_why_its_p_value_is_empty(runs):
    dense = runs(DENSE, [REFS])  # trained, never evaluated: no hypotheses in its run folder
    structured = runs(STRUCTURED, [REFS])
    said: list[str] = []
    rows = evaluate_run(
        structured, runs_dir=runs.runs_dir, results_dir=runs.results_dir, baseline=dense, log=said.append
    )
    assert [r["p_value_vs_dense"] for r in rows] == ["", ""]
    assert (
        f"[{structured.run_id()}] test_2016_flickr: no hypotheses of the dense run {dense.run_id()} (evaluate it "
        "first); the p-value against it is left empty" in said
    )


@pytest.mark.parametrize("off_when_filled", [False, True])
def test_a_p_value_filled_in_later_reaches_the_runs_wandb_summary(runs, monkeypatch, off_when_filled):
    """Logged by the evaluation that fills it in, or, when W&B was off then (logger=none, or W&B failing), by
    the next evaluation with it on; then never again."""
    logged: list[tuple[str, list]] = []
    off = [False]

    def log_wandb(spec, run_dir, records, runs_dir, wandb, wandb_id, log):
        if off[0]:
            return None
        logged.append((wandb_id, [r["p_value_vs_dense"] for r in records]))
        return "runs/wandb/offline-run-x"

    monkeypatch.setattr(evaluation, "_log_wandb", log_wandb)
    dense = runs(DENSE, [["Ein Mann .", "Zwei Hunde .", "Eine Frau liest ."]])
    structured = runs(STRUCTURED, [["Ein Mann fährt Rad .", "Zwei Hunde spielen .", "Eine Frau liest ein Buch ."]])
    _evaluate(runs, structured, baseline=dense)
    _evaluate(runs, dense)
    off[0] = off_when_filled
    rows = _evaluate(runs, structured, baseline=dense)  # fills the p-values in
    off[0] = False
    if off_when_filled:
        _evaluate(runs, structured, baseline=dense)
    wandb_id = json.loads((runs.runs_dir / structured.run_id() / "result.json").read_text())["wandb_id"]
    assert logged[0] == (wandb_id, ["", ""])
    assert logged[-1] == (wandb_id, [r["p_value_vs_dense"] for r in rows]) and rows[0]["p_value_vs_dense"] != ""
    _evaluate(runs, structured, baseline=dense)  # nothing new: not logged again
    assert len(logged) == 3  # the structured run, the dense run, the structured run with its p-values


def test_runs_that_differ_only_in_the_beam_are_labelled_apart(runs):
    """``-m train.beam=2,4``: two rows of one model, seed and schedule with other BLEU, told apart by nothing
    (and the headline and the sweep report refused them as two runs of one seed). A beam other than the
    schedule's is named in the ``options`` column; the schedule's own (smoke decodes with 2) is not."""
    hyps = ["Ein Mann fährt .", "Zwei Hunde spielen im Schnee .", "Eine Frau liest ein Buch ."]
    for beam in (2, 4):
        _evaluate(runs, runs(DENSE, [hyps], schedule=Schedule(name="smoke", max_update=10, beam=beam)))
    labels = {(r["test_set"], r["options"]) for r in _board(runs)}
    assert labels == {(t, o) for t in ("test_2016_flickr", "test_2017_flickr") for o in ("", "beam=4")}
    table = leaderboard.headline(_board(runs), "multi30k_en_de", "smoke")
    assert "| test_2016_flickr | transformer_multi30k beam=4 | – | – | 1 |" in table
    for beam in (2, 4):  # each beam's sweep has its report: --options beam=4 selects the other
        _evaluate(runs, runs(STRUCTURED, [hyps], schedule=Schedule(name="smoke", max_update=10, beam=beam)))
    out = runs.results_dir / "sweeps"
    default = report(runs.results_dir, "multi30k_en_de", "smoke", "test_2016_flickr", out)
    other = report(runs.results_dir, "multi30k_en_de", "smoke", "test_2016_flickr", out, options="beam=4")
    assert "Highest test BLEU of the heatmaps" in default and "Highest test BLEU of the heatmaps" in other
    assert f"--options beam=4 --results-dir {runs.results_dir}`" in other and "--options" not in default
    assert (out / "sweep_multi30k_en_de_smoke_test_2016_flickr_options-beam=4.md").read_text() == other
    custom = runs(DENSE, [hyps], schedule=Schedule(max_update=10, beam=4))  # no conf/train file: 5 is the usual
    _evaluate(runs, custom)
    assert {r["options"] for r in _board(runs) if r["run_id"] == custom.run_id()} == {"beam=4"}


def test_a_dense_partner_missing_from_this_leaderboard_is_paired_through_its_run_folder(runs):
    """A dense run evaluated into another results folder has no row here: the structured run's p-value pairs with
    the hypotheses the dense run decoded into its run folder, not left empty."""
    dense = runs(DENSE, [["Ein Mann .", "Zwei Hunde .", "Eine Frau liest ."]])
    evaluate_run(dense, runs_dir=runs.runs_dir, results_dir=runs.results_dir.parent / "other", log=quiet)
    structured = runs(STRUCTURED, [["Ein Mann fährt Rad .", "Zwei Hunde spielen .", "Eine Frau liest ."]])
    rows = _evaluate(runs, structured, baseline=dense)
    expected = paired_bootstrap(
        runs.runs_dir / dense.run_id() / "test_2016_flickr.de",
        runs.runs_dir / structured.run_id() / "test_2016_flickr.de",
        runs.runs_dir.parent / "data" / "raw" / "test.de",
    )
    assert (rows[0]["p_value_vs_dense"], rows[0]["bleu_ci95"]) == expected and expected[0] != ""


@pytest.mark.reliability  # docs/reliability.md
def test_a_dense_partner_row_whose_hypotheses_are_gone_stops_the_p_value(runs):
    """The dense row the leaderboard shows names a file that was removed: the structured run's evaluation stops
    saying which file to restore, rather than pairing its p-value with other hypotheses."""
    dense = runs(DENSE, [["Ein Mann .", "Zwei Hunde .", "Eine Frau liest ."]])
    (first, _) = _evaluate(runs, dense)
    gone = evaluation.row_file(first["hypothesis"])
    gone.unlink()
    structured = runs(STRUCTURED, [REFS])
    with pytest.raises(
        evaluation.StepError,
        match="^" + re.escape(f"the dense partner's first evaluation on test_2016_flickr names {gone}, which is gone: "
                              "restore it (git checkout -- results/hyps)"),
    ):  # fmt: skip
        _evaluate(runs, structured, baseline=dense)


@pytest.mark.reliability  # docs/reliability.md
def test_a_structured_runs_p_value_pairs_with_the_dense_row_the_leaderboard_shows(runs):
    """The dense partner decoded again with other hypotheses (trained again, another machine) is a re-run: the
    p-value pairs with its first evaluation, the dense row the headline shows beside the structured one."""
    first_dense = [["Ein Mann .", "Zwei Hunde .", "Eine Frau liest ."]]
    dense = runs(DENSE, first_dense)
    _evaluate(runs, dense)
    (runs.runs_dir / dense.run_id() / "result.json").unlink()
    runs.outputs[dense.run_id()] = [REFS]  # the run folder now holds other hypotheses: a re-run row
    _evaluate(runs, dense)
    structured = runs(STRUCTURED, [["Ein Mann fährt Rad .", "Zwei Hunde spielen .", "Eine Frau liest ."]])
    rows = _evaluate(runs, structured, baseline=dense)
    first_row = leaderboard.evaluations(_board(runs))[dense.run_id(), "test_2016_flickr"][0]
    ref = runs.runs_dir.parent / "data" / "raw" / "test.de"
    expected = paired_bootstrap(
        evaluation.row_file(first_row["hypothesis"]), runs.runs_dir / structured.run_id() / "test_2016_flickr.de", ref
    )
    assert (rows[0]["p_value_vs_dense"], rows[0]["bleu_ci95"]) == expected
    rerun = runs.runs_dir / dense.run_id() / "test_2016_flickr.de"
    assert expected != paired_bootstrap(rerun, runs.runs_dir / structured.run_id() / "test_2016_flickr.de", ref)


@pytest.mark.reliability  # docs/reliability.md
def test_the_same_hypotheses_scored_otherwise_stop_with_both_numbers(runs):
    """Other references (another data preparation) or another checkout's file of the same name: the row kept
    has other scores than this evaluation; it was silently kept, and the summary called it this evaluation."""
    dense = runs(DENSE, [["Ein Mann .", "Zwei Hunde .", "Eine Frau liest ."]])
    _evaluate(runs, dense)
    (runs.runs_dir / dense.run_id() / "result.json").unlink()
    (runs.runs_dir.parent / "data" / "raw" / "test.de").write_text("Ein Mann .\nZwei Hunde .\nEine Frau liest .\n")
    with pytest.raises(ValueError, match=r"is recorded with other scores \(bleu [\d.]+ there, 100.0 now; chrf"):
        _evaluate(runs, dense)


@pytest.mark.reliability  # docs/reliability.md
def test_a_lost_hypothesis_file_is_not_taken_for_a_reruns_name(runs):
    """A row's file removed: the re-run took its name, no row was added, and the old row scored the new file."""
    dense = runs(DENSE, [["Ein Mann .", "Zwei Hunde .", "Eine Frau liest ."]])
    first = _evaluate(runs, dense)
    evaluation.row_file(first[0]["hypothesis"]).unlink()
    (runs.runs_dir / dense.run_id() / "result.json").unlink()
    runs.outputs[dense.run_id()] = [REFS]
    with pytest.raises(evaluation.StepError, match=r"names results/|names .*hyps.* which is gone: restore it"):
        _evaluate(runs, dense)
    assert len(_board(runs)) == 2


def test_a_hypothesis_path_is_recorded_relative_to_the_repository_however_it_was_spelt(tmp_path, monkeypatch):
    """--results-dir ../results from scripts/ recorded '../results/hyps/…', which row_file then read from beside
    the checkout; a results folder given through a link was recorded absolute, a second row of one evaluation."""
    from structmt.paths import REPO_ROOT

    monkeypatch.chdir(REPO_ROOT / "scripts")
    assert evaluation.row_text(Path("../results/hyps/x.test_2016_flickr.de")) == "results/hyps/x.test_2016_flickr.de"
    alias = tmp_path / "alias"
    alias.symlink_to(REPO_ROOT)
    assert evaluation.row_text(alias / "results" / "hyps" / "x.de") == "results/hyps/x.de"
    assert evaluation.row_text(tmp_path / "elsewhere.de") == str(tmp_path.resolve() / "elsewhere.de")


@pytest.mark.reliability  # docs/reliability.md
def test_a_structured_rerun_pairs_with_the_dense_run_decoded_beside_it(runs):
    """make demo again on another machine: both runs are re-runs, and the structured re-run's p-value is against
    the dense run of the same machine, not the first machine's dense hypotheses."""
    dense = runs(DENSE, [["Ein Mann .", "Zwei Hunde .", "Eine Frau liest ."]])
    structured = runs(STRUCTURED, [["Ein Mann fährt .", "Zwei Hunde .", "Eine Frau liest ein Buch ."]])
    _evaluate(runs, dense)
    _evaluate(runs, structured, baseline=dense)
    for spec, lines in ((dense, REFS), (structured, ["Ein Mann fährt Rad .", "Zwei Hunde spielen .", "Eine Frau ."])):
        (runs.runs_dir / spec.run_id() / "result.json").unlink()
        runs.outputs[spec.run_id()] = [lines]
    _evaluate(runs, dense)
    rerun = _evaluate(runs, structured, baseline=dense)
    ref = runs.runs_dir.parent / "data" / "raw" / "test.de"
    beside = paired_bootstrap(
        runs.runs_dir / dense.run_id() / "test_2016_flickr.de",
        runs.runs_dir / structured.run_id() / "test_2016_flickr.de",
        ref,
    )
    assert (rerun[0]["p_value_vs_dense"], rerun[0]["bleu_ci95"]) == beside
    assert len(_board(runs)) == 8  # both re-runs are rows of their own
