"""``train.average_last``: the model a run decodes is the mean of its last checkpoints' weights, as the WMT
papers decode (Vaswani et al. average the last 5 or 20). The mean is exact, the checkpoints averaged are the
run's last ones of this training, every decode, the translation and a fine-tune's start read the averaged
file, and a schedule that would not save enough checkpoints is refused before training."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch

from structmt.checkpoints import average_checkpoints, checkpoint_updates, interval_checkpoint_name, last_checkpoints
from structmt.fairseq_cli import StepError
from structmt.fairseq_fixes import SLIM_OLD_CHECKPOINTS
from structmt.paths import DataFolder, RunFolder
from structmt.pipeline import evaluation, leaderboard, training, translate
from structmt.pipeline.spec import ModelSpec, RunSpec, Schedule, own_name, recorded_average_last

quiet = lambda msg: None  # noqa: E731


def _checkpoint(path: Path, updates: int, scale: float, **more) -> dict[str, torch.Tensor]:
    """A fairseq-like checkpoint at ``updates`` whose weights are ``scale`` times fixed tensors."""
    embedding = torch.arange(6, dtype=torch.float32).reshape(2, 3) * scale
    weights = {
        "encoder.w": embedding,
        "decoder.h": torch.full((4,), scale, dtype=torch.float16),
        "decoder.version": torch.tensor([3]),  # not a weight: the same in each
        "decoder.w": embedding,  # tied to encoder.w, as fairseq's shared embeddings: saved once
    } | more
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "model": weights,
            "optimizer_history": [{"num_updates": updates}],
            "extra_state": {"previous_training_time": float(updates)},
            "last_optimizer_state": {"state": {0: torch.zeros(6)}},
        },
        path,
    )
    return weights


def test_the_average_is_the_mean_of_each_weight_with_the_newest_checkpoints_record(tmp_path):
    paths = [tmp_path / f"c{i}.pt" for i in range(3)]
    saved = [
        _checkpoint(p, u, s, **{"decoder.d": torch.full((3,), s, dtype=torch.float64)})
        for p, u, s in zip(paths, (600, 400, 200), (0.3, 1.1, 2.9), strict=True)
    ]
    out = tmp_path / "avg.pt"
    assert average_checkpoints(paths, out) == [600, 400, 200]
    state = torch.load(out)
    for name in ("encoder.w", "decoder.h"):
        want = sum(w[name].double() for w in saved) / 3
        assert state["model"][name].dtype == torch.float32  # fp16 weights averaged into float32, as fairseq's
        assert torch.equal(state["model"][name], want.float())
    want = sum(w["decoder.d"] for w in saved) / 3  # float64 weights stay float64 (wider than float32: kept)
    assert state["model"]["decoder.d"].dtype == torch.float64 and torch.equal(state["model"]["decoder.d"], want)
    assert torch.equal(state["model"]["decoder.version"], torch.tensor([3]))
    assert (
        state["model"]["decoder.w"].untyped_storage().data_ptr()
        == state["model"]["encoder.w"].untyped_storage().data_ptr()
    )
    assert checkpoint_updates(out) == 600 and state["extra_state"]["previous_training_time"] == 600.0
    assert "last_optimizer_state" not in state  # an averaged model is not resumed from
    assert [p.name for p in sorted(tmp_path.iterdir())] == ["avg.pt", "c0.pt", "c1.pt", "c2.pt"]  # no temp file


@pytest.mark.parametrize(
    "more, message",
    [
        ({"extra.w": torch.zeros(1)}, r"c1\.pt: not the model of .*c0\.pt \(other weights: extra\.w\)"),
        ({"encoder.w": torch.zeros(3, 2)}, r"c1\.pt: encoder\.w is \(3, 2\), not \(2, 3\) as in .*c0\.pt"),
        ({"decoder.version": torch.tensor([2])}, r"c1\.pt: decoder\.version \(not a weight: torch\.int64\) differs"),
        ({"decoder.w": torch.zeros(2, 3)}, r"c1\.pt: decoder\.w is not encoder\.w, as in .*c0\.pt \(tied there\)"),
    ],
)
def test_checkpoints_of_other_models_are_refused_naming_the_file(tmp_path, more, message):
    _checkpoint(tmp_path / "c0.pt", 20, 1.0)
    _checkpoint(tmp_path / "c1.pt", 10, 2.0, **more)
    with pytest.raises(ValueError, match=message):
        average_checkpoints([tmp_path / "c0.pt", tmp_path / "c1.pt"], tmp_path / "avg.pt")
    assert not (tmp_path / "avg.pt").exists()


def test_a_checkpoint_without_model_weights_is_refused_naming_it(tmp_path):
    _checkpoint(tmp_path / "c0.pt", 20, 1.0)
    for weights in ({"model": {}}, {}):  # an empty state dict, or none at all
        torch.save(weights | {"optimizer_history": [{"num_updates": 10}]}, tmp_path / "c1.pt")
        with pytest.raises(ValueError, match=r"c1\.pt: holds no model weights; give checkpoints fairseq-train wrote"):
            average_checkpoints([tmp_path / "c0.pt", tmp_path / "c1.pt"], tmp_path / "avg.pt")
    assert not (tmp_path / "avg.pt").exists()


def test_other_views_of_one_buffer_are_weights_of_their_own(tmp_path):
    """Only the same view of the same memory is one (tied) weight: other parts of one flat buffer (another offset),
    a shorter view (another shape) or a transpose (other strides) are each averaged as themselves."""
    paths = [tmp_path / "c0.pt", tmp_path / "c1.pt"]
    for path, scale in zip(paths, (1.0, 3.0), strict=True):
        flat = torch.arange(12, dtype=torch.float32) * scale
        square = flat[:4].view(2, 2)
        views = {"flat.a": flat[:6], "flat.b": flat[6:], "flat.c": flat[:3], "square": square, "square.t": square.t()}
        _checkpoint(path, 10, scale, **views)
    average_checkpoints(paths, tmp_path / "avg.pt")
    model = torch.load(tmp_path / "avg.pt")["model"]
    mean = torch.arange(12, dtype=torch.float32) * 2
    assert torch.equal(model["flat.a"], mean[:6]) and torch.equal(model["flat.b"], mean[6:])
    assert torch.equal(model["flat.c"], mean[:3])
    assert torch.equal(model["square"], mean[:4].view(2, 2)) and torch.equal(model["square.t"], mean[:4].view(2, 2).t())


def test_the_last_checkpoints_are_the_last_one_and_those_saved_before_it(tmp_path):
    """One saved at the last update holds its weights (not counted twice); one of a later update is an earlier
    training's, left in the folder (not this training's)."""
    run = RunFolder(tmp_path / "run")
    for updates in (200, 400, 600, 800):
        _checkpoint(run.checkpoints / f"checkpoint_{updates // 300 + 1}_{updates}.pt", updates, 1.0)
    _checkpoint(run.last_checkpoint, 600, 1.0)
    (run.checkpoints / "checkpoint_average.pt").write_bytes(b"")  # not a checkpoint of an interval
    earlier = [run.checkpoints / "checkpoint_2_400.pt", run.checkpoints / "checkpoint_1_200.pt"]
    assert last_checkpoints(run, 3, 200) == [run.last_checkpoint, *earlier]
    assert last_checkpoints(run, 1, 200) == [run.last_checkpoint]
    message = (
        r"averaging the last 4 checkpoints \(train.average_last\) needs checkpoint_last.pt and the "
        r"checkpoint_<epoch>_<updates>.pt of updates 400, 200, 0 \(200 apart\); 0 missing \(it has those of updates "
        r"800, 600, 400, 200\)\. Train the run again"
    )
    with pytest.raises(ValueError, match=message):
        last_checkpoints(run, 4, 200)
    # one of the window missing (fairseq left out an interval at an epoch's end): never the next older one instead
    (run.checkpoints / "checkpoint_2_400.pt").unlink()
    (run.checkpoints / "checkpoint_2_400.pt.tmp-copy").write_bytes(b"")  # a copy killed half way: not the checkpoint
    with pytest.raises(ValueError, match=r"of updates 400, 200 \(200 apart\); 400 missing"):
        last_checkpoints(run, 3, 200)
    # the last update not a multiple of the interval: the multiples before it
    _checkpoint(run.last_checkpoint, 650, 1.0)
    assert last_checkpoints(run, 2, 200) == [run.last_checkpoint, run.checkpoints / "checkpoint_3_600.pt"]


def test_an_interval_checkpoints_suffix_is_matched_as_written():
    """fairseq-train's --checkpoint-suffix is any text: its dots and pluses are themselves, not a pattern's."""
    named = interval_checkpoint_name("-v1.0+x")
    assert re.fullmatch(named, "checkpoint_3_600-v1.0+x.pt")[1] == "600"
    assert not re.fullmatch(named, "checkpoint_3_600-v1a0+x.pt") and not re.fullmatch(named, "checkpoint_3_600.pt")


def test_averaging_a_run_without_its_last_checkpoint_says_it_is_missing(tmp_path):
    """Interval checkpoints alone are no window: without checkpoint_last.pt the error names it, not an empty list."""
    run = RunFolder(tmp_path / "run")
    _checkpoint(run.checkpoints / "checkpoint_1_200.pt", 200, 1.0)
    with pytest.raises(ValueError, match=r"of updates \? \(200 apart\); checkpoint_last.pt missing \(it has those of "):
        last_checkpoints(run, 2, 200)


def _trained(tmp_path: Path, monkeypatch, schedule: Schedule) -> tuple[RunSpec, RunFolder]:
    """A run whose fairseq-train stand-in saves checkpoints every ``save_interval`` updates as fairseq names
    them, keeping the last ``--keep-interval-updates`` of them, each with weights of the update's value."""
    spec = RunSpec(schedule=schedule)
    run = RunFolder(tmp_path / spec.run_id())
    monkeypatch.setattr(training, "prepare_data", lambda spec, runs_dir: DataFolder(tmp_path))
    monkeypatch.setattr(training, "keep_model_files", lambda *a: None)

    def train(bin_dir, run_dir, arch, args, env, carried):
        assert env[SLIM_OLD_CHECKPOINTS] == "1"  # the older interval checkpoints keep their weights alone
        every, keep = (
            int(args[args.index(flag) + 1]) for flag in ("--save-interval-updates", "--keep-interval-updates")
        )
        for updates in range(every, schedule.max_update + 1, every):
            _checkpoint(run.checkpoints / f"checkpoint_1_{updates}.pt", updates, float(updates))
        for old in sorted(run.checkpoints.glob("checkpoint_1_*.pt"), key=checkpoint_updates)[:-keep]:
            old.unlink()
        _checkpoint(run.last_checkpoint, schedule.max_update, float(schedule.max_update))
        return replace(training.parse_train_log(run.train_log, run.last_checkpoint), updates=schedule.max_update)

    monkeypatch.setattr(training, "train", train)
    return spec, run


def test_a_trained_run_decodes_the_average_of_its_last_checkpoints_and_records_them(tmp_path, monkeypatch):
    spec, run = _trained(tmp_path, monkeypatch, Schedule(max_update=50, save_interval=20, average_last=3))
    said: list[str] = []
    metrics = training.train_run(spec, runs_dir=tmp_path, log=said.append)
    assert metrics["averaged_updates"] == [50, 40, 20] and metrics["checkpoint"] == str(run.averaged_checkpoint)
    assert json.loads(run.metrics.read_text())["averaged_updates"] == [50, 40, 20]
    assert f"[{spec.run_id()}] averaged its last 3 checkpoints (updates 20, 40, 50) into checkpoint_average.pt, " \
           "the model it decodes" in said  # fmt: skip
    weights = torch.load(run.averaged_checkpoint)["model"]["encoder.w"]
    assert torch.equal(weights, (torch.arange(6).reshape(2, 3) * (50 + 40 + 20) / 3).float())
    # removed since: the next call averages it again, the training itself skipped
    run.averaged_checkpoint.unlink()
    monkeypatch.setattr(training, "train", lambda *a: pytest.fail("trained again"))
    said.clear()
    assert training.train_run(spec, runs_dir=tmp_path, log=said.append)["averaged_updates"] == [50, 40, 20]
    assert said[0] == f"[{spec.run_id()}] trained earlier (50 updates); skipping training"
    assert said[1].startswith(f"[{spec.run_id()}] averaged its last 3 checkpoints") and len(said) == 2
    assert torch.equal(torch.load(run.averaged_checkpoint)["model"]["encoder.w"], weights)


def test_a_schedule_that_saves_too_few_checkpoints_is_refused_before_training(tmp_path, monkeypatch):
    """structmt-run's configuration refuses it; a direct caller of train_run (a recipe, a script) too."""
    spec, run = _trained(tmp_path, monkeypatch, Schedule(max_update=50, save_interval=20, average_last=4))
    with pytest.raises(StepError, match=r"train.average_last=4: train.max_update=50 saves 3 checkpoints"):
        training.train_run(spec, runs_dir=tmp_path, log=quiet)
    assert not run.path.exists()


def test_a_run_that_averages_nothing_keeps_one_interval_checkpoint_and_decodes_its_last(tmp_path, monkeypatch):
    spec, run = _trained(tmp_path, monkeypatch, Schedule(max_update=50, save_interval=20))
    metrics = training.train_run(spec, runs_dir=tmp_path, log=quiet)
    assert "averaged_updates" not in metrics and not run.averaged_checkpoint.exists()
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["checkpoint_1_40.pt", "checkpoint_last.pt"]
    assert run.model_checkpoint(spec.schedule.average_last) == run.last_checkpoint


def test_every_decode_of_an_averaging_run_reads_the_averaged_checkpoint(tmp_path, monkeypatch):
    spec = RunSpec(model=ModelSpec(arch="transformer_multi30k"), schedule=Schedule(max_update=10, average_last=2))
    run = RunFolder(tmp_path / "runs" / spec.run_id())
    run.path.mkdir(parents=True)
    (run.path / "train.log").write_text("")
    metrics = {"updates": 10, "wall_seconds": 1.0, "tokens_per_second": 2.0}
    run.metrics.write_text(json.dumps(metrics))
    raw = tmp_path / "data" / "raw"
    raw.mkdir(parents=True)
    for subset in ("valid", "test", "test1"):
        (raw / f"{subset}.de").write_text("Ein Mann .\n")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setattr(leaderboard, "publish", lambda results_dir: None)
    monkeypatch.setattr(evaluation, "prepare_data", lambda spec, runs_dir: DataFolder(tmp_path / "data"))
    read: list[Path] = []

    def decode(bin_dir, checkpoint, subset, out, **kwargs):
        read.append(checkpoint)
        out.write_text("Ein Mann .\n")
        return out

    monkeypatch.setattr(evaluation, "decode", decode)
    evaluation.valid_bleu(spec, runs_dir=tmp_path / "runs", log=quiet)
    evaluation.evaluate_run(
        spec, runs_dir=tmp_path / "runs", results_dir=tmp_path / "results", baseline=None, log=quiet
    )
    assert read == [run.averaged_checkpoint] * 3  # valid, test_2016_flickr, test_2017_flickr
    # a fine-tune from it starts from the same weights
    run.spec.write_text(json.dumps(asdict(spec)))
    start = Schedule(finetune_from=spec.run_id())
    assert start.finetune_checkpoint(tmp_path / "runs") == run.averaged_checkpoint


def test_translate_says_it_uses_the_averaged_model_and_warns_for_another_checkpoint(tmp_path):
    run = RunFolder(tmp_path / "multi30k_en_de-paper_base-dense-0000abcd")
    spec = RunSpec(schedule=Schedule(max_update=600, average_last=3))
    _checkpoint(run.last_checkpoint, 600, 1.0)
    _checkpoint(run.averaged_checkpoint, 600, 1.0)
    run.spec.write_text(json.dumps(asdict(spec)))
    run.metrics.write_text(json.dumps({"updates": 600, "wall_seconds": 9.0, "git_commit": "a" * 40, "machine": "M"}))
    csv = tmp_path / "none.csv"
    level, line = translate.which_training(run.path, run.averaged_checkpoint, csv)
    assert (level, line) == (
        logging.INFO,
        f"{run.path.name}: checkpoint_average.pt at 600 updates (its last 3 averaged), trained at aaaaaaaa on M in "
        f"9.0 s; no row of it in {csv}",
    )
    level, line = translate.which_training(run.path, run.last_checkpoint, csv)
    assert (level, line) == (
        logging.WARNING,
        f"{run.path.name}: checkpoint_last.pt at 600 updates; the run's model, which its test sets were decoded "
        "with, is the average of its last 3 checkpoints (checkpoint_average.pt): no leaderboard row is of these "
        "weights",
    )
    assert recorded_average_last(run.path) == 3
    run.spec.write_text(json.dumps({"data": {"src": "en", "tgt": "de"}, "schedule": {"beam": 4}}))  # an older run's
    assert recorded_average_last(run.path) == 1


def test_averaging_makes_the_save_interval_part_of_the_run(tmp_path):
    """It chooses the weights averaged: another interval is another model (and names the schedule), while a run
    that averages nothing keeps its id whatever its interval."""
    plain = RunSpec(schedule=Schedule(max_update=100))
    assert RunSpec(schedule=replace(plain.schedule, save_interval=7)).run_id() == plain.run_id()
    assert RunSpec(schedule=replace(plain.schedule, average_last=1)).run_id() == plain.run_id()
    averaged = RunSpec(schedule=replace(plain.schedule, average_last=3))
    assert averaged.run_id() != plain.run_id()
    assert RunSpec(schedule=replace(averaged.schedule, save_interval=7)).run_id() != averaged.run_id()
    smoke = Schedule(name="smoke", max_update=30, lr=0.002, warmup=10, max_tokens=2048, threads=1, beam=2)
    assert own_name(replace(smoke, save_interval=10)).name == "smoke"
    assert own_name(replace(smoke, average_last=3)).name == "smoke+average_last=3"
    assert own_name(replace(smoke, average_last=3, save_interval=10)).name == "smoke+save_interval=10+average_last=3"
    args = Schedule(average_last=5).fairseq_args()
    assert args[args.index("--keep-interval-updates") + 1] == "5"  # fairseq keeps those it averages


def test_translate_loads_the_averaged_model_of_an_averaging_run(tmp_path, monkeypatch):
    import sentencepiece

    class Task:
        def build_generator(self, models, cfg):
            return None

    run = RunFolder(tmp_path)
    loaded: list[Path] = []
    for path in (run.last_checkpoint, run.averaged_checkpoint, run.spm_model):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    monkeypatch.setattr(translate, "load_model", lambda ckpt, folder, **k: loaded.append(ckpt) or (None, Task()))
    monkeypatch.setattr(sentencepiece, "SentencePieceProcessor", lambda **k: None)
    for average, want in ((3, run.averaged_checkpoint), (1, run.last_checkpoint)):
        run.spec.write_text(json.dumps(asdict(RunSpec(schedule=Schedule(average_last=average)))))
        assert translate.Translator(tmp_path).checkpoint == want and loaded[-1] == want


class _Trainer:
    """fairseq's Trainer as fairseq's save_checkpoint uses it: its checkpoint holds its updates."""

    data_parallel_rank, checkpoint_suffix, updates, task = 0, "", 0, None
    should_save_checkpoint_on_current_rank, always_call_state_dict_during_save_checkpoint = True, False

    def consolidate_optimizer(self):
        pass

    def get_num_updates(self):
        return self.updates

    def save_checkpoint(self, filename, extra_state):
        history, optimizer = [{"num_updates": self.updates}], {"step": torch.tensor(self.updates)}
        state = {"updates": self.updates, "optimizer_history": history, "last_optimizer_state": optimizer}
        torch.save(state | {"extra_state": extra_state}, filename)


class _Epochs:
    epoch, ends = 1, False

    def end_of_epoch(self):
        return self.ends

    def state_dict(self):
        return {"epoch": self.epoch}


def _fairseq_save(trainer: _Trainer, epochs: _Epochs, **settings) -> None:
    """fairseq's own save_checkpoint, as fairseq-train calls it after an update, under ``CheckpointConfig(**settings)``,
    with the plugin's fixes applied (as --user-dir does)."""
    from fairseq import checkpoint_utils
    from fairseq.dataclass.configs import CheckpointConfig

    import structmt  # noqa: F401  (applies the fixes)

    checkpoint_utils.save_checkpoint(CheckpointConfig(**settings), trainer, epochs, None)


@pytest.mark.parametrize("slim, killed", [(False, False), (True, False), (False, True)])
def test_fairseq_writes_the_interval_checkpoint_due_at_an_epochs_end(tmp_path, monkeypatch, slim, killed):
    """fairseq's own save_checkpoint (as fairseq-train calls it) leaves out checkpoint_<epoch>_<updates>.pt where
    the interval's update ends an epoch, under --no-epoch-checkpoints: those weights were in no file once
    checkpoint_last.pt moved on. With the plugin loaded it is written, and the kept ones are the newest three.
    In structmt-run's trainings (STRUCTMT_SLIM_OLD_CHECKPOINTS=1) the older ones keep no optimiser state. A process
    killed between the epoch's save and that copy has it made by the next save (its resume)."""
    monkeypatch.setenv(SLIM_OLD_CHECKPOINTS, "1" if slim else "0")
    settings = dict(
        save_dir=str(tmp_path), save_interval_updates=10, keep_interval_updates=3, no_epoch_checkpoints=True
    )
    trainer, epochs = _Trainer(), _Epochs()
    for updates, epoch, ends in [(10, 1, False), (20, 1, False), (30, 1, True), (40, 2, False), (45, 2, True),
                                 (50, 3, False), (60, 3, True)]:  # fmt: skip
        trainer.updates, epochs.epoch, epochs.ends = updates, epoch, ends
        _fairseq_save(trainer, epochs, **settings)
        if updates == 30 and killed:  # before the copy to checkpoint_1_30.pt
            (tmp_path / "checkpoint_1_30.pt").unlink()
        if updates == 40:
            assert sorted(p.name for p in tmp_path.iterdir()) == [
                "checkpoint_1_20.pt", "checkpoint_1_30.pt", "checkpoint_2_40.pt", "checkpoint_last.pt"
            ]  # fmt: skip
    states = {p.name: torch.load(p) for p in tmp_path.iterdir()}
    kept = {name: state["updates"] for name, state in states.items()}
    with_optimizer = sorted(name for name, state in states.items() if "last_optimizer_state" in state)
    assert with_optimizer == (["checkpoint_3_60.pt", "checkpoint_last.pt"] if slim else sorted(states))
    assert kept == {
        "checkpoint_2_40.pt": 40,
        "checkpoint_3_50.pt": 50,
        "checkpoint_3_60.pt": 60,
        "checkpoint_last.pt": 60,
    }


INTERVALS = ["checkpoint_1_10.pt", "checkpoint_1_20.pt", "checkpoint_1_30.pt"]


@pytest.mark.parametrize(
    "settings, attributes, written",
    [
        ({}, {}, ["checkpoint1.pt", *INTERVALS, "checkpoint_last.pt"]),  # fairseq's epoch checkpoint holds them
        ({"no_epoch_checkpoints": True, "no_last_checkpoints": True}, {}, INTERVALS),  # no last: no copy
        ({"no_epoch_checkpoints": True, "no_save": True}, {}, []),
        ({"no_epoch_checkpoints": True}, {"should_save_checkpoint_on_current_rank": False}, []),  # not rank 0
        (
            {"no_epoch_checkpoints": True},
            {"checkpoint_suffix": "-shard0"},  # --checkpoint-suffix: each name ends with it
            [f"checkpoint_1_{u}-shard0.pt" for u in (10, 20, 30, 40)] + ["checkpoint_last-shard0.pt"],
        ),
        (  # fairseq keeps every multiple of --keep-interval-updates-pattern: left to it
            {"no_epoch_checkpoints": True, "keep_interval_updates": 1, "keep_interval_updates_pattern": 20},
            {},
            ["checkpoint_1_20.pt", "checkpoint_1_30.pt", "checkpoint_1_40.pt", "checkpoint_last.pt"],
        ),
    ],
)
def test_the_interval_checkpoint_at_an_epochs_end_is_copied_only_where_fairseq_saves_no_other(
    tmp_path, monkeypatch, settings, attributes, written
):
    """Only with --no-epoch-checkpoints (else the epoch's checkpoint<epoch>.pt holds those weights), from a
    checkpoint_last.pt written (not under --no-last-checkpoints, --no-save, nor on a rank that saves nothing)."""
    monkeypatch.setenv(SLIM_OLD_CHECKPOINTS, "1")
    trainer, epochs = _Trainer(), _Epochs()
    for name, value in attributes.items():  # the Trainer of this process
        setattr(trainer, name, value)
    for updates, ends in [(10, False), (20, False), (30, False), (40, True)]:
        trainer.updates, epochs.ends = updates, ends
        _fairseq_save(trainer, epochs, save_dir=str(tmp_path), save_interval_updates=10, **settings)
    assert sorted(p.name for p in tmp_path.iterdir()) == written


def test_an_old_checkpoint_that_cannot_be_slimmed_never_stops_a_training(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(SLIM_OLD_CHECKPOINTS, "1")
    from structmt import fairseq_fixes

    def full(path):
        raise OSError("No space left on device")

    monkeypatch.setattr(fairseq_fixes, "drop_optimizer_state", full)
    trainer, epochs = _Trainer(), _Epochs()
    for updates in (10, 20):
        trainer.updates = updates
        _fairseq_save(trainer, epochs, save_dir=str(tmp_path), save_interval_updates=10, no_epoch_checkpoints=True)
    assert [r.getMessage() for r in caplog.records if r.name == "structmt"] == [
        f"{tmp_path / 'checkpoint_1_10.pt'}: its optimiser state is kept (No space left on device)"
    ]


def test_a_checkpoint_without_optimiser_state_is_left_as_it_is(tmp_path):
    """The older interval checkpoints are slimmed after every save: one slimmed before is not written again."""
    from structmt.fairseq_fixes import drop_optimizer_state

    path = tmp_path / "checkpoint_1_10.pt"
    torch.save({"model": {"w": torch.ones(2)}, "last_optimizer_state": {"step": 3}}, path)
    drop_optimizer_state(str(path))
    state = torch.load(path)
    assert "last_optimizer_state" not in state and torch.equal(state["model"]["w"], torch.ones(2))
    written = path.stat().st_ino, path.stat().st_mtime_ns
    drop_optimizer_state(str(path))
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == written


def test_a_last_checkpoint_the_epoch_end_check_cannot_map_never_stops_a_training(tmp_path):
    """The check before each save reads checkpoint_last.pt memory-mapped; one in torch's legacy format cannot be:
    the training goes on (fairseq reads it its own way)."""
    from fairseq.file_io import PathManager

    from structmt.fairseq_fixes import _copy_a_due_interval_checkpoint

    last = tmp_path / "checkpoint_last.pt"
    torch.save({"optimizer_history": [{"num_updates": 30}]}, last, _use_new_zipfile_serialization=False)
    _copy_a_due_interval_checkpoint(str(last), 10, r"checkpoint_\d+_(\d+)\.pt", "", PathManager)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_last.pt"]
    torch.save({"optimizer_history": [{"num_updates": 0}]}, last)  # before any update: no interval's
    _copy_a_due_interval_checkpoint(str(last), 10, r"checkpoint_\d+_(\d+)\.pt", "", PathManager)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_last.pt"]
    torch.save({"optimizer_history": [{"num_updates": 30}]}, last)  # a readable one is copied
    _copy_a_due_interval_checkpoint(str(last), 10, r"checkpoint_\d+_(\d+)\.pt", "", PathManager)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_0_30.pt", "checkpoint_last.pt"]
    _copy_a_due_interval_checkpoint(str(last), 10, interval_checkpoint_name("-shard0"), "-shard0", PathManager)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint_0_30-shard0.pt", "checkpoint_0_30.pt", "checkpoint_last.pt"
    ]  # fmt: skip
