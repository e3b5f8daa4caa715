"""Options checked before any work starts: keys the schema lacks, ranges, train.extra_args, architectures,
role mixes, data sets and language pairs (structmt-run), and the arguments of recipes, structmt-translate and
structmt-prepare; conf/fairseq matches the schedule it claims to."""

import argparse
import copy
import io
import logging
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from structmt.data import cli as prepare_cli
from structmt.data.datasets import prepare_dataset, wrong_source_option
from structmt.data.prepare import PrepConfig
from structmt.files import DataError, int_at_least
from structmt.pipeline import app, recipes, translate
from structmt.pipeline.app import ConfigError, pipeline_options, validate
from structmt.pipeline.spec import ModelSpec, Schedule

pytestmark = pytest.mark.reliability  # failure handling: docs/reliability.md

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="structmt", overrides=list(overrides))


def _rejects(message: str, *overrides: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate(_compose(*overrides))


@pytest.mark.parametrize(
    "override, message",
    [
        ("+train.max_updat=5", r"train.max_updat is not a key of train \(valid keys: name, max_update, lr,"),
        ("+model.windw=5", r"model.windw is not a key of model \(valid keys: window, rare,"),
        ("+data.max_eval_line=100", r"data.max_eval_line is not a key of data \(valid keys: name, src,"),
        ("+foo=1", r"foo is not a key at the top level \(valid keys: data, model, train, logger,"),
    ],
)
def test_keys_added_with_plus_that_the_schema_lacks_are_rejected(override, message):
    _rejects(message, override)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.label_smoothing=1.5", r"train.label_smoothing=1.5 must lie in \[0, 1\)"),
        ("train.label_smoothing=-0.5", r"train.label_smoothing=-0.5 must lie in \[0, 1\)"),
        ("train.batch_multiple=0", "train.batch_multiple=0 must be >= 1"),
        ("train.update_freq=0", "train.update_freq=0 must be >= 1"),
        ("train.warmup=0", r"train.warmup=0 must be >= 1 \(fairseq's inverse_sqrt schedule divides by it\)"),
        ("train.save_interval=-1", r"train.save_interval=-1 must be >= 0 \(updates between checkpoints; 0: at the"),
        ("train.seed=-3", r"train.seed=-3 must lie in \[0, 2\*\*31 - 1\]"),
        ("train.seed=2147483648", r"train.seed=2147483648 must lie in \[0, 2\*\*31 - 1\] \(fairseq-train seeds numpy"),
        ("data.max_train_lines=-3", r"data.max_train_lines=-3 must be >= 0 \(0 = all\)"),
        ("data.max_eval_lines=-5", r"data.max_eval_lines=-5 must be >= 0 \(0 = all\)"),
        ("train.name=smoke/lr2", r"train.name='smoke/lr2' must be letters, digits and \. _ \+ = - \(it names run"),
        ("train.name='a b'", r"train.name='a b' must be letters"),
        ("train.name=''", r"train.name='' must be letters"),
        ("logger.project=a/b", r"logger.project='a/b' must be 1 to 128 characters, none of / \\ # \? % :"),
        (f"logger.project={'p' * 129}", r"logger.project='p+' must be 1 to 128 characters"),
        ("train.lr=inf", r"train.lr=inf must be a finite number > 0"),  # fairseq-train refused it after the data
        ("train.lr=nan", r"train.lr=nan must be a finite number > 0"),
        ("train.lr=0", r"train.lr=0.0 must be a finite number > 0"),
        ("train.max_update=0", r"train.max_update=0 must be > 0"),
        ("train.max_tokens=0", r"train.max_tokens=0 must be > 0"),
        ("train.dropout=1", r"train.dropout=1.0 must lie in \[0, 1\)"),
        ("train.threads=0", r"train.threads=0 must be > 0"),
        ("train.beam=0", r"train.beam=0 must be > 0"),
        ("train.lenpen=inf", r"train.lenpen=inf must be a finite number \(fairseq's default: 1.0\)"),
        ("data.vocab_size=0", r"data.vocab_size=0 must be > 0"),
        ("logger.mode=live", r"logger.mode='live' must be one of auto, offline, online, disabled"),
        ("train.finetune_from=/no/such.pt", r"train.finetune_from='/no/such.pt': no such checkpoint file"),
        ("data.mirror=/no/such/dir", r"data.mirror='/no/such/dir' is not a folder; give the folder holding the corpus"),
        # the checkout itself: its run folders and data beside the code (into the data manifests' folder)
        ("runs_dir=''", r"runs_dir='': empty; give a folder \(a relative one lies under the repository checkout\)"),
        ("results_dir=' '", r"results_dir=' ': empty; give a folder"),
        (  # refused by the model's build, after the data was prepared and the run folder made
            "model.rare=100000",
            r"model.rare=100000 does not fit model.arch=structured_transformer_multi30k: model.rare 100000: more "
            r"rare-token columns than the longest sequence the model takes \(1024 positions",
        ),
    ],
)
def test_ranges(override, message):
    _rejects(message, override)


def test_the_ends_of_the_ranges_are_accepted():
    """The largest seed fairseq takes, no dropout or label smoothing, all the lines, a warmup of one update, and a
    schedule name with the '=' and '+' of the names given to schedules with other settings."""
    validate(
        _compose(
            "train.seed=2147483647", "train.dropout=0", "train.label_smoothing=0", "data.max_train_lines=0",
            "data.max_eval_lines=0", "train.warmup=1", "train.name='mine+lr=0.001'",
        )
    )  # fmt: skip


@pytest.mark.parametrize(
    "extra, message",
    [
        ("[--seed,7]", "train.extra_args sets --seed, which the pipeline sets itself; set train.seed instead"),
        ("['--max-update=9']", "sets --max-update, which the pipeline sets itself; set train.max_update instead"),
        ("[--warmup-updates,3]", "sets --warmup-updates, which the pipeline sets itself; set train.warmup instead"),
        ("[--required-batch-size-multiple,1]", "set train.batch_multiple instead"),
        ("[--arch,transformer]", "sets --arch, which the pipeline sets itself; set model.arch instead"),
        ("[--save-dir,x]", "sets --save-dir, which the pipeline sets itself; set runs_dir instead"),
        ("[--struct-window,4]", "sets --struct-window, which the pipeline sets itself; set model.window instead"),
        ("[--log-format,json]", r"sets --log-format, which the pipeline sets itself \(its steps rely on its value\)"),
        ("[-a,transformer]", r"sets -a \(--arch\), which the pipeline sets itself; set model.arch instead"),
        ("[-atransformer]", r"sets -a \(--arch\), which the pipeline sets itself; set model.arch instead"),
        ("[-s,de,-t,en]", r"sets -s \(--source-lang\), .*; set data.src instead; .* -t \(--target-lang\), "),
        ("['--target-lang=en']", "sets --target-lang, which the pipeline sets itself; set data.tgt instead"),
        # fewer kept checkpoints than train.average_last averages
        ("[--keep-interval-updates,1]", "sets --keep-interval-updates, .*; set train.average_last instead"),
    ],
)
def test_extra_args_may_not_set_what_the_pipeline_sets(extra, message):
    _rejects(message, f"train.extra_args={extra}")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.average_last=0"], r"train.average_last=0 must be >= 1 \(1: the last checkpoint, not averaged\)"),
        (
            ["train.average_last=2", "train.save_interval=0"],
            "train.average_last=2 averages checkpoints train.save_interval updates apart, and "
            "train.save_interval=0 saves none: set it > 0",
        ),
        (  # at 200, 400, 600 and the last, 700: four
            ["train.average_last=5", "train.max_update=700", "train.save_interval=200"],
            "train.average_last=5: train.max_update=700 saves 4 checkpoints train.save_interval=200 updates apart; "
            "lower train.save_interval or train.average_last",
        ),
    ],
)
def test_averaging_more_checkpoints_than_the_training_saves_is_refused(overrides, message):
    _rejects(message, *overrides)


def test_averaging_as_many_checkpoints_as_the_training_saves_is_accepted():
    validate(_compose("train.average_last=4", "train.max_update=700", "train.save_interval=200"))
    validate(_compose("train.average_last=3", "train.max_update=600", "train.save_interval=200"))  # the last: 600
    _rejects("saves 3 checkpoints", "train.average_last=4", "train.max_update=600", "train.save_interval=200")


def test_a_save_interval_of_zero_is_accepted_where_nothing_is_averaged():
    """``train.save_interval=0`` saves the last checkpoint only, which is all that ``train.average_last=1`` uses."""
    validate(_compose("train.average_last=1", "train.save_interval=0"))


def test_a_short_training_logs_every_update():
    """Fewer than 50 updates log every update (``--log-interval 1``), never at an interval of 0."""
    args = Schedule(max_update=10).fairseq_args()
    assert args[args.index("--log-interval") + 1] == "1"
    assert Schedule(max_update=500).log_interval() == 10 and Schedule(max_update=49).log_interval() == 1


def test_every_short_option_name_of_fairseq_train_is_known():
    """fairseq-train takes ``-a`` for ``--arch`` (and the translation task ``-s``/``-t`` for the languages): an
    extra argument under a short name is checked as its long one. A short name fairseq adds fails here."""
    from fairseq import options
    from fairseq.tasks.translation import TranslationTask

    parser = options.get_training_parser()
    TranslationTask.add_args(parser)
    short = {
        o: next(long for long in a.option_strings if long.startswith("--"))
        for a in parser._actions
        for o in a.option_strings
        if not o.startswith("--") and o != "-h"
    }
    assert short == app._SHORT


def test_the_options_the_pipeline_sets_are_those_it_passes():
    options = pipeline_options(Schedule())
    passed = Schedule().fairseq_args() + ModelSpec(window=5).fairseq_args()
    assert {a for a in passed if a.startswith("--")} <= set(options)
    assert options["--lr"] == "train.lr" and options["--struct-cross-slope"] == "model.cross_slope"
    validate(_compose("train.extra_args=[--ddp-backend,no_c10d]"))  # options the pipeline leaves alone pass
    validate(_compose("train.extra_args=[--log-interval,10,--optimizer,adam]"))  # fixed ones no key records too


def test_the_options_set_elsewhere_are_those_the_training_command_adds(monkeypatch, tmp_path):
    """``_SET_ELSEWHERE`` is written by hand: it names every option that ``fairseq_cli.train`` and a fine-tune's
    training add to the schedule's and the model's, and no other."""
    from structmt import fairseq_cli
    from structmt.paths import DataFolder
    from structmt.pipeline import training
    from structmt.pipeline.spec import RunSpec

    class Launched(Exception):
        pass

    commands: list[list[str]] = []

    def run(cmd, *args, **kwargs):
        commands.append(cmd)
        raise Launched

    monkeypatch.setattr(fairseq_cli, "_run", run)
    monkeypatch.setattr(training, "prepare_data", lambda spec, runs_dir: DataFolder(tmp_path / "data"))
    monkeypatch.setattr(training, "keep_model_files", lambda *args: None)
    monkeypatch.setattr(training, "training_seconds", lambda checkpoint: 0.0)
    start = tmp_path / "start.pt"
    start.write_bytes(b"weights")
    spec = RunSpec(
        model=ModelSpec(arch="structured_transformer_tiny"), schedule=Schedule(max_update=5, finetune_from=str(start))
    )
    with pytest.raises(Launched):
        training.train_run(spec, runs_dir=tmp_path / "runs", log=lambda message: None)
    passed = {a for a in spec.model.fairseq_args(None) + spec.schedule.fairseq_args() if a.startswith("--")}
    assert {a for a in commands[0] if a.startswith("--")} - passed == set(app._SET_ELSEWHERE)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.arch=transformer_foo"], "model.arch='transformer_foo' is not a registered fairseq architecture; "),
        (
            ["model.arch=structured_foo"],
            r"the structured ones are structured_transformer, .*structured_transformer_tiny",
        ),
        (
            ["data.name=foo"],
            "data.name='foo' is not a data set the pipeline prepares; choose from multi30k_en_de, wmt14",
        ),
        (["data.tgt=cs"], r"data.tgt='cs': Multi30k has every split \(train, val, .*\) only in de, en, fr"),
        (["data=wmt16_en_ro", "data.tgt=de"], "data.src/data.tgt=en→de: wmt16_en_ro has en→ro only"),
        (
            ["data.base_url=http://mirror.example"],
            "data.base_url='http://mirror.example' serves the WMT recipes' archives; Multi30k takes data.mirror",
        ),
        (
            ["data=wmt14_en_de", "data.mirror=/tmp"],
            "data.mirror='/tmp' is a folder of Multi30k files; wmt14_en_de takes data.base_url",
        ),
        (  # urllib's "unknown url type" after the data step started, naming no option
            ["data=wmt14_en_de", "data.base_url=mirror.example.org/wmt"],
            r"data.base_url='mirror.example.org/wmt' is no URL; give the scheme as well \(https://, ",
        ),
        (
            ["model.heads=pos:9"],
            "model.heads='pos:9' does not fit model.arch=structured_transformer_multi30k: .*gives 9 heads but the "
            "layer has 4",
        ),
        (
            ["model=structured_multi30k_roles", "train.extra_args=[--encoder-layers,3]"],
            r"model.heads_from='results/roles.json' does not fit .*one per layer \(3 layers\)",
        ),
        (["train.extra_args=[--encoder-layers,abc]"], "train.extra_args: argument --encoder-layers: invalid int value"),
    ],
)
def test_architecture_data_and_role_mix_are_checked_before_training(overrides, message):
    _rejects(message, *overrides)


def test_a_role_mix_that_does_not_fit_says_how_to_give_mixes_of_their_own_in_the_runs_own_names():
    """structmt-run said to give --struct-heads-from the JSON itself, which model.heads_from refuses (a file)."""
    with pytest.raises(ConfigError) as err:
        validate(_compose("model.heads='pos:1,syn:1'"))
    said = str(err.value)
    assert "model.heads gives the encoder and the decoder the same mixes; for mixes of their own give " in said
    roles = """{"encoder": ["pos:1,syn:2,rare:1", ...], "decoder": [...]}"""
    assert "model.heads 'pos:1,syn:1': the role mix 'pos:1,syn:1' gives 2 heads but the layer has 4" in said
    assert said.endswith(f"model.heads_from a roles file ({roles}, one mix per layer)")
    assert "--struct" not in said and "the JSON itself" not in said


def test_a_roles_file_is_checked_for_the_blocks_it_structures_as_the_plugin_checks_it(tmp_path):
    """A roles file of the encoder alone fits model.apply=encoder (the plugin takes it); the pipeline refused it."""
    roles = tmp_path / "roles.json"
    roles.write_text('{"encoder": ["pos:1,syn:2,rare:1"]}')
    assert ModelSpec(heads_from=str(roles), apply="encoder").problems() == []
    assert ModelSpec(heads_from=str(roles), apply="encoder").options(roles).problems() == []  # the plugin's check
    (problem,) = ModelSpec(heads_from=str(roles)).problems()  # decoder too, by default
    assert problem.startswith(f"model.heads_from={str(roles)!r}") and "'decoder'" in problem


def test_role_mix_check_sees_the_head_count_that_extra_args_set():
    validate(
        _compose(
            "model.heads='pos:2,syn:4,rare:2'",
            "train.extra_args=[--encoder-attention-heads,8,'--decoder-attention-heads=8']",
        )
    )


def test_structure_options_on_a_dense_model_are_rejected():
    _rejects(
        r"model.window=7: structure options apply only to structured architectures \(model.arch=structured_\* such "
        r"as structured_transformer_multi30k\), not to model.arch=transformer_multi30k",
        "model=dense_multi30k",
        "model.window=7",
    )
    # every option set is named; an architecture without a structured one is not told to use one
    _rejects(
        r"model.window=7, model.rare=1: structure options apply only to structured architectures "
        r"\(model.arch=structured_\*\), not to model.arch=transformer_align",
        "model=dense_multi30k",
        "model.arch=transformer_align",
        "model.window=7",
        "model.rare=1",
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--max-update", "0"], "argument --max-update: must be >= 1, got 0"),
        (["--max-update", "-3"], "argument --max-update: must be >= 1, got -3"),
        (["--seeds", "1", "-1"], "argument --seeds: must be >= 0, got -1"),
        (["--seeds", "2147483648"], "argument --seeds: must be <= 2147483647, got 2147483648"),
    ],
)
def test_recipe_arguments(args, message, capsys, monkeypatch):
    """Refused by argparse (exit 2) before anything runs: an argument let through fails here, not by training."""
    monkeypatch.setattr(recipes, "compare", lambda *a, **kw: pytest.fail(f"{args} reached the training"))
    monkeypatch.setattr(recipes, "run_child", lambda cmd: pytest.fail(f"{args} started a seed's process"))
    with pytest.raises(SystemExit) as ended:
        recipes.main(["demo", *args])
    assert ended.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("value, message", [("0", "must be >= 1, got 0"), ("x", "'x' is not an integer")])
def test_int_at_least(value, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        int_at_least(1)(value)


def test_int_at_least_takes_both_of_its_bounds_themselves():
    """The bounds are inclusive: ``int_at_least(1, 5)`` takes 1 and 5 and refuses 6."""
    assert int_at_least(1, 5)("1") == 1 and int_at_least(1, 5)("5") == 5
    with pytest.raises(argparse.ArgumentTypeError, match=r"^must be <= 5, got 6$"):
        int_at_least(1, 5)("6")


@pytest.mark.parametrize("size", ["0", "-1"])
def test_translate_batch_size(size, tmp_path, capsys):
    with pytest.raises(SystemExit):
        translate.main([str(tmp_path), "--batch-size", size])
    assert f"argument --batch-size: must be >= 1, got {size}" in capsys.readouterr().err


def test_translate_names_the_input_line_that_is_not_utf8(tmp_path, monkeypatch):
    monkeypatch.setattr(translate, "setup", lambda verbose=False: None)  # keep the test process's console
    monkeypatch.setattr(translate, "Translator", lambda run_dir, **settings: SimpleNamespace(checkpoint=None))
    monkeypatch.setattr(translate, "which_training", lambda *where: (logging.INFO, "a training"))
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO("fine\nstill fine\nbad \xff\n".encode("latin-1"))))
    with pytest.raises(
        SystemExit,
        match=r"^error: standard input:3: invalid UTF-8 at byte 4 of the line \(0xff: invalid start byte\); give "
        "UTF-8 text$",
    ):
        translate.main([str(tmp_path)])


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"vocab_size": 0}, "vocab_size=0 must be >= 1"),
        ({"max_train_lines": -5}, r"max_train_lines=-5 must be >= 0 \(0 = all\)"),
        ({"max_eval_lines": -1}, r"max_eval_lines=-1 must be >= 0 \(0 = all\)"),
    ],
)
def test_prepare_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        PrepConfig(**settings)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--vocab-size", "0"], "argument --vocab-size: must be >= 1, got 0"),
        (["--max-train-lines", "-5"], "argument --max-train-lines: must be >= 0, got -5"),
    ],
)
def test_prepare_command_line(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit):
        prepare_cli.main([str(tmp_path / "out"), *args])
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_base_url_is_a_url_urllib_downloads_with_its_scheme_given():
    """A host and port with no scheme parses as the scheme 'localhost' (urllib: "unknown url type"), and a scheme
    urllib has no handler for fails alike: both are refused; https, http, ftp and file URLs are taken."""
    for base_url in ("localhost:8000/wmt", "mirror.example.org:8080/wmt", "s3://bucket/wmt", "sftp://host/wmt"):
        assert wrong_source_option("wmt14_en_de", None, base_url) == (
            f"base_url={base_url!r} is no URL; give the scheme as well (https://, http://, ftp://, file://)"
        )
    for base_url in ("https://m.example/wmt", "http://m.example", "ftp://m.example/wmt", "file:///srv/wmt", None):
        assert wrong_source_option("wmt16_en_ro", None, base_url) is None
    assert wrong_source_option("multi30k_en_de", "/srv/multi30k", None) is None


def test_preparing_a_data_set_the_pipeline_does_not_know_is_refused_before_any_folder_is_made(tmp_path):
    with pytest.raises(
        DataError, match="unknown data set 'wmt99_en_de'; choose from multi30k_en_de, wmt14_en_de, wmt16"
    ):
        prepare_dataset("wmt99_en_de", tmp_path / "data" / "wmt99", PrepConfig())
    assert list(tmp_path.iterdir()) == []


def test_fairseq_hydra_config_matches_the_reproduce_schedule(monkeypatch):
    """conf/fairseq/structured_multi30k.yaml, composed as fairseq-hydra-train composes it, holds the
    fairseq-train options that `structmt-run train=reproduce` passes."""
    from fairseq import options
    from fairseq.dataclass.initialize import add_defaults, hydra_init

    schedule = recipes.load_schedule("reproduce")
    model = ModelSpec()  # model=structured_multi30k, the default
    argv = ["DATA", "--user-dir", str(REPO / "structmt"), "--arch", model.arch, "--log-format", "simple"]
    args = options.parse_args_and_arch(
        options.get_training_parser(), argv + model.fairseq_args() + schedule.fairseq_args()
    )
    store = ConfigStore.instance()
    monkeypatch.setattr(store, "repo", copy.deepcopy(store.repo))  # fairseq's schemas stay out of later tests
    hydra_init("structured_multi30k")
    with warnings.catch_warnings(), initialize_config_dir(config_dir=str(CONF / "fairseq"), version_base=None):
        warnings.simplefilter("ignore")
        theirs = compose("structured_multi30k", overrides=["task.data=DATA", f"common.user_dir={REPO / 'structmt'}"])
    add_defaults(theirs)
    differ = []
    for group in ("common", "dataset", "optimization", "checkpoint", "criterion", "optimizer", "lr_scheduler", "model"):
        for key, value in OmegaConf.to_container(theirs[group], resolve=True).items():
            option = ("arch" if group == "model" else group) if key == "_name" else key  # _name: --arch, --optimizer...
            passed = getattr(args, option, "<not passed>" if key != "_name" else None)
            differ += [f"{group}.{key}: yaml {value!r}, pipeline {passed!r}"] if value != passed else []
    assert differ == []


def test_the_gpu_count_is_passed_and_names_the_run(monkeypatch):
    """fairseq-train's own --distributed-world-size is every GPU the machine shows: on 8 GPUs a run trained with an
    8x larger batch than on one under the same run id. The pipeline passes train.world_size (1 by default, the
    ids of earlier runs unchanged); another count names the schedule and the id, and more than the job shows is
    refused before anything runs."""
    import torch

    from structmt.pipeline.app import specs

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    for var in ("SLURM_JOB_NODELIST", "SLURM_NTASKS_PER_NODE", "SLURM_NNODES"):
        monkeypatch.delenv(var, raising=False)
    one, _ = specs(_compose())
    args = one.schedule.fairseq_args()
    assert args[args.index("--distributed-world-size") + 1] == "1"
    assert one.run_id() == "multi30k_en_de-cpu_demo-w3-r2-e4aa037a"  # the committed demo run's id, as before
    validate(_compose("train.world_size=8"))
    eight, _ = specs(_compose("train.world_size=8"))
    assert eight.schedule.name == "cpu_demo+world_size=8" and eight.run_id() != one.run_id()
    _rejects(r"train.world_size=9: this machine shows 8 GPU\(s\)", "train.world_size=9")
    _rejects(r"train.world_size=0 must be >= 1", "train.world_size=0")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    _rejects(r"train.world_size=2: this machine shows 1 GPU\(s\)", "train.world_size=2")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    _rejects(r"train.extra_args sets --distributed-world-size, .*; set train.world_size instead",
             "train.extra_args=[--distributed-world-size,8]")  # fmt: skip
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[01-02]")
    monkeypatch.setenv("SLURM_NNODES", "2")
    validate(_compose("train.world_size=16"))
    _rejects(r"this SLURM job shows 8 GPU\(s\) on 2 node\(s\), .*hydra.launcher.gpus_per_node", "train.world_size=8")
    monkeypatch.delenv("SLURM_NNODES")  # a job of one node
    validate(_compose("train.world_size=8"))
    _rejects(r"this SLURM job shows 8 GPU\(s\) on 1 node\(s\)", "train.world_size=4")
