"""The Hydra app: config composition, validation of overrides, local multi-job sweeps."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import build, make_dict_dir
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from structmt.checkpoints import training_seconds
from structmt.pipeline import leaderboard
from structmt.pipeline.app import ConfigError, misspelt_keys, specs, validate
from structmt.pipeline.evaluation import row_labels, score
from structmt.pipeline.spec import ModelSpec

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="structmt", overrides=list(overrides))


@pytest.mark.parametrize("group", ["data", "model", "train", "logger"])
def test_every_group_option_composes_and_validates(group):
    for option in sorted(p.stem for p in (CONF / group).glob("*.yaml")):
        if option == "finetune":  # it needs a run to start from: test_train_finetune_is_make_finetune
            continue
        cfg = _compose(f"{group}={option}")
        validate(cfg)
        spec, baseline = specs(cfg)
        assert spec.run_id().startswith(cfg.data.name)
        if spec.model.structured:
            assert baseline is not None and baseline.model.arch == spec.model.arch.removeprefix("structured_")
            assert baseline.schedule == spec.schedule and baseline.data == spec.data
        else:  # a dense run is its own baseline: none to train beside it
            assert baseline is None


def test_a_results_or_runs_folder_that_cannot_be_written_is_refused_before_training(tmp_path, monkeypatch):
    """A results folder nobody can write was found after training and decoding (a bare Errno 1)."""
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=rf"results_dir='{tmp_path}/file/results': {tmp_path}/file is a file"):
        validate(_compose(f"results_dir={tmp_path}/file/results"))
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != locked and real_access(p, mode))  # root: chmod is moot
    with pytest.raises(ConfigError, match=rf"runs_dir='{locked}/runs': cannot write in {locked}; give a folder"):
        validate(_compose(f"runs_dir={locked}/runs"))
    validate(_compose(f"runs_dir={tmp_path}/new/runs", f"results_dir={tmp_path}/results"))
    # writable but not searchable (no x): no file can be made in it either
    monkeypatch.setattr(os, "access", lambda p, mode: not (Path(p) == locked and mode & os.X_OK))
    with pytest.raises(ConfigError, match=rf"results_dir='{locked}': cannot write in {locked}; give a folder"):
        validate(_compose(f"results_dir={locked}"))


def test_train_finetune_is_make_finetune(tmp_path):
    """``structmt-run train=finetune train.finetune_from=<dense run>`` is the run ``make finetune`` makes, and
    its baseline is the dense run it starts from; without a start it is refused, not trained from scratch."""
    from dataclasses import asdict, replace

    from structmt.pipeline.recipes import RECIPES, load_schedule, pair

    with pytest.raises(ConfigError, match=r"train=finetune starts from a trained model: set train.finetune_from="):
        validate(_compose("train=finetune"))
    dense, structured = pair("finetune", load_schedule(RECIPES["finetune"]))
    (tmp_path / dense.run_id()).mkdir()
    # the dense run was trained where its data came from a mirror this machine does not have
    elsewhere = replace(dense, data=replace(dense.data, mirror="/elsewhere/multi30k"))
    (tmp_path / dense.run_id() / "spec.json").write_text(json.dumps(asdict(elsewhere)))
    (tmp_path / dense.run_id() / "train.json").write_text("{}")
    cfg = _compose("train=finetune", f"runs_dir={tmp_path}", f"train.finetune_from={dense.run_id()}")
    validate(cfg)
    spec, baseline = specs(cfg)
    assert spec.run_id() == structured.run_id() and baseline == dense
    start = tmp_path / "start.pt"
    start.write_bytes(b"weights")
    with pytest.raises(ConfigError, match=r"a checkpoint file names no dense run to compare with"):
        validate(_compose("train=finetune", f"train.finetune_from={start}"))
    validate(_compose("train=finetune", f"train.finetune_from={start}", "baseline=false"))
    validate(_compose("model=dense_multi30k", "train=finetune", f"train.finetune_from={start}"))  # no baseline
    with pytest.raises(ConfigError, match=r"was trained on other data .*must be the same to compare with it"):
        specs(
            _compose("train=finetune", f"runs_dir={tmp_path}", f"train.finetune_from={dense.run_id()}", "data.tgt=fr")
        )
    renamed = tmp_path / "renamed"
    (tmp_path / dense.run_id()).rename(renamed)
    with pytest.raises(
        ConfigError, match=f"train.finetune_from=renamed: its spec.json gives the run id {dense.run_id()}"
    ):
        specs(_compose("train=finetune", f"runs_dir={tmp_path}", "train.finetune_from=renamed"))
    (tmp_path / dense.run_id()).mkdir()  # back under its own id (renamed above)
    (tmp_path / dense.run_id() / "spec.json").write_text(json.dumps(asdict(dense)))
    (tmp_path / dense.run_id() / "train.json").write_text("{}")
    # a fine-tune decoded at another beam than its dense start: the p-value would pair the two beams
    with pytest.raises(ConfigError, match=r"train.beam=3, but train.finetune_from=.* was decoded with beam 5"):
        specs(
            _compose("train=finetune", f"runs_dir={tmp_path}", f"train.finetune_from={dense.run_id()}", "train.beam=3")
        )
    with pytest.raises(ConfigError, match=r"train.lenpen=0.6, but train.finetune_from=.* was decoded with lenpen 1.0"):
        specs(
            _compose(
                "train=finetune", f"runs_dir={tmp_path}", f"train.finetune_from={dense.run_id()}", "train.lenpen=0.6"
            )
        )
    # a start of another schedule (or seed) than make finetune's: named for it, never averaged with its seeds
    other = replace(dense, schedule=load_schedule("cpu_demo"))
    (tmp_path / other.run_id()).mkdir()
    (tmp_path / other.run_id() / "spec.json").write_text(json.dumps(asdict(other)))
    (tmp_path / other.run_id() / "train.json").write_text("{}")
    named, base = specs(_compose("train=finetune", f"runs_dir={tmp_path}", f"train.finetune_from={other.run_id()}"))
    assert re.fullmatch(r"finetune\+finetune_from=[0-9a-f]{6}", named.schedule.name) and base == other
    alone = f"train.finetune_from={other.run_id()}"  # without a baseline, or a dense fine-tune: named alike (they
    assert specs(_compose("train=finetune", f"runs_dir={tmp_path}", alone, "baseline=false")) == (named, None)
    dense_tune = specs(_compose("model=dense_multi30k", "train=finetune", f"runs_dir={tmp_path}", alone))[0]
    assert dense_tune.schedule == named.schedule  # were "finetune", averaged with make finetune's seeds)
    with_lr = specs(  # with another setting too (it was named for that alone, as a fine-tune of make finetune's start)
        _compose("train=finetune", f"runs_dir={tmp_path}", f"train.finetune_from={other.run_id()}", "train.lr=0.001")
    )
    assert with_lr[0].schedule.name == named.schedule.name.replace("+finetune", "+lr=0.001+finetune", 1)
    assert (
        specs(
            _compose(
                "train=finetune", f"runs_dir={tmp_path}", f"train.finetune_from={dense.run_id()}", "train.lr=0.001"
            )
        )[0].schedule.name
        == "finetune+lr=0.001"
    )  # make finetune's start: named for the setting alone
    seed2 = specs(
        _compose("train=finetune", f"runs_dir={tmp_path}", f"train.finetune_from={dense.run_id()}", "train.seed=2")
    )
    assert seed2[0].schedule.name.startswith("finetune+finetune_from=")
    (tmp_path / structured.run_id()).mkdir()
    (tmp_path / structured.run_id() / "spec.json").write_text(json.dumps(asdict(structured)))
    (tmp_path / structured.run_id() / "train.json").write_text("{}")
    with pytest.raises(ConfigError, match=f"train.finetune_from={structured.run_id()} is a structured run"):
        specs(_compose("train=finetune", f"runs_dir={tmp_path}", f"train.finetune_from={structured.run_id()}"))


@pytest.mark.reliability  # docs/reliability.md
def test_sweep_configs_compose():
    for sweep in ("wr_grid", "wr_small", "optuna_wr"):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name="structmt", overrides=[f"+sweep={sweep}"], return_hydra_config=True)
        params = OmegaConf.to_container(cfg.hydra.sweeper.params)
        assert set(params) == {"model.window", "model.rare"}
    assert cfg.hydra.sweeper.direction == "maximize"
    assert cfg.hydra.sweeper.max_failure_rate == 1.0  # one failed trial does not end the study


@pytest.mark.reliability  # docs/reliability.md
def test_an_optuna_study_whose_every_trial_failed_ends_in_one_line_not_a_traceback(tmp_path):
    """Each trial's error is printed and the study goes on (max_failure_rate 1.0); when none completed, Optuna's
    "No trials are completed yet" ended the command in a traceback."""
    cmd = [sys.executable, "-m", "structmt.pipeline.app", "-m", "+sweep=optuna_wr", "hydra.sweeper.n_trials=2"]
    cmd += ["logger=none", f"data.mirror={tmp_path / 'none'}", f"runs_dir={tmp_path}", f"results_dir={tmp_path}"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    said = done.stdout + done.stderr
    assert done.returncode == 1 and "Traceback" not in said
    assert said.count(f"data.mirror='{tmp_path / 'none'}' is not a folder") >= 2  # each trial's own error
    assert said.rstrip().endswith(
        "error: every trial of the Optuna study failed (each one's error is printed above): mend what they say and "
        "run the sweep again"
    )


SOME_FAILED = (
    "error: 1 of 3 trials of the Optuna study failed (each one's error is printed above); its best is of the others"
)


@pytest.mark.parametrize(
    "statuses, says", [(["COMPLETED", "COMPLETED"], None), (["COMPLETED", "FAILED", "COMPLETED"], SOME_FAILED)]
)
def test_an_optuna_study_with_failed_trials_ends_in_an_error_after_its_best(monkeypatch, statuses, says):
    """max_failure_rate 1.0 lets a study go on past a failed trial, and it reported its best and exited 0: a script
    or scheduler took the sweep for whole (the basic sweeper exits 1 with a failed point)."""
    from hydra.core.utils import JobReturn, JobStatus
    from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl

    from structmt.pipeline import app

    reported: list[str] = []

    class Launcher:
        def launch(self, overrides, initial_job_idx):
            return [JobReturn(status=JobStatus[status]) for status in overrides]

    def study(self, arguments):  # Optuna's sweep: batches of trials, then its best
        for batch in (statuses[:2], statuses[2:]):
            self.launcher.launch(batch, initial_job_idx=0)
        reported.append("best")

    monkeypatch.setattr(OptunaSweeperImpl, "sweep", study)
    app._say_when_no_trial_completed()
    sweeper = OptunaSweeperImpl.__new__(OptunaSweeperImpl)
    sweeper.launcher = Launcher()
    if says is None:
        OptunaSweeperImpl.sweep(sweeper, [])
    else:
        with pytest.raises(SystemExit) as e:
            OptunaSweeperImpl.sweep(sweeper, [])
        assert str(e.value) == says
    assert reported == ["best"]


@pytest.mark.parametrize("size, dropout, lr", [("base", 0.1, 0.0007), ("big", 0.3, 0.0005)])
def test_the_paper_schedules_build_the_papers_models(tmp_path, size, dropout, lr):
    """Vaswani et al.'s WMT models share one embedding matrix between source, target and output (the data's
    dictionary is joined); fairseq's transformer_wmt_en_de* architectures leave that to --share-all-embeddings,
    which no schedule passed (a base model of ~93M parameters instead of ~61M at a 32k vocabulary). The big model
    had the base schedule's dropout (0.1, not 0.3)."""
    for model in (f"structured_{size}", f"dense_{size}"):
        spec, _ = specs(_compose(f"train=paper_{size}", f"model={model}", "data=wmt14_en_de"))
        assert (spec.schedule.name, spec.schedule.dropout, spec.schedule.lr) == (f"paper_{size}", dropout, lr)
        assert (spec.schedule.beam, spec.schedule.lenpen) == (4, 0.6)  # the paper's decoding
        assert row_labels(spec, "newstest2014")["options"] == ""  # the schedule's own: no label
        args = spec.schedule.fairseq_args()
        assert "--share-all-embeddings" in args and args[args.index("--dropout") + 1] == str(dropout)
    (tmp_path / "bin").mkdir()
    data = make_dict_dir(tmp_path / "bin")
    _, model = build(
        data, f"structured_transformer_wmt_en_de{'_big' if size == 'big' else ''}", *spec.schedule.extra_args
    )
    shared = model.encoder.embed_tokens.weight
    assert model.decoder.embed_tokens.weight is shared and model.decoder.output_projection.weight is shared


@pytest.mark.reliability  # docs/reliability.md
def test_slurm_launcher_requeues_a_timed_out_point_and_the_dense_run_is_the_baseline():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="structmt", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    assert cfg.hydra.launcher.max_num_timeout > 0 and cfg.hydra.launcher.tasks_per_node == 1
    # docs/sweeps.md: train the baseline first with model=dense_<size>; it must be the run the sweep points find
    for size in ("multi30k", "tiny", "base", "big"):
        _, baseline = specs(_compose(f"model=structured_{size}"))
        dense, _ = specs(_compose(f"model=dense_{size}"))
        assert baseline is not None and dense.run_id() == baseline.run_id()


def test_two_launches_in_one_second_get_folders_of_their_own():
    """Hydra's record of a sweep (multirun.yaml, each job's overrides, Optuna's results) lies in a folder named by
    the launch time: to the second, a sweep started beside another (the dense baseline's job) overwrote it."""
    folders = []
    for _ in range(2):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name="structmt", return_hydra_config=True)
        folders.append((cfg.hydra.sweep.dir, cfg.hydra.run.dir))
        time.sleep(0.001)
    assert len({sweep for sweep, _ in folders}) == len({run for _, run in folders}) == 2


def test_run_id_is_stable_and_ignores_threads():
    a, _ = specs(_compose("model.window=5"))
    b, _ = specs(_compose("model.window=5", "train.threads=2"))
    c, _ = specs(_compose("model.window=4"))
    assert a.run_id() == b.run_id() != c.run_id()


def test_a_schedule_with_other_settings_is_named_for_them(tmp_path):
    """``train=reproduce train.lr=0.001`` kept the name reproduce: with another seed, its rows were averaged into
    reproduce's headline as a seed of the same setting. It is named for what it changes; a seed, the threads or
    the checkpoint interval leave the name, as does a start on the fine-tuning schedule; a list, a path or a
    run id is named by a digest."""
    from dataclasses import replace

    from structmt.pipeline.spec import named_schedule, own_name

    def name(*overrides: str) -> str:
        return specs(_compose(*overrides))[0].schedule.name

    assert name("train=reproduce", "train.lr=0.001", "train.warmup=500") == "reproduce+lr=0.001+warmup=500"
    assert name("train=reproduce", "train.seed=2", "train.threads=1", "train.save_interval=7") == "reproduce"
    assert re.fullmatch(
        r"smoke\+extra_args=[0-9a-f]{6}", extra := name("train=smoke", "train.extra_args=[--ddp-backend,c10d]")
    )
    assert (
        name("train=paper_base", "train.world_size=8", "train.update_freq=1") == "paper_base+update_freq=1+world_size=8"
    )
    assert name("train=smoke", "train.beam=3") == "smoke"  # the beam is a row label of its own
    assert name("train=smoke", "train.lenpen=0.6") == "smoke"  # as is the length penalty
    # mixed precision trains another model: named for it, its fairseq option passed, the fp32 ids as they were
    bf16 = specs(_compose("train=smoke", "train.precision=bf16"))[0]
    assert bf16.schedule.name == "smoke+precision=bf16" and "--bf16" in bf16.schedule.fairseq_args()
    assert not {"--fp16", "--bf16"} & set(specs(_compose("train=smoke"))[0].schedule.fairseq_args())
    with pytest.raises(ConfigError, match=r"train.extra_args sets --fp16, which the pipeline sets itself; set train"):
        validate(_compose("train.extra_args=[--fp16]"))  # the key names it; as an extra argument it was not
    with pytest.raises(ConfigError, match=r"train.precision='fp8' must be one of fp32, fp16, bf16"):
        validate(_compose("train.precision=fp8"))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"train.precision='fp16' needs a CUDA GPU .*bf16 also trains on a CPU"):
            validate(_compose("train.precision=fp16"))
    # a name of that form given by hand (copied from the leaderboard for another seed) states settings the run may
    # not have: it is named again for the settings it has, never averaged with the named runs' as a seed
    assert name("train=smoke", "train.name='smoke+max_update=2+lr=0.001'", "train.seed=2") == "smoke"
    assert name("train=smoke", "train.name='smoke+lr=0.001'", "train.lr=0.001", "train.seed=2") == "smoke+lr=0.001"
    start = tmp_path / "start.pt"
    start.write_bytes(b"weights")
    assert re.fullmatch(
        r"smoke\+finetune_from=[0-9a-f]{6}", name("train=smoke", f"train.finetune_from={start}", "baseline=false")
    )
    finetune = specs(_compose("train=finetune", f"train.finetune_from={start}", "baseline=false"))[0].schedule
    assert re.fullmatch(r"finetune\+finetune_from=[0-9a-f]{6}", finetune.name)  # weights of unknown schedule
    assert own_name(replace(finetune, name="mine")).name == "mine"  # the user's own
    spec, baseline = specs(_compose("train=reproduce", "train.lr=0.001"))
    assert baseline is not None and baseline.schedule == spec.schedule  # the pair shares the name
    assert own_name(spec.schedule) == spec.schedule
    assert "-reproduce+lr=0.001-" in spec.run_id()
    # a renamed paper_base still decodes at its file's beam (4), which no label needs to state
    paper = specs(_compose("train=paper_base", "train.update_freq=1", "model=dense_base"))[0]
    assert paper.schedule.name == "paper_base+update_freq=1" and row_labels(paper, "test_2016_flickr")["options"] == ""
    assert extra != name("train=smoke", "train.extra_args=[--ddp-backend,no_c10d]")
    # a name of the user's own with a '+' in it is not a file's: its beam is compared with the default's
    assert named_schedule("smoke+lr=0.5") == named_schedule("smoke") and named_schedule("smoke+mine") is None
    mine = replace(paper, schedule=replace(paper.schedule, name="smoke+mine", beam=5, lenpen=1.0))
    assert row_labels(mine, "test_2016_flickr")["options"] == ""
    mine = replace(mine, schedule=replace(mine.schedule, lenpen=0.6))  # paper_base's, not the default's
    assert row_labels(mine, "test_2016_flickr")["options"] == "lenpen=0.6"


def test_roles_file_runs_are_identified_by_the_roles_not_the_path(tmp_path):
    roles = (REPO / "results" / "roles.json").read_text()
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "roles.json").write_text(roles)
    (tmp_path / "b.json").write_text(roles)
    (tmp_path / "c.json").write_text(roles.replace("syn:1", "pos:1", 1))
    ids = [
        specs(_compose(f"model.heads_from={tmp_path / f}"))[0].run_id() for f in ("a/roles.json", "b.json", "c.json")
    ]
    assert ids[0] == ids[1] != ids[2] and "-w3-r2-roles-" in ids[0]
    # runs without a roles file keep the ids they had before the option existed (the committed demo run)
    assert specs(_compose())[0].run_id() == "multi30k_en_de-cpu_demo-w3-r2-e4aa037a"


def test_range_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"train.dropout=1.5 must lie in.*model.window=-1 must be >= 0"):
        validate(_compose("model.window=-1", "train.dropout=1.5"))
    # every structure option is checked by the plugin's one schema, named as the Hydra key
    problems = "model.error='top:3' must be 'none' or 'sink:K'.*model.cross_slope=0.0 must be > 0|model.cross_slope"
    with pytest.raises(ConfigError, match=problems):
        validate(_compose("model.error=top:3", "model.cross_slope=0", "model.apply=cross"))
    with pytest.raises(ConfigError, match=r"model.apply='cross' names unknown attention block"):
        validate(_compose("model.apply=cross"))


def test_every_failing_sweep_point_prints_its_error_at_once(tmp_path):
    """Hydra keeps a failed point's error and raises a batch's first only when the batch ends: the others were
    printed nowhere (not even in their job logs)."""
    done = _run(tmp_path, "-m", "model.window=-1,-2", "logger=none")
    assert done.returncode != 0
    for n, w in enumerate((-1, -2)):
        assert f"error: point #{n} (model.window={w} " in done.stderr
        assert (
            f"model.window={w} must be >= 0"
            in (next((tmp_path / "runs" / "multirun").iterdir()) / str(n) / "app.log").read_text()
        )


def _run(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "structmt.pipeline.app",
            *args,
            f"runs_dir={tmp_path}/runs",
            f"results_dir={tmp_path}/results",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=900,
        env=env,
    )


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.window=-1", "model.window=-1 must be >= 0"),
        ("model.rare=abc", "full_key: model.rare"),
        ("model=transformer_huge", "Could not find 'model/transformer_huge'"),
        ("model=hubert", "Could not find 'model/hubert'"),  # fairseq's own config, which fairseq's import stores
        ("train.max_updates=10", "train.max_updates is not a key of train (valid keys: name, max_update, lr,"),
        ("model.heads_from=missing.json", "model.heads_from missing.json: no such file"),
        ("data.mirror=/no/such/dir", "data.mirror='/no/such/dir' is not a folder"),
    ],
)
@pytest.mark.reliability
def test_bad_override_fails_before_any_work(tmp_path, override, message):
    result = _run(tmp_path, override)
    assert result.returncode != 0
    assert message in result.stderr + result.stdout
    assert not (tmp_path / "runs" / "data").exists() and not (tmp_path / "results").exists()


def test_help_lists_structmts_own_groups_only(tmp_path):
    """Importing fairseq stores its own configs in Hydra's ConfigStore (model: hubert, wav2vec…; task, optimizer…):
    ``structmt-run --help`` lists conf/'s groups and options only, and a wrong option lists only conf/'s."""
    result = _run(tmp_path, "--help")
    assert result.returncode == 0
    assert result.stdout.startswith("structmt-run: one run of structmt's pipeline")
    groups = result.stdout.split("== Configuration groups ==")[1].split("== Config ==")[0]
    listed = dict(line.split(": ", 1) for line in groups.strip().splitlines()[1:] if ": " in line)
    assert listed == {
        group.name: ", ".join(sorted(p.stem for p in group.glob("*.yaml")))
        for group in sorted(CONF.iterdir())
        if group.is_dir() and group.name != "hydra"
    }
    wrong = _run(tmp_path, "model=nonesuch")
    assert "Available options in 'model':" in wrong.stderr
    assert "wav2vec" not in wrong.stderr and "hubert" not in wrong.stderr


SMOKE = ["data=multi30k_smoke", "model=structured_tiny", "train=smoke", "logger=none", "baseline=false"]


def test_verbose_is_hydras_verbose_as_the_other_commands_take_it(tmp_path, monkeypatch):
    shown = _run(tmp_path, "-v", "--cfg", "hydra")
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert re.search(r"^  verbose: true$", shown.stdout, flags=re.M) and "- hydra.verbose=true" in shown.stdout
    from structmt.pipeline import app

    monkeypatch.setattr(sys, "argv", ["structmt-run", "--verbose", "basline=false"])  # its long name too
    with pytest.raises(SystemExit, match="basline is not a key at the top level"):  # stopped before Hydra starts
        app.main()
    assert sys.argv == ["structmt-run", "basline=false", "hydra.verbose=true"]


def test_relative_folders_are_under_the_checkout_whatever_the_current_directory(tmp_path):
    """As every other structmt command's: a run started elsewhere still writes where the reports read."""
    from structmt.pipeline.app import repo_path

    assert repo_path("runs") == REPO / "runs" and repo_path(str(tmp_path)) == tmp_path
    shown = subprocess.run(
        [sys.executable, "-m", "structmt.pipeline.app", "--cfg", "all", "--resolve", "results_dir=res"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr[-2000:]
    dirs = re.findall(r"^    dir: (.*)$", shown.stdout, flags=re.M)
    assert [Path(d).parent for d in dirs] == [REPO / "runs" / "hydra", REPO / "runs" / "multirun"]


def _fake_slurm(tmp_path: Path) -> dict[str, str]:
    """The environment of a SLURM login node whose sbatch, srun, sacct, scancel and scontrol are
    ``tests/fake_slurm.py``'s (a job array runs on this machine, its tasks one after another)."""
    bin_dir = tmp_path / "slurm-bin"
    bin_dir.mkdir()
    for command in ("sbatch", "srun", "sacct", "scancel", "scontrol"):
        tool = bin_dir / command
        tool.write_text(f'#!/bin/sh\nexec {sys.executable} {REPO / "tests" / "fake_slurm.py"} {command} "$@"\n')
        tool.chmod(0o755)
    path = os.pathsep.join([str(bin_dir), os.environ["PATH"]])
    return dict(os.environ) | {"PATH": path, "FAKE_SLURM_LOG": str(tmp_path / "slurm")}


SLURM = ["hydra/launcher=slurm", "hydra.launcher.partition=cpu", "hydra.launcher.gpus_per_node=0"]


def test_the_slurm_launcher_submits_one_array_with_its_settings_and_each_failing_task_names_its_error(tmp_path):
    """``hydra/launcher=slurm`` (conf/hydra/launcher/slurm.yaml) through submitit, against stand-ins for SLURM's
    commands: one sbatch of a two-task array with the file's settings, each task run with SLURM's variables; in
    the job, fairseq would train on every GPU the job shows, so a world size the job does not show is named, in
    each task's log and by the launcher. (Training inside the tasks: the slow test below.)"""
    env = _fake_slurm(tmp_path)
    failed = _run(tmp_path, "-m", *SLURM, *SMOKE, "model.window=1,3", "train.world_size=2", env=env)
    message = "train.world_size=2: this SLURM job shows 0 GPU(s) on 1 node(s)"
    assert failed.returncode != 0 and message in failed.stderr
    (script,) = (tmp_path / "slurm").glob("sbatch_*.sh")
    flags = set(re.findall(r"^#SBATCH (.*)$", script.read_text(), re.M))
    assert {
        "--array=0-1%2",  # two points, at most array_parallelism (8) at once
        "--partition=cpu",
        "--job-name=structmt",
        "--time=720",
        "--cpus-per-task=8",
        "--mem=32GB",
        "--ntasks-per-node=1",
        "--nodes=1",
        "--signal=USR2@120",
    } <= flags, sorted(flags)
    assert "--gpus-per-node=0" in flags and "--requeue" not in flags  # submitit requeues by itself, on USR2
    errs = sorted((tmp_path / "runs" / "multirun").rglob("*_log.err"))
    assert [p.name for p in errs] == ["1000_0_0_log.err", "1000_1_0_log.err"]  # <array job>_<task>_<rank>
    assert all(message in p.read_text() for p in errs)  # each task's own error, in its own log


@pytest.mark.slow
def test_slurm_and_local_jobs_launchers_run_each_point_as_a_job_and_reruns_skip(tmp_path):
    """``hydra/launcher=slurm`` against the stand-ins (the fast test above checks its sbatch settings): each
    point trained and scored inside its task, the rows in the leaderboard, each point's objective its validation
    BLEU; the same sweep again under ``hydra/launcher=local_jobs`` runs each point as a local job of its own,
    which finds its run done and adds no row. (Slow: each point starts fairseq, prepares, trains and decodes.)"""
    env = _fake_slurm(tmp_path)
    short = [*SMOKE, "train.max_update=4"]  # what is tested is the launching, not the model
    result = _run(tmp_path, "-m", *SLURM, *short, "model.window=1,3", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = leaderboard.read_rows(tmp_path / "results" / "leaderboard.csv")
    assert sorted({r["window"] for r in rows}) == ["1", "3"] and len(rows) == 4
    task_logs = sorted(p.name for p in (tmp_path / "runs" / "multirun").rglob("*_log.err"))
    assert task_logs == ["1000_0_0_log.err", "1000_1_0_log.err"]  # <array job>_<task>_<rank>, as SLURM names them
    assert sorted({(r["window"], r["test_set"]) for r in rows}) == [  # multi30k_smoke scores 100 lines of each
        ("1", "test_2016_flickr[:100]"),
        ("1", "test_2017_flickr[:100]"),
        ("3", "test_2016_flickr[:100]"),
        ("3", "test_2017_flickr[:100]"),
    ]
    # the sweep objective is each point's BLEU on the validation set, never a test set's
    kept = sorted((tmp_path / "runs").glob("*/valid.json"))
    assert len(kept) == 2
    (reference,) = (tmp_path / "runs" / "data").glob("*/raw/valid.de")
    for p in kept:  # each point's objective is sacreBLEU of its own validation hypotheses
        hyp = p.parent / "valid.de"
        assert len(hyp.read_text().splitlines()) == len(reference.read_text().splitlines())
        assert json.loads(p.read_text())["bleu"] == score(hyp, reference).bleu

    sweeps_before = set((tmp_path / "runs" / "multirun").iterdir())
    again = _run(tmp_path, "-m", "hydra/launcher=local_jobs", *short, "model.window=1,3")
    assert again.returncode == 0, again.stderr[-3000:]
    (local_sweep,) = set((tmp_path / "runs" / "multirun").iterdir()) - sweeps_before
    assert len({p.parent for p in local_sweep.rglob("*_log.out")}) == 2  # two submitit jobs
    assert leaderboard.read_rows(tmp_path / "results" / "leaderboard.csv") == rows
    assert (tmp_path / "results" / "leaderboard.png").stat().st_size > 0


@pytest.mark.reliability
@pytest.mark.slow
def test_killed_point_resumes_from_its_checkpoint(tmp_path):
    """SIGKILL a sweep point mid-training; the same command resumes it from checkpoint_last.pt."""
    import os
    import signal
    import time

    args = [
        sys.executable,
        "-m",
        "structmt.pipeline.app",
        *SMOKE,
        "train.max_update=80",
        "train.save_interval=10",
        f"runs_dir={tmp_path}/runs",
        f"results_dir={tmp_path}/results",
    ]
    proc = subprocess.Popen(
        args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + 600
    ckpt = None
    while time.time() < deadline and ckpt is None:
        found = list((tmp_path / "runs").glob("*/checkpoints/checkpoint_*_20.pt")) + list(
            (tmp_path / "runs").glob("*/checkpoints/checkpoint_*_30.pt")
        )
        ckpt = found[0] if found else None
        time.sleep(0.5)
    assert ckpt is not None, "no intermediate checkpoint appeared"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    run_dir = ckpt.parent.parent
    assert not (run_dir / "train.json").exists() and not (run_dir / "result.json").exists()
    before = training_seconds(run_dir / "checkpoints" / "checkpoint_last.pt")  # what the run resumes from
    again = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]
    log = (run_dir / "train.log").read_text()
    assert re.search(r"Loaded checkpoint .*checkpoint_last\.pt \(epoch \d+ @ [1-9]\d* updates\)", log)
    metrics = json.loads((run_dir / "train.json").read_text())
    assert metrics["updates"] == 80
    # the training time goes on from the killed process's (fairseq's log says wall 0 after such a resume)
    assert before is not None and metrics["wall_seconds"] > before > 0
    assert len(leaderboard.read_rows(tmp_path / "results" / "leaderboard.csv")) == 2


def test_one_model_written_two_ways_is_one_run_and_one_setting():
    """A role mix or block list spelt otherwise, and an option that changes nothing in the model (error_eps without
    an error term, a role mix beside a roles file): one run id, and rows labelled alike (they were five ids for
    one mix, and seeds of one model never averaged); the order of the heads is another model."""
    ids = lambda *overrides: specs(_compose(*overrides))[0].run_id()  # noqa: E731
    one = ids("model.heads='syn:2,rare:2'")
    for spelt in ("syntactic:2,rare:2", "syn:1,syn:1,rare:2", "syn:2,rare:2,pos:0", "syn:2, rare:2"):
        assert ids(f"model.heads='{spelt}'") == one
        assert ModelSpec(heads=spelt).heads_label() == "syn:2,rare:2"
    assert ids("model.heads='syn:2,rare:2;syn:2,rare:2;syn:2,rare:2;syn:2,rare:2'") == one  # every layer alike
    assert ids("model.heads='rare:2,syn:2'") != one  # the heads in another order: another model
    default = ids()
    assert ids("model.apply='decoder,encoder'") == ids("model.apply='encoder, decoder'") == default
    assert ModelSpec(apply="decoder,encoder").options_label() == ""
    assert ids("model.apply=decoder") != default and ModelSpec(apply="decoder").options_label() == "apply=decoder"
    assert ids("model.error_eps=0.1") == default and ModelSpec(error_eps=0.1).options_label() == ""
    assert ids("model.error=sink:1", "model.error_eps=0.1") != ids("model.error=sink:1")
    roles = ["model=structured_multi30k_roles"]
    assert ids(*roles, "model.heads='syn:4'") == ids(*roles)
    assert default == "multi30k_en_de-cpu_demo-w3-r2-e4aa037a"  # the committed demo run's, as before


def test_a_cross_band_of_half_width_zero_keeps_its_slope_in_the_id_and_the_label():
    """``model.cross_window=0`` is a structured cross band that uses its slope: two slopes are two models (only a
    dense cross-attention, -1, leaves the slope out)."""
    ids = lambda *overrides: specs(_compose(*overrides))[0].run_id()  # noqa: E731
    assert ids("model.cross_window=0", "model.cross_slope=0.5") != ids("model.cross_window=0", "model.cross_slope=2.0")
    assert ids("model.cross_slope=0.5") == ids("model.cross_slope=2.0")  # cross_window=-1: dense
    assert ModelSpec(cross_window=0, cross_slope=0.5).effective().cross_slope == 0.5
    assert ModelSpec(cross_window=0, cross_slope=0.5).cross_label() == "w0/slope0.5"
    assert ModelSpec(cross_window=-1, cross_slope=0.5).cross_label() == ""


def test_a_schedule_name_with_a_part_that_is_no_setting_is_the_users_own():
    """``smoke+lr`` (no ``=``) names no setting of smoke: the user's own name, not smoke's schedule."""
    from structmt.pipeline.spec import named_schedule

    assert named_schedule("smoke+lr") is None and named_schedule("smoke+lr=0.5") is not None


def test_a_misspelt_key_is_named_with_the_keys_there_are_not_hydras_add_it_advice():
    """Hydra's own error for ``model.windw=3`` suggests ``+model.windw=3``, which adds the misspelt key."""
    argv = ["-m", "model=structured_tiny", "model.windw=3,5", "model.window=3", "+model.windw=3", "~model.rare"]
    argv += ["hydra.run.dir=x", "runs_dir=x", "logger.mod=offline", "train.max_update=1,2", "basline=false"]
    argv += ["hydra/launcher=local_jobs", "baseline=false", "data=multi30k_smoke", "+sweep=wr_small"]
    argv += ["sweep=wr_small"]  # a group outside the defaults: Hydra's own error says to add it with +
    assert misspelt_keys(argv) == [
        "model.windw is not a key of model (valid keys: window, rare, heads, heads_from, pos_window, error, "
        "error_eps, apply, cross_window, cross_slope, impl, arch)",
        "logger.mod is not a key of logger (valid keys: mode, project)",
        "basline is not a key at the top level (valid keys: data, model, train, logger, runs_dir, results_dir, "
        "baseline)",
    ]


def test_a_runs_folder_under_a_file_is_refused_before_hydra_makes_its_folders(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    from structmt.pipeline import app

    monkeypatch.setattr(sys, "argv", ["structmt-run", f"++runs_dir={tmp_path}/file/runs"])  # as Hydra's ++ sets it
    with pytest.raises(SystemExit, match=f"^error: invalid configuration: runs_dir='{tmp_path}/file/runs': "):
        app.main()
    result = subprocess.run(
        [sys.executable, "-m", "structmt.pipeline.app", f"runs_dir={tmp_path}/file/runs"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: invalid configuration: runs_dir='{tmp_path}/file/runs': {tmp_path}/file")
    # Hydra's empty string, '' on the command line: the checkout itself, where Hydra made its hydra/ folder
    empty = subprocess.run(
        [sys.executable, "-m", "structmt.pipeline.app", "runs_dir=''", "--cfg", "job"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert empty.returncode == 1 and empty.stderr.startswith("error: invalid configuration: runs_dir='': empty; ")


def test_a_run_id_with_an_equals_sign_is_refused_saying_how_to_quote_it(tmp_path):
    """The run id of a schedule named for its settings holds '=' (``...-smoke+max_update=40-dense-...``), which
    Hydra reads as syntax: its error ("mismatched input '='") named neither the override nor what to do."""
    import shlex

    run_id = "multi30k_en_de-smoke+max_update=40-dense-7463a5e5"
    result = _run(tmp_path, "--cfg", "job", "train=finetune", f"train.finetune_from={run_id}")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    quoted = f"'train.finetune_from=\"{run_id}\"'"
    assert result.stderr == (
        f"error: invalid configuration: train.finetune_from={run_id}: Hydra reads the '=' in its value as syntax; "
        f"quote it: {quoted}\n"
    )
    as_said = _run(tmp_path, "--cfg", "job", "train=finetune", *shlex.split(quoted))  # the advice, followed
    assert as_said.returncode == 0 and f"finetune_from: {run_id}\n" in as_said.stdout
    # the same check of a list and of a sweep's values (each part quoted: the whole was one string), as Hydra
    # reads the advice; not of a dict or a nested list, which quoting the whole or a part would read as text
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from structmt.pipeline.app import unquoted_equals

    for given, quoted, value in [
        (
            "train.extra_args=[--clip-norm=0.1,--fp16-no-flatten-grads]",
            "'train.extra_args=[\"--clip-norm=0.1\",--fp16-no-flatten-grads]'",
            ["--clip-norm=0.1", "--fp16-no-flatten-grads"],
        ),
        ("train.finetune_from=a-s+lr=1-dense-1,b", """'train.finetune_from="a-s+lr=1-dense-1",b'""", None),
    ]:
        (said,) = unquoted_equals([given])
        assert said.endswith(f"quote it: {quoted}")
        override = OverridesParser.create().parse_override(shlex.split(quoted)[0])
        if value is None:  # a sweep: each of its values, as Hydra's sweeper hands them to the jobs
            jobs = [f"{override.key_or_group}={job}" for job in override.sweep_string_iterator()]
            assert [OverridesParser.create().parse_override(job).value() for job in jobs] == ["a-s+lr=1-dense-1", "b"]
        else:
            assert override.value() == value
    for nested in ("k={a:x=y}", "k=[[a=b],c]"):
        assert unquoted_equals([nested]) == [
            f"""{nested}: Hydra reads the '=' in its value as syntax; quote each part of it that holds '=' ("...")"""
        ]
    assert unquoted_equals(["model.window=1,2", "train.max_update=3", "-m", "x='a=b'"]) == []  # nothing to quote


def test_multirun_with_cfg_is_refused_in_a_sentence(tmp_path, monkeypatch):
    result = _run(tmp_path, "-m", "+sweep=wr_small", "--cfg", "hydra")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    refused = "error: -m and --cfg cannot be combined: drop -m to print the configuration"
    assert result.stderr.startswith(refused)
    from structmt.pipeline import app

    # the other spellings, refused by the same check
    for argv in (["--multirun", "--cfg=job"], ["-m", "-cjob"], ["-m", "--cfg=all"]):
        monkeypatch.setattr(sys, "argv", ["structmt-run", *argv, "+sweep=wr_small", f"runs_dir={tmp_path}/runs"])
        with pytest.raises(SystemExit) as refusal:
            app.main()
        assert str(refusal.value).startswith(refused)


def test_a_launcher_without_multirun_is_refused(tmp_path):
    """Hydra uses hydra/launcher=slurm only with -m: without it the job trained on the machine it was typed on."""
    result = _run(tmp_path, "hydra/launcher=slurm")
    assert result.returncode == 1
    assert "error: hydra/launcher=slurm launches only with -m (one job is a sweep of one point): add -m" in (
        result.stderr
    )


def test_a_sweep_config_without_multirun_is_refused(tmp_path):
    """+sweep=... without -m ran the one point of the base configuration, in silence."""
    result = _run(tmp_path, "+sweep=wr_small")
    assert result.returncode == 1
    assert "this configuration sweeps model.window=1,3, model.rare=0,2 (a +sweep=... config): add -m" in result.stderr
    assert not (tmp_path / "runs" / "data").exists() and not (tmp_path / "results").exists()  # nothing prepared or run
