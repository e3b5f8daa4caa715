"""scripts/install_offline.sh: what it refuses before it installs anything, and the versions it asks for
agree with pyproject.toml (the one place the supported ranges are written)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="Python 3.11 or newer reads pyproject.toml")

REPO = Path(__file__).resolve().parents[1]
INSTALL = REPO / "scripts" / "install_offline.sh"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _floor(requirement: str, name: str) -> tuple[int, ...]:
    found = re.search(rf"\b{name}>=([\d.]+)", requirement)
    assert found, f"no {name}>= in {requirement!r}"
    return tuple(int(n) for n in found.group(1).split("."))


def test_setuptools_it_installs_can_build_structmt():
    # --no-build-isolation skips build-system.requires: an older setuptools fails on pyproject's license field
    needed = _floor(" ".join(PYPROJECT["build-system"]["requires"]), "setuptools")
    asked = _floor(INSTALL.read_text(), "setuptools")
    assert asked >= needed


@pytest.mark.parametrize("version", ["2.3.1+cu121", "3.0.0", "1.13.1", "2.6.0a0+ecf3bae40a"])  # the last: NGC's
def test_a_torch_outside_pyprojects_range_is_refused_before_anything_is_installed(tmp_path, version):
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text(f"__version__ = {version!r}\n")  # what `import torch` finds
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    (wheelhouse / "PYTHON_VERSION").write_text(f"{sys.version_info[0]}.{sys.version_info[1]}\n")
    run = subprocess.run(
        ["bash", str(INSTALL), str(wheelhouse), "--python", sys.executable],
        env=os.environ | {"PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    (torch_requirement,) = [r for r in PYPROJECT["project"]["dependencies"] if r.startswith("torch")]
    assert run.returncode == 1
    assert run.stderr.strip() == (
        f"install_offline: error: torch {version} is outside structmt's range ({torch_requirement[len('torch') :]}; "
        "a pre-release such as 2.6.0a0 is older than 2.6, as pip counts it)"
    )
    assert "installing into" not in run.stdout


@pytest.mark.parametrize(
    "given, seeds",
    [
        ({}, {"reproduce": "1 2 3", "finetune": "1"}),  # finetune: the seed-1 dense run, as its recipe's default
        ({"SEEDS": "2 3"}, {"reproduce": "2 3", "finetune": "2 3"}),
    ],
)
def test_the_seeds_each_make_target_runs(given, seeds):
    env = {k: v for k, v in os.environ.items() if k != "SEEDS"}
    args = [f"{k}={v}" for k, v in given.items()]
    for target, expected in seeds.items():
        # -n prints the commands; -o leaves the install stamp as it is, so only the target's own command shows;
        # ALLOW_DIRTY=0 allows nothing (any non-empty value did)
        for dirty, flag in (([], ""), (["ALLOW_DIRTY=1"], " --allow-dirty"), (["ALLOW_DIRTY=0"], "")):
            out = subprocess.run(
                ["make", "-n", "-o", ".venv/.installed", target, *args, *dirty],
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
            )
            assert out.returncode == 0, out.stderr
            assert f"structmt.pipeline.recipes {target} --seeds {expected}{flag}\n" in out.stdout


@pytest.mark.parametrize("venv", ["interpreter gone", "without pip", "working"])
def test_a_venv_of_another_python_is_made_again(tmp_path, venv):
    """make install kept a .venv of any Python (make PYTHON=python3.12 once), one whose interpreter was gone, or
    one without pip (every later run stopped at "No module named pip"), and called it up to date: the recipe makes
    it again, saying so. A working one is kept."""
    if venv == "interpreter gone":
        (tmp_path / ".venv" / "bin").mkdir(parents=True)
        (tmp_path / ".venv" / "bin" / "python").symlink_to(tmp_path / "gone")
    elif venv == "without pip":
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", tmp_path / ".venv"], check=True)
    else:
        (tmp_path / ".venv").symlink_to(sys.prefix)  # the environment running the tests: it has pip
    # the recipe for the Python running the tests (on a GPU node's 3.12 the default python3.11's would differ)
    make = ["make", "-n", "-B", "install", f"PYTHON={sys.executable}"]
    recipe = subprocess.run(make, cwd=REPO, capture_output=True, text=True).stdout
    start = recipe.index("want=")
    check = recipe[start : recipe.index("fi\n", start) + 2].replace("\\\n", "\n")
    done = subprocess.run(["sh", "-c", check], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    if venv == "working":
        assert done.stdout == "" and (tmp_path / ".venv").is_symlink()
        return
    assert (
        f".venv is not a working venv of {sys.executable} {tuple(sys.version_info[:2])} with pip (it runs: nothing, "
        "or has no pip): making it again"
    ) in done.stdout
    assert not (tmp_path / ".venv").exists()


def test_a_wheelhouse_folder_is_never_taken_apart_or_replaced_unless_it_is_one(tmp_path):
    """`make wheelhouse WHEELHOUSE="my wh"` reaches the script as one folder, and the script replaces only an earlier
    wheelhouse: a folder with other files in it (or a file) is refused before anything is downloaded or removed."""
    out = subprocess.run(
        ["make", "-n", "-o", ".venv/.installed", "wheelhouse", "WHEELHOUSE=/tmp/my wh"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and 'scripts/make_wheelhouse.sh "3.12" "/tmp/my wh"' in out.stdout
    script = REPO / "scripts" / "make_wheelhouse.sh"
    split = subprocess.run(["bash", str(script), "3.12", str(tmp_path / "my"), "wh"], capture_output=True, text=True)
    assert split.returncode == 2 and "got 3 arguments (quote a folder with spaces)" in split.stderr
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "IMPORTANT.txt").write_text("keep")
    (tmp_path / "afile").write_text("keep")
    for folder in ("mine", "afile"):
        run = subprocess.run(["bash", str(script), "3.12", str(tmp_path / folder)], capture_output=True, text=True)
        assert (
            run.returncode == 2 and "is not a wheelhouse (no PYTHON_VERSION in it); give another folder" in run.stderr
        )
    assert (tmp_path / "mine" / "IMPORTANT.txt").read_text() == (tmp_path / "afile").read_text() == "keep"
    leave = subprocess.run(
        ["bash", str(script), "3.12", str(tmp_path / "new")],
        env=os.environ | {"LEAVE_OUT": "numpy bad/name"},
        capture_output=True,
        text=True,
    )
    assert leave.returncode == 2 and "LEAVE_OUT: 'bad/name' is not a project name" in leave.stderr
    for python in ("3.13", "3.9"):  # outside requires-python: refused before the wheelhouse reaches a node
        late = subprocess.run(
            ["bash", str(script), python, str(tmp_path / "new")],
            env=os.environ | {"VPY": sys.executable},  # not this checkout's .venv, which a node may not have
            capture_output=True,
            text=True,
        )
        assert late.returncode == 2
        wanted = PYPROJECT["project"]["requires-python"]
        assert (
            late.stderr
            == f"error: PY={python}: structmt installs on Python {wanted} (pyproject.toml's requires-python)\n"
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "mine"]  # nothing downloaded, nothing left


def test_a_kernel_that_fails_to_build_leaves_no_older_kernel_behind(tmp_path):
    """A rebuild that fails (here: a source that does not compile) removes the kernel an earlier build left in the
    tree, so structmt never imports a kernel built from an older source; the package still builds without it."""
    for name in ("setup.py", "pyproject.toml"):
        shutil.copy(REPO / name, tmp_path / name)
    shutil.copytree(REPO / "structmt", tmp_path / "structmt", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    stale = tmp_path / "structmt" / ("_kernels" + sysconfig.get_config_var("EXT_SUFFIX"))
    stale.write_bytes(b"an older build")
    source = tmp_path / "structmt" / "attention" / "csrc" / "candidates.cpp"
    source.write_text('#include "no_such_header.h"  // broken on purpose: fatal at once\n' + source.read_text())
    run = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "structmt: C++ kernel not built (CompileError" in run.stdout
    assert f"structmt: removed {stale}, built from an older source" in run.stdout
    assert not stale.exists()


@pytest.mark.parametrize("steps", ["tests", "install,atention"])
def test_the_gpu_session_refuses_a_step_it_does_not_know_before_anything_runs(tmp_path, steps):
    """A misspelt step was skipped in silence: the session ended "all steps done" having run nothing."""
    run = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_session.sh")],
        env=os.environ | {"STEPS": steps, "OUT": str(tmp_path / "out")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    bad = steps.split(",")[-1]
    assert run.returncode == 2
    assert (
        f"gpu_session: error: STEPS: unknown step '{bad}'; the steps: install,test,attention,train,decode" in run.stderr
    )
    assert not (tmp_path / "out").exists()


def test_a_kernel_that_is_there_but_does_not_load_is_said_once_built(tmp_path, monkeypatch, caplog):
    """A kernel built against another torch failed to import and the slower path ran in silence; a machine that
    never built one (no compiler) stays quiet."""
    import structmt
    from structmt.attention import functional

    package = tmp_path / "structmt"
    (package / "attention").mkdir(parents=True)
    monkeypatch.setattr(functional, "__file__", str(package / "attention" / "functional.py"))
    monkeypatch.delattr(structmt, "_kernels", raising=False)
    monkeypatch.setitem(sys.modules, "structmt._kernels", None)  # the import fails
    with caplog.at_level("WARNING", logger="structmt"):
        assert functional._load_kernels() is None
    assert caplog.text == ""
    (package / "_kernels.cpython-311-x86_64-linux-gnu.so").write_bytes(b"built against another torch")
    with caplog.at_level("WARNING", logger="structmt"):
        assert functional._load_kernels() is None
    assert "C++ kernel _kernels.cpython-311-x86_64-linux-gnu.so does not load" in caplog.text
    assert "pip install --no-build-isolation --no-deps -e ." in caplog.text


def test_make_install_requires_the_kernel_the_tests_need(monkeypatch, capsys):
    """A kernel that failed to build passed make install (pip hid why) and failed make test later."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import check_install
    finally:
        sys.path.remove(str(REPO / "scripts"))
    monkeypatch.setitem(sys.modules, "structmt._kernels", None)
    assert check_install.main([]) == 0
    assert check_install.main(["--require-kernel"]) == 1
    err = capsys.readouterr().err
    assert "pip install -v --no-build-isolation --no-deps -e . shows why" in err
    assert "an isolated build does not see torch and skips it" in err  # the usual cause (plain pip install -e .)
    assert "--require-kernel" in (REPO / "Makefile").read_text()


def test_without_fairseq_the_attention_functions_import_and_check_install_says_what_to_install(tmp_path):
    """The README's functions need no fairseq; importing the package imported it (a bare ModuleNotFoundError), and
    check_install.py failed the same way, saying nothing of the fork to install or of --no-deps."""
    hide = (
        "import sys, importlib.machinery as m\n"
        "class Hide(m.PathFinder):\n"
        "    @classmethod\n"
        "    def find_spec(cls, name, path=None, target=None):\n"
        "        return None if name.split('.')[0] == 'fairseq' else m.PathFinder.find_spec(name, path, target)\n"
        "sys.meta_path = [Hide if f is m.PathFinder else f for f in sys.meta_path]\n"
    )
    use = (
        "import torch\n"
        "from structmt.attention import structured_attention\n"
        "q, k, v = torch.randn(3, 2, 4, 16, 32).unbind(0)\n"
        "out = structured_attention(q, k, v, window=3, rare_index=torch.tensor([[2, 9], [5, 14]]), causal=True)\n"
        "assert out.shape == (2, 4, 16, 32) and 'fairseq' not in sys.modules\n"
        "sys.path.insert(0, 'scripts')\n"
        "import check_install\n"
        "sys.exit(check_install.main([]))\n"
    )
    done = subprocess.run([sys.executable, "-c", hide + use], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("error: fairseq is not installed: env -u CUDA_HOME pip install --no-deps ")
    assert "Traceback" not in done.stderr


def _env_with(tmp_path: Path, packages: dict[str, str], pip: bool = True) -> Path:
    """A venv (made from this one, so its torch is not seen) whose site-packages hold ``packages`` (file → text):
    stand-ins for a cluster's torch and Triton that `import` finds."""
    venv = tmp_path / "cluster-env"
    subprocess.run([sys.executable, "-m", "venv", *([] if pip else ["--without-pip"]), venv], check=True)
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(subprocess.run([venv / "bin" / "python", "-c", code], capture_output=True, text=True).stdout.strip())
    for name, text in packages.items():
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_text(text)
    return venv / "bin" / "python"


def _wheelhouse(tmp_path: Path) -> Path:
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir(parents=True)
    (wheelhouse / "PYTHON_VERSION").write_text(f"{sys.version_info[0]}.{sys.version_info[1]}\n")
    return wheelhouse


TORCH = {"torch/__init__.py": "__version__ = '2.11.0+cu130'\n"}


def test_a_venv_made_from_the_venv_that_has_torch_sees_that_torch(tmp_path):
    """The docs' `source venv/bin/activate` then `--venv DIR`: the new venv saw the base Python's packages, not that
    venv's, and the script stopped saying torch was missing, leaving the empty venv behind."""
    extra = tmp_path / "cluster-extra"  # a folder that env's own .pth file adds (an editable install, say)
    extra.mkdir()
    (extra / "cluster_extra.py").write_text("")
    python = _env_with(tmp_path, TORCH | {"cluster.pth": f"{extra}\n"})
    new = tmp_path / "structmt-env"
    run = subprocess.run(
        ["bash", str(INSTALL), str(_wheelhouse(tmp_path)), "--python", str(python), "--venv", str(new)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "is itself a venv" in run.stdout and "torch 2.11.0+cu130" in run.stdout, run.stdout + run.stderr
    # it went on past the torch checks (to stop at a later one: no Triton, or the empty wheelhouse)
    assert run.returncode == 1 and "cannot import torch" not in run.stderr
    code = "import torch, cluster_extra; print(torch.__version__)"
    seen = subprocess.run([new / "bin" / "python", "-c", code], capture_output=True, text=True)
    assert seen.stdout == "2.11.0+cu130\n", seen.stderr
    # a --python without torch makes no venv
    bare = subprocess.run(
        [
            "bash",
            str(INSTALL),
            str(_wheelhouse(tmp_path / "x")),
            "--venv",
            str(tmp_path / "v2"),
            "--python",
            str(_env_with(tmp_path / "x", {}, pip=False)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bare.returncode == 1 and "cannot import torch, so a venv made from it would not either" in bare.stderr
    assert not (tmp_path / "v2").exists()


@pytest.mark.skipif(f"{sys.platform}-{os.uname().machine}" != "linux-x86_64", reason="Triton is required on it")
def test_a_triton_of_another_distribution_name_is_named_before_anything_is_installed(tmp_path):
    """ROCm's torch ships `triton` as pytorch-triton-rocm: step 2 stopped with pip's "No matching distribution"."""
    dist = "pytorch_triton_rocm-3.6.0.dist-info"
    python = _env_with(
        tmp_path,
        TORCH
        | {
            "triton/__init__.py": "__version__ = '3.6.0'\n",
            f"{dist}/METADATA": "Metadata-Version: 2.1\nName: pytorch-triton-rocm\nVersion: 3.6.0\n",
            f"{dist}/top_level.txt": "triton\n",
        },
    )
    run = subprocess.run(
        ["bash", str(INSTALL), str(_wheelhouse(tmp_path)), "--python", str(python)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1
    assert run.stderr.startswith(
        "install_offline: error: this environment's Triton module comes from pytorch-triton-rocm, not from the "
        "distribution 'triton'"
    ), run.stderr
    assert "installing into" in run.stdout and "Successfully" not in run.stdout  # checked, nothing installed


def test_every_place_that_installs_fairseq_names_one_version():
    """The Makefile, the scripts and the install guide each spell the fork's pin; an update must reach them all."""
    scripts = REPO / "scripts"
    paths = [
        REPO / "Makefile",
        *(scripts / n for n in ("install_offline.sh", "make_wheelhouse.sh", "check_install.py")),
    ]
    found = {
        p.name: set(re.findall(r"fairseq-fixed==([\d.]+)", p.read_text()))
        for p in [*paths, REPO / "docs" / "install.md"]
    }
    assert all(found.values()) and len(set().union(*found.values())) == 1, found


def test_an_existing_venv_is_checked_with_its_own_python_not_the_one_it_was_made_from(tmp_path):
    """Re-running with `--venv DIR` checked the Python version of `--python` (default python3) instead of DIR's."""
    venv = tmp_path / "made-earlier"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    other = tmp_path / "python3.9"  # the node's python3, of another version than the venv's
    other.write_text("#!/bin/sh\necho 3.9\n")
    other.chmod(0o755)
    run = subprocess.run(
        ["bash", str(INSTALL), str(_wheelhouse(tmp_path)), "--python", str(other), "--venv", str(venv)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1 and "Python 3.9" not in run.stderr
    assert f"{venv}/bin/python cannot import torch" in run.stderr  # the next check, on the venv's own Python
    (tmp_path / "wheelhouse" / "PYTHON_VERSION").write_text("3.99\n")  # a wheelhouse for another Python
    run = subprocess.run(
        ["bash", str(INSTALL), str(tmp_path / "wheelhouse"), "--python", str(other), "--venv", str(venv)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert run.returncode == 1 and f"but {venv}/bin/python is Python {here}: make wheelhouse PY={here}" in run.stderr


def test_check_install_says_when_the_gpu_cannot_run_the_triton_kernels(monkeypatch, capsys):
    """On a GPU older than Volta the Triton kernels are not used (``auto`` takes another path): said at install."""
    import types

    import torch

    from structmt.attention import triton_kernel

    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import check_install
    finally:
        sys.path.remove(str(REPO / "scripts"))
    monkeypatch.setattr(triton_kernel, "_kernels", lambda: types.SimpleNamespace(interpreted=False))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla P100-PCIE-16GB")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (6, 0))
    assert check_install.main([]) == 0
    assert (
        " (the Triton kernels are not used on this GPU: Tesla P100-PCIE-16GB is of compute capability 6.0; the "
        "backward's atomic adds need 7.0 or newer (Volta on))"
    ) in capsys.readouterr().out
