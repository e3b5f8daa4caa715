"""Shared fixtures: small fairseq tasks and models built the way fairseq-train builds them."""

import importlib.metadata
import importlib.util
import os
import shutil
from pathlib import Path

import pytest
import torch

import structmt  # noqa: F401  (before fairseq: it imports fairseq without the logging.basicConfig its modules call)

# isort: split
from fairseq import options, tasks
from fairseq.data import Dictionary

from structmt.attention.triton_kernel import TritonTooOld, check_triton_version

REPO = Path(__file__).resolve().parents[1]
#: the fairseq task of every test model: translation en→de
TASK = ["--task", "translation", "-s", "en", "-t", "de"]


def _triton_usable() -> bool:
    """Triton is installed and new enough for structmt's kernels.  Read from its metadata, not imported: triton
    imported before test_triton_kernel.py sets TRITON_INTERPRET would define its library functions for the GPU."""
    if importlib.util.find_spec("triton") is None:
        return False
    try:
        check_triton_version(importlib.metadata.version("triton"))
    except importlib.metadata.PackageNotFoundError:  # another distribution's triton (pytorch-triton): untested here
        return False
    except TritonTooOld:
        return False
    return True


#: whether the Triton kernels' tests can run here (a GPU or Triton's interpreter)
TRITON_USABLE = _triton_usable()


@pytest.fixture(autouse=True)
def _a_user_without_wandb_settings(monkeypatch, tmp_path_factory):
    """Every test runs as a user without W&B settings or credentials (no ``WANDB_*`` variable, no netrc entry:
    W&B's mode is offline), in a process where online logging has not failed before."""
    from structmt.pipeline import tracking

    for key in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("NETRC", str(tmp_path_factory.getbasetemp() / "no-netrc"))
    monkeypatch.setattr(tracking, "_online_failed", [])


@pytest.fixture(autouse=True)
def _a_process_where_no_download_failed_before(monkeypatch):
    """fetch remembers a failed download for the process (it is not tried again at once): not across tests."""
    from structmt.data import fetch

    monkeypatch.setattr(fetch, "_FAILED_DOWNLOADS", {})


def copy_benchmark_inputs(folder: Path) -> Path:
    """A results folder ``folder/results`` holding what the committed BENCHMARKS.md is rendered from: the
    benchmark records, the GPU folder and the leaderboard (its cross-band verdicts quote the BLEU)."""
    results = folder / "results"
    results.mkdir()
    for name in ("bench_attention.json", "bench_train.json", "bench_decode.json", "leaderboard.csv"):
        shutil.copy(REPO / "results" / name, results / name)
    shutil.copytree(REPO / "results" / "gpu", results / "gpu")
    return results


def make_dict_dir(tmp: Path, size: int = 40) -> Path:
    d = Dictionary()
    for i in range(size):
        d.add_symbol(f"w{i}", n=1000 - 20 * i)  # w0 most frequent, w{size-1} rarest
    for lang in ("en", "de"):
        d.save(str(tmp / f"dict.{lang}.txt"))
    return tmp


def write_split(data_dir: Path, subset: str = "test", pair: tuple[str, str] = ("en", "de")) -> Path:
    """A real binarized split of two sentences in ``data_dir`` (its files as fairseq-preprocess writes them), for
    the commands that check a split before they load a model."""
    from fairseq.data import indexed_dataset

    for lang in pair:
        prefix = data_dir / f"{subset}.{pair[0]}-{pair[1]}.{lang}"
        builder = indexed_dataset.make_builder(f"{prefix}.bin", "mmap", vocab_size=100)
        for ids in ([4, 5, 2], [6, 2]):
            builder.add_item(torch.tensor(ids))
        builder.finalize(f"{prefix}.idx")
    return data_dir


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
            *TASK,
            "--dropout",
            "0",
            *extra,
        ],
    )
    task = tasks.setup_task(args)
    torch.manual_seed(seed)
    return task, task.build_model(args).eval()


@pytest.fixture(scope="session")
def data_bin(tmp_path_factory) -> Path:
    """A binarized slice of the embedded Multi30k (1500 training pairs, 60 per test set)."""
    from structmt.data.prepare import PrepConfig, prepare_multi30k

    out = tmp_path_factory.mktemp("m30k")
    return prepare_multi30k(out, PrepConfig(vocab_size=500, max_train_lines=1500, max_eval_lines=60))


@pytest.fixture
def dict_dir(tmp_path):
    return make_dict_dir(tmp_path)


def attention_with_grads(structure, q, k, v, pad, sets, impl, loss=lambda out: out.pow(2).sum()):
    """Output, dense weights and (dq, dk, dv) of ``structured_attention_with_weights`` on fresh leaf copies of
    q, k, v."""
    from structmt.attention import structured_attention_with_weights

    qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
    out, w = structured_attention_with_weights(
        qq, kk, vv, window=structure.window, rare_index=sets, key_padding_mask=pad, impl=impl, structure=structure
    )
    loss(out).backward()
    return out, w, qq.grad, kk.grad, vv.grad


def assert_close_all(a, b, tol=1e-5):
    for x, y in zip(a, b, strict=True):
        assert (x - y).abs().max() <= tol


def assert_dropped(kept, dropped, p: float) -> None:
    """``dropped`` is ``kept`` under attention dropout of rate ``p``: every weight either zeroed or scaled by
    1 / (1 - p), about a fraction ``p`` of the nonzero ones zeroed (many draws: 4 standard deviations), and no
    weight where ``kept`` has none. (Read off outputs whose value vectors are one-hot: each output row is then
    its query's attention weights.)"""
    import torch

    nonzero = kept != 0
    assert torch.all(dropped[~nonzero] == 0)
    zeroed = dropped[nonzero] == 0
    torch.testing.assert_close(dropped[nonzero][~zeroed], kept[nonzero][~zeroed] / (1 - p))
    n = int(nonzero.sum())
    assert n >= 1000, "too few weights to tell the rate"
    assert abs(zeroed.float().mean().item() - p) <= 4 * (p * (1 - p) / n) ** 0.5
