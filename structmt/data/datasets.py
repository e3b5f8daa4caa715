"""The data sets the pipeline prepares: their names, their test sets, and preparing one (under a lock)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from filelock import FileLock

from ..files import DataError
from .prepare import MULTI30K_SPLITS, MULTI30K_VOCAB, WMT_VOCAB, PrepConfig, check_data_folder, prepare_multi30k
from .wmt import RECIPES, load_manifest, prepare_wmt

DATASETS = ("multi30k_en_de", *RECIPES)
#: the URL schemes urllib downloads a base_url's archives with
URL_SCHEMES = ("https", "http", "ftp", "file")


def default_vocab(name: str) -> int:
    """The joint SentencePiece vocabulary data set ``name`` is prepared with unless another is asked for."""
    return MULTI30K_VOCAB if name == "multi30k_en_de" else WMT_VOCAB


def test_sets(name: str) -> dict[str, str]:
    """fairseq test split → published test set name, for a data set."""
    if name == "multi30k_en_de":
        return {split: stem for split, stem in MULTI30K_SPLITS.items() if split.startswith("test")}
    return {"test": load_manifest(name)["test"]["name"]}


def wrong_source_option(
    name: str, mirror: str | None, base_url: str | None, spell: Callable[[str], str] = str
) -> str | None:
    """Why a data set given the other data set's source option (which it would ignore), or a ``base_url``
    that is no URL, is refused, or None; ``spell`` names an option (``mirror``, ``base_url``) as the caller's
    user writes it."""
    if name == "multi30k_en_de" and base_url:
        return (
            f"{spell('base_url')}={base_url!r} serves the WMT recipes' archives; Multi30k takes "
            f"{spell('mirror')} (a folder of its .gz files)"
        )
    if name != "multi30k_en_de" and mirror:
        return (
            f"{spell('mirror')}={mirror!r} is a folder of Multi30k files; {name} takes {spell('base_url')} "
            "(a server of its archives)"
        )
    if base_url and urlsplit(base_url).scheme not in URL_SCHEMES:
        return (
            f"{spell('base_url')}={base_url!r} is no URL; give the scheme as well "
            f"({', '.join(f'{scheme}://' for scheme in URL_SCHEMES)})"
        )
    return None


def prepare_dataset(name: str, out_dir: Path, cfg: PrepConfig, base_url: str | None = None) -> Path:
    """Prepare ``name`` (one of :data:`DATASETS`) under ``out_dir``; returns the data-bin folder.

    Concurrent callers (sweep jobs) wait for each other: one prepares, the others find it done.
    """
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; choose from {', '.join(DATASETS)}")
    out_dir = Path(out_dir)
    check_data_folder(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out_dir.parent / f".{out_dir.name}.lock")):
        if name == "multi30k_en_de":
            return prepare_multi30k(out_dir, cfg)
        return prepare_wmt(name, out_dir, cfg, base_url=base_url)
