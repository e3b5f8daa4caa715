"""Shared fixtures: small fairseq tasks and models built the way fairseq-train builds them."""

from pathlib import Path

import pytest
import torch
from fairseq import options, tasks
from fairseq.data import Dictionary

REPO = Path(__file__).resolve().parents[1]


def make_dict_dir(tmp: Path, size: int = 40) -> Path:
    d = Dictionary()
    for i in range(size):
        d.add_symbol(f"w{i}", n=1000 - 20 * i)  # w0 most frequent, w{size-1} rarest
    for lang in ("en", "de"):
        d.save(str(tmp / f"dict.{lang}.txt"))
    return tmp


def build(data_dir: Path, arch: str, *extra: str, seed: int = 0):
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(
        parser,
        [
            str(data_dir),
            "--user-dir",
            str(REPO / "structmt"),
            "--arch",
            arch,
            "--task",
            "translation",
            "-s",
            "en",
            "-t",
            "de",
            "--dropout",
            "0",
            *extra,
        ],
    )
    task = tasks.setup_task(args)
    torch.manual_seed(seed)
    return task, task.build_model(args).eval()


@pytest.fixture
def dict_dir(tmp_path):
    return make_dict_dir(tmp_path)
