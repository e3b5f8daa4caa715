"""``structmt-prepare``: prepare a data set into a fairseq data-bin folder."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from ..console import add_verbose_option, setup
from ..files import DataError, existing_dir, int_at_least
from ..paths import checkout_problem
from .datasets import DATASETS, default_vocab, prepare_dataset, wrong_source_option
from .fetch import MULTI30K_ENV
from .prepare import MULTI30K_VOCAB, WMT_VOCAB, PrepConfig
from .wmt import load_manifest


def main(argv: list[str] | None = None) -> None:
    if problem := checkout_problem("structmt-prepare", needs=("data",)):
        raise SystemExit(f"error: {problem}")
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument(
        "out_dir",
        type=Path,
        help="the data folder to write (the pipeline's: runs/data/DATA): raw/ and spm/ hold the text and the "
        "SentencePiece model, and out_dir/bin the fairseq data-bin (printed at the end) to give fairseq-train; "
        "downloads are kept in out_dir/../download, shared with the data folders beside it",
    )
    p.add_argument(
        "--data", default="multi30k_en_de", choices=DATASETS, help="the data set to prepare (default: multi30k_en_de)"
    )
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
        src, tgt = "en", "de"
    else:
        manifest = load_manifest(a.data)
        src, tgt = manifest["src"], manifest["tgt"]
    cfg = PrepConfig(
        src=src,
        tgt=tgt,
        vocab_size=a.vocab_size or default_vocab(a.data),
        max_train_lines=a.max_train_lines,
        mirror=mirror,
    )
    try:
        with contextlib.redirect_stdout(sys.stderr):  # its progress: stdout holds the result alone (BIN=$(...))
            out = prepare_dataset(a.data, a.out_dir, cfg, a.base_url)
    except DataError as err:
        sys.exit(f"error: {err}")
    print(out)


if __name__ == "__main__":
    main()
