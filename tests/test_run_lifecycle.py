"""A run's life outside fairseq: its id (the key of every committed row), what a second call does to a finished
or half-finished run, the commit it records, and how ``make reproduce SEEDS=…`` hands each seed to a process of
its own."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch

from structmt import provenance
from structmt.files import DataError
from structmt.paths import DataFolder
from structmt.pipeline import recipes, training
from structmt.pipeline import spec as spec_module
from structmt.pipeline.recipes import RECIPES, load_schedule, pair
from structmt.pipeline.spec import ModelSpec, RunSpec, Schedule, own_name

quiet = lambda msg: None  # noqa: E731


@pytest.mark.parametrize(
    "seed, dense_id, structured_id",
    [
        (1, "multi30k_en_de-reproduce-dense-d5ac2722", "multi30k_en_de-reproduce-w3-r2-b4b868aa"),
        (2, "multi30k_en_de-reproduce-dense-4a27cf14", "multi30k_en_de-reproduce-w3-r2-c244007f"),
        (3, "multi30k_en_de-reproduce-dense-9f006b0b", "multi30k_en_de-reproduce-w3-r2-e5ee6cf2"),
    ],
)
def test_the_committed_headline_ids_are_what_the_recipes_name_now(seed, dense_id, structured_id):
    """``results/`` is keyed by run id: an id that moved would re-train a committed seed and leave its rows
    orphaned.  Each seed's fine-tune names the dense run of its seed it starts from; seed 1's its committed id."""
    dense, structured = pair("reproduce", replace(load_schedule(RECIPES["reproduce"]), seed=seed))
    assert (dense.run_id(), structured.run_id()) == (dense_id, structured_id)
    start, finetuned = pair("finetune", replace(load_schedule(RECIPES["finetune"]), seed=seed))
    assert start.run_id() == dense_id and finetuned.schedule.finetune_from == dense_id
    if seed == 1:
        assert finetuned.run_id() == "multi30k_en_de-finetune-w3-r2-ft-d4f9a7f0"


def test_a_run_started_from_a_checkpoint_file_is_named_by_its_weights_not_its_path(tmp_path):
    a, b = tmp_path / "a" / "start.pt", tmp_path / "b" / "moved.pt"
    for path in (a, b):
        path.parent.mkdir()
        path.write_bytes(b"weights one")
    model = ModelSpec(arch="structured_transformer_multi30k")
    ids = lambda path: RunSpec(model=model, schedule=Schedule(finetune_from=str(path))).run_id()  # noqa: E731
    assert ids(a) == ids(b) and "-w3-r2-ft-" in ids(a)
    b.write_bytes(b"other weights, longer")
    assert ids(b) != ids(a)
    assert ids(a) != RunSpec(model=model).run_id()
    # train=finetune with a file: its schedule's name too (finetune+finetune_from=...) is of the weights (a digest of
    # the path named copies apart and new weights at one path alike, and entered the id with the name)
    b.write_bytes(b"weights one")
    named = lambda path: own_name(replace(load_schedule("finetune"), finetune_from=str(path)))  # noqa: E731
    assert named(a).name == named(b).name == named(tmp_path / "a" / ".." / "b" / "moved.pt").name
    assert named(a).name.startswith("finetune+finetune_from=")
    assert RunSpec(model=model, schedule=named(a)).run_id() == RunSpec(model=model, schedule=named(b)).run_id()
    b.write_bytes(b"other weights, longer")
    assert named(b).name != named(a).name


@pytest.mark.parametrize("how", ["in place", "replaced by rename"])
def test_a_start_file_rewritten_with_its_old_size_and_mtime_gets_a_new_id(tmp_path, how):
    """`cp -p`, `touch -d` or a copy tool can give new weights the old file's size and modification time."""
    start = tmp_path / "start.pt"
    start.write_bytes(b"weights one")
    model = ModelSpec(arch="structured_transformer_multi30k")
    ids = lambda: RunSpec(model=model, schedule=Schedule(finetune_from=str(start))).run_id()  # noqa: E731
    before, old = ids(), start.stat()
    if how == "in place":
        start.write_bytes(b"weights two")  # same size, at once: within the file system's clock tick
    else:
        (tmp_path / "new.pt").write_bytes(b"weights two")
        os.replace(tmp_path / "new.pt", start)
    os.utime(start, ns=(old.st_atime_ns, old.st_mtime_ns))
    assert (start.stat().st_size, start.stat().st_mtime_ns) == (old.st_size, old.st_mtime_ns)
    assert ids() != before


def test_a_start_files_digest_is_read_once_while_it_is_unchanged(tmp_path, monkeypatch):
    """The weights are hashed once per (path, size, times, inode), not at every run_id call; a file
    changed within the last RACY_NS (its next write could fall in the same clock tick) every time."""
    start = tmp_path / "start.pt"
    start.write_bytes(b"weights one")
    reads: list[Path] = []
    monkeypatch.setattr(spec_module, "sha256_file", lambda path: reads.append(path) or "digest of " + path.name)
    model = ModelSpec(arch="structured_transformer_multi30k")
    ids = lambda: RunSpec(model=model, schedule=Schedule(finetune_from=str(start))).run_id()  # noqa: E731
    ids(), ids()
    assert len(reads) == 2  # just written: racy, read each time
    monkeypatch.setattr(spec_module, "RACY_NS", 0)  # as if written long ago
    ids(), ids(), ids()
    assert len(reads) == 3
    (tmp_path / "new.pt").write_bytes(b"weights two")
    os.replace(tmp_path / "new.pt", start)
    ids(), ids()
    assert len(reads) == 4  # a new inode: read again, once


class Trained(Exception):
    """fairseq's training was started (the recorded stand-in stops there)."""


def _run(tmp_path: Path, monkeypatch) -> tuple[RunSpec, Path, list]:
    """A run folder under ``tmp_path`` with fairseq's ``train`` recorded (not run)."""
    spec = RunSpec(schedule=Schedule(max_update=20))
    run_dir = tmp_path / spec.run_id()
    (run_dir / "checkpoints").mkdir(parents=True)
    monkeypatch.setattr(training, "prepare_data", lambda spec, runs_dir: DataFolder(tmp_path))
    monkeypatch.setattr(training, "keep_model_files", lambda *a: None)
    calls: list = []

    def train(bin_dir, run_dir, arch, args, env, carried):
        calls.append(args)
        raise Trained

    monkeypatch.setattr(training, "train", train)
    return spec, run_dir, calls


@pytest.mark.reliability  # failure handling: docs/reliability.md
def test_a_finished_run_called_again_is_left_as_it_is(tmp_path, monkeypatch):
    """Its train.json keeps the commit and machine that trained it: another process's are not written over."""
    spec, run_dir, calls = _run(tmp_path, monkeypatch)
    torch.save({"optimizer_history": [{"num_updates": 20}]}, run_dir / "checkpoints" / "checkpoint_last.pt")
    kept = json.dumps({"updates": 20, "git_commit": "old", "machine": "OLD", "checkpoint": "c.pt"}) + "\n"
    (run_dir / "train.json").write_text(kept)
    monkeypatch.setattr(training, "git_commit", lambda: "new")
    said: list[str] = []
    metrics = training.train_run(spec, runs_dir=tmp_path, log=said.append)
    assert (run_dir / "train.json").read_text() == kept and metrics["git_commit"] == "old" and not calls
    assert said == [f"[{spec.run_id()}] trained earlier (20 updates); skipping training"]


@pytest.mark.reliability  # failure handling: docs/reliability.md
def test_a_half_trained_checkpoint_is_resumed_to_the_schedules_end(tmp_path, monkeypatch):
    spec, run_dir, calls = _run(tmp_path, monkeypatch)
    torch.save({"optimizer_history": [{"num_updates": 15}]}, run_dir / "checkpoints" / "checkpoint_last.pt")
    with pytest.raises(Trained):
        training.train_run(spec, runs_dir=tmp_path, log=quiet)
    (args,) = calls
    assert args[args.index("--max-update") + 1] == "20"
    assert not (run_dir / "train.json").exists()
    # the settings it trains with, kept before fairseq starts: a later command logs and fine-tunes from them
    assert json.loads((run_dir / "spec.json").read_text()) == json.loads(json.dumps(asdict(spec)))


def test_a_training_waits_for_the_runs_lock(tmp_path, monkeypatch):
    """Another job of a sweep training (or evaluating) the run holds its lock: this one starts no fairseq-train
    until it is released, then finds the run as the other left it."""
    import threading

    spec, run_dir, calls = _run(tmp_path, monkeypatch)
    ended: list[BaseException] = []

    def job():
        try:
            training.train_run(spec, runs_dir=tmp_path, log=quiet)
        except Trained as err:
            ended.append(err)

    with training.run_lock(tmp_path, spec.run_id()):
        waiting = threading.Thread(target=job)
        waiting.start()
        waiting.join(1.0)
        assert waiting.is_alive() and calls == []
    waiting.join(30)
    assert not waiting.is_alive() and len(calls) == 1 and len(ended) == 1


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def _committed(repo: Path, files: dict[str, str]) -> str:
    """A git repository at ``repo`` with ``files`` (path: text) in its one commit; that commit."""
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    return _git(repo, "rev-parse", "HEAD")


def test_the_commit_is_dirty_when_tracked_code_differs_and_clean_for_results_or_untracked_files(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    sha = _committed(repo, {"code.py": "a = 1\n", "results/leaderboard.csv": "run_id\n"})
    monkeypatch.setattr(provenance, "REPO_ROOT", repo)
    commit = provenance.read_commit
    assert commit() == sha
    (repo / "results" / "leaderboard.csv").write_text("run_id\nnew row\n")  # the rows a run adds
    (repo / "notes.txt").write_text("untracked\n")
    assert commit() == sha
    (repo / "structmt").mkdir()
    (repo / "structmt" / "extra_arch.py").write_text("b = 1\n")  # untracked code: it runs
    assert commit() == sha + "+dirty"
    (repo / "structmt" / "extra_arch.py").unlink()
    (repo / "code.py").write_text("a = 2\n")
    assert commit() == sha + "+dirty"


def test_a_process_whose_checkout_changes_records_a_dirty_commit(tmp_path, monkeypatch):
    """The commit is read at the process's first call; fairseq's subprocesses read the plugin from the checkout,
    so once its code differs (an edit, another commit's code) the results name no single commit: ``+dirty``.
    A change to the docs alone, committed or not, changes no result."""
    repo = tmp_path / "repo"
    sha = _committed(repo, {"structmt/code.py": "a = 1\n", "docs/a.md": "a\n"})
    commit = ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam"]
    monkeypatch.setattr(provenance, "REPO_ROOT", repo)
    provenance._first_commit.cache_clear()
    try:
        assert provenance.git_commit() == sha
        (repo / "docs" / "a.md").write_text("b\n")
        _git(repo, *commit, "docs")  # another commit, the same code
        assert provenance.read_commit() != sha and provenance.git_commit() == sha
        (repo / "structmt" / "code.py").write_text("a = 2\n")
        assert provenance.git_commit() == sha + "+dirty"
        _git(repo, *commit, "second")  # clean, another commit's code
        assert provenance.git_commit() == sha + "+dirty"
        (repo / "sub").mkdir()
        monkeypatch.setattr(provenance, "REPO_ROOT", repo / "sub")  # a copy inside another repository
        assert provenance.read_commit() == "unknown"
        assert provenance.why_unknown() == f"{repo / 'sub'} lies inside the repository {repo}, not one of its own"
    finally:
        provenance._first_commit.cache_clear()


def test_ignored_files_among_the_code_leave_the_commit_clean_and_an_untracked_config_makes_it_dirty(
    tmp_path, monkeypatch
):
    """Importing the code writes ``__pycache__`` (ignored): no result would be clean. A config of one's own in
    ``conf/`` changes what structmt-run runs."""
    repo = tmp_path / "repo"
    sha = _committed(
        repo, {".gitignore": "__pycache__/\n", "structmt/code.py": "a = 1\n", "conf/config.yaml": "a: 1\n"}
    )
    monkeypatch.setattr(provenance, "REPO_ROOT", repo)
    (repo / "structmt" / "__pycache__").mkdir()
    (repo / "structmt" / "__pycache__" / "code.cpython-312.pyc").write_bytes(b"compiled")
    assert provenance.read_commit() == sha
    (repo / "conf" / "model").mkdir()
    (repo / "conf" / "model" / "mine.yaml").write_text("arch: mine\n")
    assert provenance.read_commit() == sha + "+dirty"


def test_reading_the_commit_writes_nothing_into_the_repository(tmp_path, monkeypatch):
    """A sweep's jobs read the commit while the user works: a plain ``git status`` rewrites the index (taking
    the lock a ``git commit`` needs) when a file's time changed but not its text."""
    repo = tmp_path / "repo"
    sha = _committed(repo, {"structmt/code.py": "a = 1\n"})
    monkeypatch.setattr(provenance, "REPO_ROOT", repo)
    index = repo / ".git" / "index"
    later = index.stat().st_mtime_ns + 5_000_000_000
    os.utime(repo / "structmt" / "code.py", ns=(later, later))
    before = index.read_bytes()
    assert provenance.read_commit() == sha
    assert index.read_bytes() == before


def test_the_commit_is_unknown_without_a_repository_a_first_commit_or_git_and_says_why(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # no repository around the test's folder either
    monkeypatch.setattr(provenance, "REPO_ROOT", tmp_path)
    assert provenance.read_commit() == "unknown"
    assert provenance.why_unknown().startswith("fatal: not a git repository")
    _git(tmp_path, "init", "-q")
    assert provenance.read_commit() == "unknown"
    assert provenance.why_unknown().startswith("fatal: ambiguous argument 'HEAD'")
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    assert provenance.read_commit() == "unknown"
    assert provenance.why_unknown().startswith("git cannot run ([Errno 2] No such file or directory: 'git')")


def test_a_process_that_starts_dirty_stays_dirty_and_one_whose_git_fails_later_records_unknown(tmp_path, monkeypatch):
    """Started on edited code, the process ran no commit's code even once the edit is undone; new untracked code
    makes a clean start dirty while it lies there; a checkout whose git can no longer tell names no commit."""
    repo = tmp_path / "repo"
    sha = _committed(repo, {"structmt/code.py": "a = 1\n"})
    monkeypatch.setattr(provenance, "REPO_ROOT", repo)
    provenance._first_commit.cache_clear()
    try:
        (repo / "structmt" / "code.py").write_text("a = 2\n")
        assert provenance.git_commit() == sha + "+dirty"
        (repo / "structmt" / "code.py").write_text("a = 1\n")
        assert provenance.git_commit() == sha + "+dirty"
        provenance._first_commit.cache_clear()
        assert provenance.git_commit() == sha
        (repo / "structmt" / "new_arch.py").write_text("b = 1\n")
        assert provenance.git_commit() == sha + "+dirty"
        (repo / "structmt" / "new_arch.py").unlink()
        assert provenance.git_commit() == sha
        shutil.rmtree(repo / ".git")
        monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
        assert provenance.git_commit() == "unknown"
    finally:
        provenance._first_commit.cache_clear()


@pytest.mark.reliability  # failure handling: docs/reliability.md
@pytest.mark.parametrize("recipe, keep_logs", [("demo", False), ("reproduce", True), ("finetune", True)])
def test_a_recipe_compares_its_pair_in_the_folders_given_and_only_the_headline_needs_a_clean_tree(
    tmp_path, monkeypatch, capsys, recipe, keep_logs
):
    """The headline recipes (their rows are the README's) refuse a dirty tree, or one whose commit cannot be read,
    and keep their training logs; the demo does neither. ``--train-only`` prints no table; a data problem is one
    error line."""
    seen: list[dict] = []
    monkeypatch.setattr(recipes, "compare", lambda dense, structured, **kw: seen.append(kw) or [])
    runs, results = tmp_path / "r", tmp_path / "s"
    argv = [recipe, "--runs-dir", str(runs), "--results-dir", str(results)]
    monkeypatch.setattr(recipes, "git_commit", lambda: "abcdef0123456789+dirty")
    if keep_logs:
        with pytest.raises(SystemExit, match=r"^error: the checkout differs from commit abcdef012345 .*--allow-dirty"):
            recipes.main(argv)
        with monkeypatch.context() as m:
            m.setattr(recipes, "git_commit", lambda: "unknown")  # no git, or a copy inside another repository
            with pytest.raises(
                SystemExit, match=r"^error: this checkout's commit cannot be read \(.*safe.directory.*--allow-dirty"
            ):
                recipes.main(argv)
        assert not seen
        argv.append("--allow-dirty")
    recipes.main(argv + ["--train-only"])
    assert seen == [{"runs_dir": runs, "results_dir": results, "train_only": True, "keep_logs": keep_logs}]
    assert capsys.readouterr().out == ""

    def no_data(dense, structured, **kw):
        raise DataError("no corpus here")

    monkeypatch.setattr(recipes, "compare", no_data)
    with pytest.raises(SystemExit, match="^error: no corpus here$"):
        recipes.main(argv)


@pytest.mark.reliability  # failure handling: docs/reliability.md
def test_each_seed_is_a_process_of_its_own_with_every_option_passed_on(tmp_path, monkeypatch):
    commands: list[list[str]] = []
    codes = iter([0, 1, 0])
    monkeypatch.setattr(recipes, "run_child", lambda cmd: commands.append(cmd) or next(codes))
    monkeypatch.setattr(recipes, "compare", lambda *a, **k: pytest.fail("compared in the parent process"))
    runs, results = str(tmp_path / "r"), str(tmp_path / "s")
    argv = ["demo", "--seeds", "6", "5", "4", "--max-update", "5", "--train-only", "--allow-dirty", "-v"]
    with pytest.raises(SystemExit, match=r"^error: seed\(s\) 5 failed \(their errors above\); seed\(s\) 6 4 finished$"):
        recipes.main(argv + ["--runs-dir", runs, "--results-dir", results])
    tail = ["--runs-dir", runs, "--results-dir", results, "--max-update", "5", "--train-only", "--allow-dirty"]
    tail += ["--verbose"]
    child = [sys.executable, "-m", "structmt.pipeline.recipes", "demo", "--seeds"]
    # in the order given; a failed seed leaves the others to run (an overnight run keeps what it can)
    assert commands == [child + ["6"] + tail, child + ["5"] + tail, child + ["4"] + tail]


def test_a_seeds_process_gets_only_the_options_given(monkeypatch):
    commands: list[list[str]] = []
    monkeypatch.setattr(recipes, "run_child", lambda cmd: commands.append(cmd) or 0)
    recipes.main(["demo", "--seeds", "1", "2", "--runs-dir", "r", "--results-dir", "s"])
    child = [sys.executable, "-m", "structmt.pipeline.recipes", "demo", "--seeds"]
    assert commands == [child + [seed, "--runs-dir", "r", "--results-dir", "s"] for seed in ("1", "2")]


@pytest.mark.reliability  # failure handling: docs/reliability.md
def test_a_pairs_failed_training_is_said_while_the_other_trains_and_both_failures_are_named(tmp_path, monkeypatch):
    import threading

    from structmt.fairseq_cli import StepError
    from structmt.pipeline.recipes import pair

    dense, structured = pair("demo", Schedule(max_update=5))
    said = threading.Event()
    monkeypatch.setattr(recipes, "prepare_data", lambda spec, runs_dir: None)
    errors: list[str] = []
    monkeypatch.setattr(recipes.log, "error", lambda message: errors.append(message) or said.set())
    seen: list[bool] = []

    def train_run(spec, runs_dir):
        if spec is dense:
            raise StepError("dense broke")
        seen.append(said.wait(timeout=30))  # the structured training, still running when the failure is said
        if fail_both:
            raise StepError("structured broke")
        return {}

    monkeypatch.setattr(recipes, "train_run", train_run)
    fail_both = False
    with pytest.raises(StepError, match="^dense broke$"):
        recipes.compare(dense, structured, runs_dir=tmp_path, results_dir=tmp_path)
    assert seen == [True]
    assert errors == [f"[{dense.run_id()}] training failed: dense broke; the other training goes on"]
    fail_both, said = True, threading.Event()
    with pytest.raises(StepError) as e:
        recipes.compare(dense, structured, runs_dir=tmp_path, results_dir=tmp_path)
    assert (
        str(e.value) == f"both trainings failed: {dense.run_id()}: dense broke; {structured.run_id()}: structured broke"
    )


def test_a_pair_trains_side_by_side_after_its_data_and_a_fine_tune_after_its_start(tmp_path, monkeypatch):
    """The data is prepared once, first (a data problem is said once, before any training); the two trainings run
    at once; a fine-tune trains after the dense run it starts from; ``train_only`` evaluates nothing."""
    import threading

    calls: list[str] = []
    both = threading.Barrier(2, timeout=10)  # each training waits for the other: they must run at once
    monkeypatch.setattr(recipes, "prepare_data", lambda spec, runs_dir: calls.append("data"))
    monkeypatch.setattr(recipes, "evaluate_run", lambda *a, **kw: pytest.fail("evaluated with train_only"))

    def train_run(spec, runs_dir):
        calls.append(spec.run_id())
        if not spec.schedule.finetune_from:
            both.wait()
        return {}

    monkeypatch.setattr(recipes, "train_run", train_run)
    dense, structured = pair("demo", Schedule(max_update=5))
    assert recipes.compare(dense, structured, runs_dir=tmp_path, results_dir=tmp_path, train_only=True) == []
    assert calls[0] == "data" and sorted(calls[1:]) == sorted([dense.run_id(), structured.run_id()])
    calls.clear()
    start, finetuned = pair("finetune", Schedule(max_update=5))
    both = threading.Barrier(1)
    recipes.compare(start, finetuned, runs_dir=tmp_path, results_dir=tmp_path, train_only=True)
    assert calls == ["data", start.run_id(), finetuned.run_id()]
    calls.clear()

    def no_data(spec, runs_dir):
        raise DataError("no corpus here")

    monkeypatch.setattr(recipes, "prepare_data", no_data)
    with pytest.raises(DataError, match="^no corpus here$"):
        recipes.compare(dense, structured, runs_dir=tmp_path, results_dir=tmp_path, train_only=True)
    assert calls == []


def test_a_seed_process_trains_the_pair_of_its_seed(tmp_path, monkeypatch):
    """What each seed's child process does with ``--seeds 2``: the committed seed-2 pair, not the schedule's seed."""
    pairs: list[tuple[str, str]] = []
    monkeypatch.setattr(recipes, "git_commit", lambda: "0" * 40)
    monkeypatch.setattr(recipes, "compare", lambda d, s, **kw: pairs.append((d.run_id(), s.run_id())) or [])
    recipes.main(["reproduce", "--seeds", "2", "--train-only", "--runs-dir", str(tmp_path)])
    assert pairs == [("multi30k_en_de-reproduce-dense-4a27cf14", "multi30k_en_de-reproduce-w3-r2-c244007f")]


@pytest.mark.reliability  # docs/reliability.md
def test_a_training_begun_on_a_dirty_tree_and_finished_on_a_clean_one_is_not_recorded_clean(monkeypatch, tmp_path):
    """train.json's commit (the rows' train_commit, the headline's trained column) was the finishing process's
    alone: a run started with --allow-dirty and resumed from a clean tree passed for clean."""
    from structmt.fairseq_cli import StepError, TrainResult

    monkeypatch.setattr(training, "prepare_data", lambda spec, runs_dir: DataFolder(tmp_path / "data"))
    monkeypatch.setattr(training, "keep_model_files", lambda *a: None)
    monkeypatch.setattr(training, "machine_label", lambda: "M")
    monkeypatch.setattr(training, "checkpoint_updates", lambda path: 0)
    commit = {"now": "abc123+dirty"}
    monkeypatch.setattr(training, "git_commit", lambda: commit["now"])
    calls = []

    def fake_train(bin_dir, run_dir, arch, args, env, carried):
        calls.append(commit["now"])
        if len(calls) == 1:
            raise StepError("fairseq-train was stopped by SIGTERM")  # the first session, dirty, cut short
        return TrainResult(updates=10, wall_seconds=5.0, tokens_per_second=1.0, checkpoint=run_dir / "c.pt")

    monkeypatch.setattr(training, "train", fake_train)
    spec = RunSpec(model=ModelSpec(arch="transformer_multi30k"), schedule=Schedule(max_update=10))
    with pytest.raises(StepError):
        training.train_run(spec, runs_dir=tmp_path / "runs", log=quiet)
    commit["now"] = "abc123"
    assert training.train_run(spec, runs_dir=tmp_path / "runs", log=quiet)["git_commit"] == "abc123+dirty"
    assert training.trained_commit("abc123", tmp_path / "none.log") == "abc123"


def test_a_dirty_finish_of_a_run_with_a_dirty_session_is_marked_dirty_once(tmp_path):
    """A commit that is already ``+dirty`` is not marked again because an earlier session ran dirty too."""
    log = tmp_path / "train.log"
    log.write_text("\n# structmt abc123+dirty on M\n")
    assert training.trained_commit("abc123+dirty", log) == "abc123+dirty"
    assert training.trained_commit("abc123", log) == "abc123+dirty"


@pytest.mark.reliability  # docs/reliability.md
def test_a_data_folder_prepared_again_with_another_vocabulary_is_refused_to_a_run_trained_on_the_first(
    monkeypatch, tmp_path
):
    """structmt-prepare into the pipeline's own data folder with another --vocab-size: a resumed run trained on
    other token ids than its checkpoint's, and an evaluation decoded with them, in silence."""
    from structmt.fairseq_cli import StepError
    from structmt.pipeline import evaluation

    data = DataFolder(tmp_path / "data")
    data.bin.mkdir(parents=True)
    for lang in ("en", "de"):
        data.dictionary(lang).write_text("▁a 10\n▁b 5\n")
    monkeypatch.setattr(training, "prepare_data", lambda spec, runs_dir: data)
    monkeypatch.setattr(evaluation, "prepare_data", lambda spec, runs_dir: data)
    monkeypatch.setattr(training, "keep_model_files", lambda *a: None)
    spec = RunSpec(model=ModelSpec(arch="transformer_multi30k"), schedule=Schedule(max_update=10))
    run = training.RunFolder(tmp_path / "runs" / spec.run_id())
    run.model.mkdir(parents=True)
    for lang in ("en", "de"):
        run.dictionary(lang).write_text("▁a 10\n▁b 5\n")  # as it began
    training.check_vocabulary(data, run.path, ("en", "de"))  # the same: nothing to say
    data.dictionary("de").write_text("▁x 9\n▁a 7\n")  # prepared again
    monkeypatch.setattr(training, "train", lambda *a: pytest.fail("trained on other token ids"))
    with pytest.raises(StepError, match=r"dict.de.txt is not the dictionary .* was trained with .*prepared again"):
        training.train_run(spec, runs_dir=tmp_path / "runs", log=quiet)
    run.metrics.write_text(json.dumps({"updates": 10, "wall_seconds": 1.0, "tokens_per_second": 1.0}))
    monkeypatch.setattr(evaluation, "decode", lambda *a, **k: pytest.fail("decoded with other token ids"))
    with pytest.raises(StepError, match=r"is not the dictionary .* was trained with"):
        evaluation.evaluate_run(spec, runs_dir=tmp_path / "runs", results_dir=tmp_path / "results", log=quiet)
    with pytest.raises(StepError, match=r"is not the dictionary .* was trained with"):  # a sweep's objective too
        evaluation.valid_bleu(spec, runs_dir=tmp_path / "runs", log=quiet)


def test_a_resumed_finetune_names_its_start_once_and_keeps_the_time_it_carried(monkeypatch, tmp_path):
    """Only the process that starts a fine-tune from another run's weights (fairseq reads --finetune-from-model
    while the run has no checkpoint of its own) names them in train.log and records the training time they carry:
    a resume after that run was trained again says nothing of its new weights, and keeps the first time."""
    from structmt.fairseq_cli import StepError, TrainResult

    runs = tmp_path / "runs"
    start = runs / "dense-run" / "checkpoints" / "checkpoint_last.pt"
    start.parent.mkdir(parents=True)
    (start.parent.parent / "train.json").write_text("{}")
    torch.save({"extra_state": {"previous_training_time": 100.0}}, start)
    monkeypatch.setattr(training, "prepare_data", lambda spec, runs_dir: DataFolder(tmp_path / "data"))
    monkeypatch.setattr(training, "keep_model_files", lambda *a: None)
    updates = {"now": 0}
    monkeypatch.setattr(training, "checkpoint_updates", lambda path: updates["now"])
    carried: list = []

    def fake_train(bin_dir, run_dir, arch, args, env, seconds):
        carried.append(seconds)
        if len(carried) == 1:
            raise StepError("fairseq-train was stopped by SIGTERM")
        return TrainResult(updates=10, wall_seconds=5.0, tokens_per_second=1.0, checkpoint=run_dir / "c.pt")

    monkeypatch.setattr(training, "train", fake_train)
    spec = RunSpec(
        model=ModelSpec(arch="structured_transformer_multi30k"),
        schedule=Schedule(max_update=10, finetune_from="dense-run"),
    )
    with pytest.raises(StepError):
        training.train_run(spec, runs_dir=runs, log=quiet)
    first = start.read_bytes()
    torch.save({"extra_state": {"previous_training_time": 999.0}}, start)  # the dense run trained again
    updates["now"] = 4  # the fine-tune's own checkpoint: fairseq resumes from it
    training.train_run(spec, runs_dir=runs, log=quiet)
    assert carried == [100.0, 100.0]
    headers = [line for line in (runs / spec.run_id() / "train.log").read_text().splitlines() if line.startswith("#")]
    digest = hashlib.sha256(first).hexdigest()
    assert [h.partition("; ")[2] for h in headers] == [f"fine-tuning from {start} (sha256 {digest})", ""]
