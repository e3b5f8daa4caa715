"""Run and data folders: one data folder per preparation setting, rows that name a direction and a test-set slice,
an evaluated run's rows in every leaderboard it is evaluated into,
model files copied whole or not at all, cached archives verified, bootstrap inputs of the wrong length rejected."""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from structmt.data import wmt
from structmt.fairseq_cli import StepError
from structmt.files import DataError
from structmt.paths import DataFolder
from structmt.pipeline import evaluation, leaderboard, training
from structmt.pipeline.evaluation import evaluate_run, paired_bootstrap
from structmt.pipeline.spec import DataSpec, ModelSpec, RunSpec, Schedule
from structmt.pipeline.training import keep_model_files, prepare_data

pytestmark = pytest.mark.reliability  # failure handling: docs/reliability.md

SMOKE = {"vocab_size": 1000, "max_train_lines": 2000, "max_eval_lines": 100}  # conf/data/multi30k_smoke.yaml
DENSE = ModelSpec(arch="transformer_multi30k")
quiet = lambda msg: None  # noqa: E731


def _folder(monkeypatch, tmp_path: Path, data: DataSpec) -> str:
    """The data folder ``prepare_data`` prepares ``data`` in (nothing is prepared)."""
    asked = []
    monkeypatch.setattr(training, "prepare_dataset", lambda name, out, cfg, base_url: asked.append(out) or out)
    prepare_data(RunSpec(data=data), tmp_path)
    return str(asked[0].relative_to(tmp_path))


def test_each_direction_and_slice_is_prepared_in_a_folder_of_its_own(monkeypatch, tmp_path):
    folders = {
        key: _folder(monkeypatch, tmp_path, data)
        for key, data in {
            "en-de": DataSpec(),
            "en-de smoke": DataSpec(**SMOKE),
            "de-en": DataSpec(src="de", tgt="en"),
            "de-en smoke": DataSpec(src="de", tgt="en", **SMOKE),
            "en-fr": DataSpec(tgt="fr"),
            "wmt14 at its default vocabulary": DataSpec(name="wmt14_en_de", vocab_size=32000),
            "wmt14 at 8000": DataSpec(name="wmt14_en_de", vocab_size=8000),
        }.items()
    }
    assert (
        folders
        == {  # en→de keeps the folders it always had
            "en-de": "data/multi30k_en_de",
            "en-de smoke": "data/multi30k_en_de-9bc7c0",
            "de-en": "data/multi30k_en_de-de-en",
            "de-en smoke": "data/multi30k_en_de-de-en-9bc7c0",
            "en-fr": "data/multi30k_en_de-en-fr",
            # the default as rows name it (data/datasets.py's default_vocab): no hash, and no row label either
            "wmt14 at its default vocabulary": "data/wmt14_en_de",
            "wmt14 at 8000": "data/wmt14_en_de-" + folders["wmt14 at 8000"][-6:],
        }
    )
    assert folders["wmt14 at 8000"] != "data/wmt14_en_de"
    assert training.data_label(DataSpec(name="wmt16_en_ro", src="en", tgt="ro")) == "wmt16_en_ro"


@pytest.mark.parametrize("key", ["max_train_lines", "max_eval_lines"])
def test_a_negative_slice_is_rejected_before_anything_is_prepared(monkeypatch, tmp_path, key):
    monkeypatch.setattr(training, "prepare_dataset", lambda *a: pytest.fail("prepared"))
    with pytest.raises(ValueError, match=rf"{key}=-5 must be >= 0"):  # PrepConfig's check
        prepare_data(RunSpec(data=DataSpec(**{key: -5})), tmp_path)


@pytest.fixture
def trained(monkeypatch, tmp_path):
    """``trained(data)``: a trained dense run of ``data`` (fake: nothing is decoded; its hypotheses are the
    references) under ``tmp_path/runs``; returns its spec."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    published: list[Path] = []
    monkeypatch.setattr(leaderboard, "publish", published.append)
    bin_dir = tmp_path / "data" / "bin"

    decoded: list[Path] = []

    def fake_decode(bin_dir, checkpoint, subset, out, **kwargs):
        decoded.append(checkpoint)
        shutil.copyfile(bin_dir.parent / "raw" / f"{subset}.{out.suffix[1:]}", out)
        return out

    monkeypatch.setattr(evaluation, "prepare_data", lambda spec, runs_dir: DataFolder(bin_dir.parent))
    monkeypatch.setattr(evaluation, "decode", fake_decode)

    def make(data: DataSpec, model: ModelSpec = DENSE) -> RunSpec:
        (bin_dir.parent / "raw").mkdir(parents=True, exist_ok=True)
        for subset in ("test", "test1"):
            (bin_dir.parent / "raw" / f"{subset}.{data.tgt}").write_text("Ein Mann fährt Rad .\nZwei Hunde .\n")
        spec = RunSpec(data=data, model=model, schedule=Schedule(max_update=10))
        run_dir = tmp_path / "runs" / spec.run_id()
        run_dir.mkdir(parents=True)
        (run_dir / "train.log").write_text("")
        metrics = {"checkpoint": "c.pt", "updates": 10, "wall_seconds": 1.0, "tokens_per_second": 2.0}
        (run_dir / "train.json").write_text(json.dumps(metrics))
        return spec

    make.published = published  # type: ignore[attr-defined]
    make.decoded = decoded  # type: ignore[attr-defined]
    return make


@pytest.mark.parametrize(
    "data, data_label, direction, tests",
    [
        (DataSpec(), "multi30k_en_de", "en-de", ["test_2016_flickr", "test_2017_flickr"]),  # as committed rows
        (
            DataSpec(**SMOKE),
            "multi30k_en_de-vocab1000-train2000",
            "en-de",
            ["test_2016_flickr[:100]", "test_2017_flickr[:100]"],
        ),
        (DataSpec(src="de", tgt="en"), "multi30k_en_de-de-en", "de-en", ["test_2016_flickr", "test_2017_flickr"]),
        (DataSpec(max_train_lines=2000), "multi30k_en_de-train2000", "en-de", ["test_2016_flickr", "test_2017_flickr"]),
        (DataSpec(vocab_size=4000), "multi30k_en_de-vocab4000", "en-de", ["test_2016_flickr", "test_2017_flickr"]),
        (DataSpec(name="wmt14_en_de", vocab_size=32000), "wmt14_en_de", "en-de", ["newstest2014"]),  # its default
    ],
)
def test_rows_name_the_direction_and_a_slice_of_the_test_set(trained, tmp_path, data, data_label, direction, tests):
    """Rows of another direction, vocabulary, training slice or test slice are labelled so: never averaged as seeds
    of (or compared with) rows of the data set itself."""
    spec = trained(data)
    evaluate_run(spec, runs_dir=tmp_path / "runs", results_dir=tmp_path / "results", log=quiet)
    rows = leaderboard.read_rows(tmp_path / "results" / "leaderboard.csv")
    assert [(r["data"], r["direction"], r["test_set"]) for r in rows] == [(data_label, direction, t) for t in tests]


def test_an_evaluated_run_still_reaches_another_leaderboard_once(trained, tmp_path):
    spec = trained(DataSpec(**SMOKE))
    runs, first, other = tmp_path / "runs", tmp_path / "results", tmp_path / "other"
    rows = evaluate_run(spec, runs_dir=runs, results_dir=first, log=quiet)
    said: list[str] = []
    here = evaluate_run(spec, runs_dir=runs, results_dir=other, log=said.append)
    assert "evaluated earlier; skipping (added its 2 rows to" in said[0]
    # the same rows, each naming a copy of its hypotheses in this folder: removing the first folder breaks none
    assert [r | {"hypothesis": ""} for r in here] == [r | {"hypothesis": ""} for r in rows]
    for mine, theirs in zip(here, rows, strict=True):
        assert Path(mine["hypothesis"]) == other / "hyps" / Path(theirs["hypothesis"]).name
        assert Path(mine["hypothesis"]).read_bytes() == Path(theirs["hypothesis"]).read_bytes()
    assert leaderboard.read_rows(other / "leaderboard.csv") == [{k: str(v) for k, v in r.items()} for r in here]
    evaluate_run(spec, runs_dir=runs, results_dir=other, log=quiet)  # again: nothing added, nothing rendered
    assert len(leaderboard.read_rows(other / "leaderboard.csv")) == 2
    assert trained.published == [first, other]
    assert leaderboard.read_rows(first / "leaderboard.csv") == [{k: str(v) for k, v in r.items()} for r in rows]
    # a sliced run's result.json from before slices were labelled: its rows reach a leaderboard labelled
    done = runs / spec.run_id() / "result.json"
    stored = json.loads(done.read_text())["rows"]
    done.write_text(json.dumps({"rows": [r | {"test_set": r["test_set"].partition("[")[0]} for r in stored]}))
    evaluate_run(spec, runs_dir=runs, results_dir=tmp_path / "third", log=quiet)
    labels = [r["test_set"] for r in leaderboard.read_rows(tmp_path / "third" / "leaderboard.csv")]
    assert labels == ["test_2016_flickr[:100]", "test_2017_flickr[:100]"]
    shutil.rmtree(first)  # gone: the run folder's decoding is kept instead
    fourth = evaluate_run(spec, runs_dir=runs, results_dir=tmp_path / "fourth", log=quiet)
    assert [Path(r["hypothesis"]).read_bytes() for r in fourth] == [Path(r["hypothesis"]).read_bytes() for r in here]
    for r in rows:
        (runs / spec.run_id() / Path(r["hypothesis"]).name.replace(f"{spec.run_id()}.", "")).unlink()
    with pytest.raises(StepError, match=r"hypotheses of .* are gone: .*remove .*result\.json to decode it again"):
        evaluate_run(spec, runs_dir=runs, results_dir=tmp_path / "fifth", log=quiet)


def test_rows_name_other_structure_options_even_from_a_result_stored_before_the_column(trained, tmp_path):
    model = ModelSpec(arch="structured_transformer_multi30k", error="sink:1")
    spec = trained(DataSpec(), model)
    runs = tmp_path / "runs"
    evaluate_run(spec, runs_dir=runs, results_dir=tmp_path / "results", log=quiet)
    assert [r["options"] for r in leaderboard.read_rows(tmp_path / "results" / "leaderboard.csv")] == [
        "error=sink:1"
    ] * 2
    # the decoded checkpoint is the run folder's own, whatever train.json recorded ("c.pt")
    assert set(trained.decoded) == {runs / spec.run_id() / "checkpoints" / "checkpoint_last.pt"}
    done = runs / spec.run_id() / "result.json"
    stored = json.loads(done.read_text())["rows"]
    done.write_text(json.dumps({"rows": [{k: v for k, v in r.items() if k != "options"} for r in stored]}))
    evaluate_run(spec, runs_dir=runs, results_dir=tmp_path / "other", log=quiet)
    assert [r["options"] for r in leaderboard.read_rows(tmp_path / "other" / "leaderboard.csv")] == ["error=sink:1"] * 2


def test_a_run_not_logged_to_wandb_is_logged_by_its_next_evaluation(trained, tmp_path, monkeypatch):
    """logger=none (or a failed W&B call) the first time: a later evaluation with W&B on logs it, once."""
    from structmt.pipeline import tracking
    from structmt.pipeline.tracking import WandbSettings

    calls: list[tuple[str, str]] = []

    def log_experiment(
        run_id, config, train_log, rows, wandb_dir, settings=None, group=None, wandb_id=None, valid=None
    ):
        calls.append((settings.mode, wandb_id))
        return None if settings.mode == "disabled" else wandb_dir / f"offline-run-x-{wandb_id}"

    monkeypatch.setattr(tracking, "log_experiment", log_experiment)
    spec = trained(DataSpec(**SMOKE))
    runs, results = tmp_path / "runs", tmp_path / "results"
    done = runs / spec.run_id() / "result.json"
    evaluate_run(spec, runs_dir=runs, results_dir=results, log=quiet, wandb=WandbSettings("disabled"))
    assert json.loads(done.read_text())["wandb"] is None
    said: list[str] = []
    evaluate_run(spec, runs_dir=runs, results_dir=results, log=said.append, wandb=WandbSettings("offline"))
    wandb_id = json.loads(done.read_text())["wandb_id"]
    assert json.loads(done.read_text())["wandb"] == str(runs / "wandb" / f"offline-run-x-{wandb_id}")
    assert any("W&B (offline): " in line for line in said)
    evaluate_run(spec, runs_dir=runs, results_dir=results, log=quiet, wandb=WandbSettings("offline"))
    assert calls == [("disabled", wandb_id), ("offline", wandb_id)]  # logged once, as the same W&B run


def test_a_wandb_run_carries_the_labels_the_leaderboard_tells_runs_apart_by(trained, tmp_path, monkeypatch):
    """Two roles files were one W&B config (the file's path) and a vocabulary or training slice shared the full
    data's group: the config names the rows' labels and the group is the rows' data column."""
    from structmt.pipeline import tracking
    from structmt.pipeline.tracking import WandbSettings

    seen: list[tuple[dict, str]] = []

    def log_experiment(
        run_id, config, train_log, rows, wandb_dir, settings=None, group=None, wandb_id=None, valid=None
    ):
        seen.append((config, group))
        return wandb_dir / "offline-run-x"

    monkeypatch.setattr(tracking, "log_experiment", log_experiment)
    spec = trained(DataSpec(**SMOKE), ModelSpec(arch="structured_transformer_multi30k", error="sink:1"))
    rows = evaluate_run(spec, runs_dir=tmp_path / "runs", results_dir=tmp_path / "r", wandb=WandbSettings("offline"))
    config, group = seen[0]
    assert config["leaderboard"] == {
        "data": "multi30k_en_de-vocab1000-train2000",
        "heads": "auto",
        "cross": "",
        "options": "error=sink:1",
    }
    assert config["run_id"] == spec.run_id() and group == f"{rows[0]['data']}-{spec.schedule.name}"


@pytest.mark.parametrize("short", ["baseline", "system"])
def test_paired_bootstrap_rejects_hypotheses_of_another_length(tmp_path, short):
    ref, files = tmp_path / "ref.de", {name: tmp_path / f"{name}.de" for name in ("baseline", "system")}
    ref.write_text("a b\nc d\ne f\n")
    for name, path in files.items():
        path.write_text("a b\nc d\n" if name == short else "a b\nc d\ne f\n")
    with pytest.raises(StepError, match=rf"{short}\.de has 2 lines but the reference .*ref\.de has 3"):
        paired_bootstrap(files["baseline"], files["system"], ref, n_samples=10)


def _interrupted_copy(monkeypatch) -> None:
    """Make every ``shutil.copyfile`` stop half-way (a kill or a full disk)."""

    def half(src, dst, **kwargs):
        Path(dst).write_bytes(Path(src).read_bytes()[:3])
        raise OSError("No space left on device")

    monkeypatch.setattr(shutil, "copyfile", half)


def test_an_interrupted_copy_of_the_model_files_leaves_no_truncated_file(tmp_path, monkeypatch):
    bin_dir, run_dir = tmp_path / "data" / "bin", tmp_path / "run"
    (tmp_path / "data" / "spm").mkdir(parents=True)
    bin_dir.mkdir()
    (tmp_path / "data" / "spm" / "spm.model").write_bytes(b"sentencepiece model")
    for lang in ("en", "de"):
        (bin_dir / f"dict.{lang}.txt").write_text(f"{lang}1 5\n{lang}2 3\n")
    _interrupted_copy(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        keep_model_files(DataFolder(bin_dir.parent), run_dir, "en", "de")
    assert [p for p in run_dir.rglob("*") if p.is_file()] == []
    monkeypatch.undo()
    keep_model_files(DataFolder(bin_dir.parent), run_dir, "en", "de")
    assert (run_dir / "model" / "spm.model").read_bytes() == b"sentencepiece model"
    assert sorted(p.name for p in (run_dir / "model").iterdir()) == ["dict.de.txt", "dict.en.txt", "spm.model"]


def test_an_interrupted_copy_of_the_roles_file_leaves_no_truncated_file(tmp_path, monkeypatch):
    spec = RunSpec(model=ModelSpec(heads_from="results/roles.json"), schedule=Schedule(max_update=20))
    monkeypatch.setattr(training, "prepare_data", lambda spec, runs_dir: DataFolder(tmp_path))
    monkeypatch.setattr(training, "keep_model_files", lambda *a: None)
    monkeypatch.setattr(training, "train", lambda *a, **k: pytest.fail("trained with a broken roles file"))
    _interrupted_copy(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        training.train_run(spec, runs_dir=tmp_path, log=quiet)
    run_dir = tmp_path / spec.run_id()
    assert not (run_dir / "roles.json").exists() and not list(run_dir.glob(".roles.json.*"))


def test_a_roles_file_rewritten_after_the_run_began_is_not_trained_under_the_old_id(tmp_path, monkeypatch):
    """The run id hashes the roles file's content once; another job (structmt-analyze) rewriting the file
    before the run copies it would train other roles under that id: refused, and no copy is left."""
    roles = tmp_path / "roles.json"
    shutil.copyfile(Path(__file__).parents[1] / "results" / "roles.json", roles)
    spec = RunSpec(model=ModelSpec(heads_from=str(roles)), schedule=Schedule(max_update=20))
    run_id = spec.run_id()
    monkeypatch.setattr(training, "prepare_data", lambda spec, runs_dir: DataFolder(tmp_path))
    monkeypatch.setattr(training, "keep_model_files", lambda *a: None)
    monkeypatch.setattr(training, "train", lambda *a, **k: pytest.fail("trained other roles under the old id"))
    real_lock = training.run_lock

    def lock_then_rewrite(runs_dir, run):
        mixes = json.loads(roles.read_text())
        mixes["decoder"] = mixes["decoder"][::-1]
        roles.write_text(json.dumps(mixes))
        return real_lock(runs_dir, run)

    monkeypatch.setattr(training, "run_lock", lock_then_rewrite)
    with pytest.raises(StepError, match=rf"model.heads_from .*changed after this run began \(its id {run_id} "):
        training.train_run(spec, runs_dir=tmp_path / "runs", log=quiet)
    assert not (tmp_path / "runs" / run_id / "roles.json").exists()
    assert spec.run_id() != run_id  # the new content: another run


def test_an_archive_placed_in_the_cache_is_recorded_and_then_verified(tmp_path, capsys):
    cache = tmp_path / "download"
    cache.mkdir()
    with tarfile.open(cache / "de-en.tgz", "w:gz") as t:
        t.add(__file__, arcname="placed-here-by-hand.txt")
    url = "http://127.0.0.1:9/de-en.tgz"  # never reached: the archive is in the cache
    digest = hashlib.sha256((cache / "de-en.tgz").read_bytes()).hexdigest()
    assert wmt.fetch_archive(url, None, cache) == (cache / "de-en.tgz", digest)
    assert "de-en.tgz: no published checksum; recorded sha256" in capsys.readouterr().out
    assert (cache / "de-en.tgz.sha256").read_text().split()[1] == "de-en.tgz"
    wmt.fetch_archive(url, None, cache)  # the same archive: verified against the record
    (cache / "de-en.tgz").write_bytes(b"changed since")
    with pytest.raises(DataError, match=r"checksum mismatch for .*de-en\.tgz"):
        wmt.fetch_archive(url, None, cache)


def test_a_moved_run_folder_decodes_its_own_checkpoint(monkeypatch, tmp_path):
    """train.json records where the checkpoint was when the run trained; a runs folder copied or moved since
    (another checkout, another machine) decodes the checkpoint inside it, never the one at the old place."""
    spec = RunSpec(model=DENSE, schedule=Schedule(max_update=10))
    runs = tmp_path / "moved" / "runs"
    run_dir = runs / spec.run_id()
    (run_dir / "checkpoints").mkdir(parents=True)
    old_place = tmp_path / "old" / "runs" / spec.run_id() / "checkpoints" / "checkpoint_last.pt"
    (run_dir / "train.json").write_text(json.dumps({"updates": 10, "checkpoint": str(old_place)}))
    bin_dir = tmp_path / "data" / "bin"
    (bin_dir.parent / "raw").mkdir(parents=True)
    (bin_dir.parent / "raw" / "valid.de").write_text("ein Hund läuft über die Wiese\n")
    decoded = []

    def decode(bin_dir, checkpoint, subset, out, **kwargs):
        decoded.append(checkpoint)
        out.write_text("ein Hund läuft über die Wiese\n")
        return out

    monkeypatch.setattr(evaluation, "prepare_data", lambda spec, runs_dir: DataFolder(bin_dir.parent))
    monkeypatch.setattr(evaluation, "decode", decode)
    assert evaluation.valid_bleu(spec, runs_dir=runs, log=quiet) == 100.0
    assert decoded == [run_dir / "checkpoints" / "checkpoint_last.pt"]
