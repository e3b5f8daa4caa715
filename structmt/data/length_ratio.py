"""``python -m structmt.data.length_ratio DATA_BIN``: source and target pieces of a split
(with end-of-sentence, as fairseq counts them) and their ratio, the slope for
``--struct-cross-slope``."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..files import data_bin


def piece_totals(bin_dir: Path, split: str, src: str, tgt: str) -> tuple[int, int]:
    """Total source and target tokens of ``split`` in a fairseq data-bin."""
    from fairseq.data import data_utils

    totals = []
    for lang in (src, tgt):
        prefix = bin_dir / f"{split}.{src}-{tgt}.{lang}"
        dataset = data_utils.load_indexed_dataset(str(prefix), None)
        if dataset is None:
            held = sorted({f.name.rsplit(".", 2)[0] for f in bin_dir.glob("*.*-*.*.bin")})
            raise SystemExit(
                f"error: {bin_dir} holds no {split}.{src}-{tgt} ({prefix.name}.bin/.idx; --split {split}, --src {src}, "
                f"--tgt {tgt}); it holds: {', '.join(held) or 'no binarized split (give a structmt-prepare data-bin)'}"
            )
        totals.append(int(dataset.sizes.sum()))  # read while the dataset (its memory map) is alive
    return totals[0], totals[1]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m structmt.data.length_ratio", description=__doc__)
    p.add_argument("data_bin", type=data_bin, help="a data-bin written by structmt-prepare (its bin/ folder)")
    p.add_argument("--split", default="train", help="the split to count (default: train)")
    p.add_argument("--src", default="en", help="source language (default: en)")
    p.add_argument("--tgt", default="de", help="target language (default: de)")
    a = p.parse_args(argv)
    s, t = piece_totals(Path(a.data_bin), a.split, a.src, a.tgt)
    print(f"{a.split}: {s} {a.src} / {t} {a.tgt} tokens; --struct-cross-slope {s / t:.2f}")


if __name__ == "__main__":
    main()
