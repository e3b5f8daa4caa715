"""``structmt-prepare``: prepare a data set into a fairseq data-bin folder."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

from ..console import add_verbose_option, setup
from ..files import DataError, existing_dir, int_at_least
from .fetch import MULTI30K_ENV
from .prepare import MULTI30K_SPLITS, MULTI30K_VOCAB, WMT_VOCAB, PrepConfig, prepare_multi30k
from .wmt import RECIPES, load_manifest, prepare_wmt

DATASETS = ("multi30k_en_de", *RECIPES)


def test_sets(name: str) -> dict[str, str]:
    """fairseq test split → published test set name, for a data set."""
    if name == "multi30k_en_de":
        return {split: stem for split, stem in MULTI30K_SPLITS.items() if split.startswith("test")}
    return {"test": load_manifest(name)["test"]["name"]}


def wrong_source_option(
    name: str, mirror: str | None, base_url: str | None, spell: Callable[[str], str] = str
) -> str | None:
    """Why a data set given the other data set's source option (which it would ignore) is refused, or None;
    ``spell`` names an option (``mirror``, ``base_url``) as the caller's user writes it."""
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
    return None


def prepare_dataset(name: str, out_dir: Path, cfg: PrepConfig, base_url: str | None = None) -> Path:
    """Prepare ``name`` (one of :data:`DATASETS`) under ``out_dir``; returns the data-bin folder.

    Concurrent callers (sweep jobs) wait for each other: one prepares, the others find it done.
    """
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; choose from {', '.join(DATASETS)}")
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out_dir.parent / f".{out_dir.name}.lock")):
        if name == "multi30k_en_de":
            return prepare_multi30k(out_dir, cfg)
        return prepare_wmt(name, out_dir, cfg, base_url=base_url)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--data", default="multi30k_en_de", choices=DATASETS)
    p.add_argument(
        "--vocab-size",
        type=int_at_least(1),
        default=None,
        help=f"SentencePiece vocabulary ({MULTI30K_VOCAB} Multi30k, {WMT_VOCAB} WMT)",
    )
    p.add_argument("--max-train-lines", type=int_at_least(0), default=0, help="0 = all")
    p.add_argument(
        "--mirror",
        type=existing_dir,
        default=None,
        help=f"Multi30k: folder with the .gz files (or set ${MULTI30K_ENV})",
    )
    p.add_argument("--base-url", default=None, help="WMT: a mirror serving the training archives by file name")
    add_verbose_option(p)
    a = p.parse_args(argv)
    mirror = str(a.mirror) if a.mirror else None
    misplaced = wrong_source_option(a.data, mirror, a.base_url, lambda o: "--" + o.replace("_", "-"))
    if misplaced:
        p.error(misplaced)
    setup(a.verbose)
    if a.data == "multi30k_en_de":
        src, tgt, vocab = "en", "de", MULTI30K_VOCAB
    else:
        manifest = load_manifest(a.data)
        src, tgt, vocab = manifest["src"], manifest["tgt"], WMT_VOCAB
    cfg = PrepConfig(
        src=src,
        tgt=tgt,
        vocab_size=a.vocab_size or vocab,
        max_train_lines=a.max_train_lines,
        mirror=mirror,
    )
    try:
        out = prepare_dataset(a.data, a.out_dir, cfg, a.base_url)
    except DataError as err:
        sys.exit(f"error: {err}")
    print(out)


if __name__ == "__main__":
    main()
