"""scripts/install_offline.sh: what it refuses before it installs anything, and the versions it asks for
agree with pyproject.toml (the one place the supported ranges are written)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
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


@pytest.mark.parametrize("version", ["2.3.1+cu121", "3.0.0", "1.13.1"])
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
        f"install_offline: error: torch {version} is outside structmt's range ({torch_requirement[len('torch') :]})"
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
        # -n prints the commands; -o leaves the install stamp as it is, so only the target's own command shows
        out = subprocess.run(
            ["make", "-n", "-o", ".venv/.installed", target, *args], cwd=REPO, env=env, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
        assert f"structmt.pipeline.recipes {target} --seeds {expected}\n" in out.stdout
