"""Draw the allowed keys of structured heads for one 16-token sentence: docs/structure.png.

    .venv/bin/python scripts/draw_structure.py [--out docs/structure.png]

Every mask comes from the project's own definition of the structure
(``structmt.attention.structure``: ``Structure.from_roles``, ``rare_sets``,
``make_supports``, ``Supports.mask_mod``, ``CandidateLayout``), the same
predicates the kernels, decoding and the analysis use; nothing is re-derived here.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

# importing structmt imports fairseq, which logs at DEBUG level: keep matplotlib's font search quiet
logging.getLogger("matplotlib").setLevel(logging.WARNING)

import torch  # noqa: E402

from structmt.attention.structure import CandidateLayout, Structure, make_supports, rare_sets, rarity_keys  # noqa: E402
from structmt.figures import pyplot  # noqa: E402
from structmt.files import atomic_path  # noqa: E402
from structmt.paths import REPO_ROOT  # noqa: E402

# A Multi30k training sentence (train.en), split into 16 tokens.
SENTENCE = "A bearded traveler in a red shirt sitting in a car and reading a map .".split()
# How often each (lower-cased) word occurs in the Multi30k training English (train.en, 29,000
# sentences). The model counts SentencePiece pieces in fairseq's dict.txt instead; words keep
# the figure readable. The r rarest tokens here are "traveler" (1) and "map" (21).
COUNTS = {
    "a": 49172, "bearded": 70, "traveler": 1, "in": 14886, "red": 1755, "shirt": 2324, "sitting": 1743,
    "car": 327, "and": 7379, "reading": 206, "map": 21, ".": 27657,
}  # fmt: skip
WINDOW, POS_WINDOW, RARE = 3, 1, 2

NOT_ALLOWED, BAND, RARE_COLUMN = 0, 1, 2


def token_ids() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(1, T)`` token ids, ``(V,)`` counts and ``(V,)`` never-rare flags of the sentence."""
    vocab = sorted(COUNTS)
    ids = torch.tensor([[vocab.index(w.lower()) for w in SENTENCE]])
    counts = torch.tensor([COUNTS[w] for w in vocab])
    return ids, counts, torch.zeros(len(vocab), dtype=torch.bool)


def head_masks(structure: Structure) -> torch.Tensor:
    """``(H, T, T)`` codes per head: 0 not allowed, 1 in the band, 2 a rare column."""
    ids, counts, never_rare = token_ids()
    T = ids.size(1)
    sets = rare_sets(rarity_keys(ids, counts, never_rare), structure.rare, structure.causal)
    supports = make_supports(
        structure, num_keys=T, rare_sets=sets, key_padding_mask=None, sink_pos=None, device=torch.device("cpu")
    )
    H = structure.num_heads
    b = torch.zeros(1, 1, 1, 1, dtype=torch.long)
    h = torch.arange(H).view(1, H, 1, 1)
    q = torch.arange(T).view(1, 1, T, 1)
    kv = torch.arange(T).view(1, 1, 1, T)
    allowed = supports.mask_mod()(b, h, q, kv).expand(1, H, T, T)
    in_band = supports.band(b, h, q, kv).expand(1, H, T, T)
    in_rare = supports.rare(b, h, q, kv).expand(1, H, T, T)
    if not torch.equal(allowed, in_band | in_rare):
        raise AssertionError("the support is not the union of its band and rare groups")
    codes = torch.full((1, H, T, T), NOT_ALLOWED)
    codes[in_band] = BAND
    codes[in_rare] = RARE_COLUMN
    return codes[0]


def panels() -> tuple[list[tuple[str, torch.Tensor]], tuple[CandidateLayout, CandidateLayout]]:
    """``(title, (T, T) codes)`` of the heads drawn, and the candidate layouts of both blocks."""
    encoder = Structure.from_roles(["positional", "syntactic", "rare"], window=WINDOW, pos_window=POS_WINDOW, rare=RARE)
    decoder = Structure.from_roles(["rare"], window=WINDOW, pos_window=POS_WINDOW, rare=RARE, causal=True)
    enc, dec = head_masks(encoder), head_masks(decoder)
    enc_slots, dec_slots = CandidateLayout.of(encoder), CandidateLayout.of(decoder)
    return [
        (f"encoder, positional head\nband w={POS_WINDOW}", enc[0]),
        (f"encoder, syntactic head\nband w={WINDOW}", enc[1]),
        (f"encoder, rare-token head\nband w={WINDOW} + r={RARE} rarest columns", enc[2]),
        (f"decoder (causal), rare-token head\nw={WINDOW}, r={RARE} rarest of each prefix", dec[0]),
    ], (enc_slots, dec_slots)


def draw(out: Path) -> None:
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    plt = pyplot()
    heads, (enc_slots, dec_slots) = panels()
    cmap = ListedColormap(["#f4f4f4", "#3b6fb6", "#e08a1e"])
    fig, axes = plt.subplots(1, len(heads), figsize=(4.1 * len(heads), 5.0))
    T = len(SENTENCE)
    for ax, (title, codes) in zip(axes, heads, strict=True):
        ax.imshow(codes.numpy(), cmap=cmap, vmin=0, vmax=2, interpolation="nearest")
        ax.set_xticks(range(T), SENTENCE, rotation=90, fontsize=6)
        ax.set_yticks(range(T), SENTENCE, fontsize=6)
        ax.set_xticks([x - 0.5 for x in range(1, T)], minor=True)
        ax.set_yticks([y - 0.5 for y in range(1, T)], minor=True)
        ax.grid(which="minor", color="white", linewidth=0.5)
        ax.tick_params(which="minor", length=0)
        ax.set_xlabel("key", fontsize=8)
        ax.set_ylabel("query", fontsize=8)
        most = int((codes > 0).sum(-1).max())
        ax.set_title(f"{title}\n≤ {most} keys per query", fontsize=8)
    fig.legend(
        handles=[Patch(color=cmap(1), label="band"), Patch(color=cmap(2), label="rare-token column")],
        loc="lower center",
        ncol=2,
        fontsize=8,
        frameon=False,
    )
    fig.suptitle(
        "Allowed keys (Supports.mask_mod) of structured heads on a 16-token Multi30k sentence; "
        f"candidate slots per query: encoder {enc_slots.band}+{enc_slots.rare}, "
        f"decoder {dec_slots.band}+{dec_slots.rare} (band+rare, CandidateLayout)",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(out) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--out", type=Path, default=REPO_ROOT / "docs" / "structure.png", help="the PNG file to write (.png)"
    )
    out = p.parse_args(argv).out
    if out.suffix != ".png" or out.is_dir():
        p.error(f"--out {out}: give a file name ending in .png (the figure is written as PNG)")
    draw(out)


if __name__ == "__main__":
    main()
