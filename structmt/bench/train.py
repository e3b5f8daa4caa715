"""``structmt-bench train``: training target tokens/s of the structured model over the
dense one (same architecture size, same batches), measured one after the other in one
run, on Multi30k sentences and on pseudo-documents (consecutive Multi30k sentences
concatenated to a target length)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..data.files import write_text_atomic
from ..data.prepare import PrepConfig, binarize, prepare_multi30k
from ..pipeline.steps import train

REPO_ROOT = Path(__file__).resolve().parents[2]


def pseudo_documents(spm_dir: Path, out_dir: Path, tokens: int, src: str = "en", tgt: str = "de") -> Path:
    """Concatenate consecutive SentencePiece-encoded sentence pairs until the source reaches ``tokens`` pieces."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for split in ("train", "valid"):
        s_lines = (spm_dir / f"{split}.{src}").read_text(encoding="utf-8").splitlines()
        t_lines = (spm_dir / f"{split}.{tgt}").read_text(encoding="utf-8").splitlines()
        docs_s, docs_t, cur_s, cur_t = [], [], [], []
        for s, t in zip(s_lines, t_lines, strict=True):
            cur_s.append(s)
            cur_t.append(t)
            if sum(len(x.split()) for x in cur_s) >= tokens:
                docs_s.append(" ".join(cur_s))
                docs_t.append(" ".join(cur_t))
                cur_s, cur_t = [], []
        (out_dir / f"{split}.{src}").write_text("".join(d + "\n" for d in docs_s), encoding="utf-8")
        (out_dir / f"{split}.{tgt}").write_text("".join(d + "\n" for d in docs_t), encoding="utf-8")
    bin_dir = out_dir / "bin"
    if not (bin_dir / f"train.{src}-{tgt}.{src}.bin").exists():
        binarize(out_dir, bin_dir, src, tgt, ["train", "valid"])
    return bin_dir


def measure(
    bin_dir: Path, work: Path, updates: int, max_tokens: int, max_positions: int, extra: tuple[str, ...] = ()
) -> dict[str, float]:
    """Target tokens/s of dense and structured on the same data (``extra``: more fairseq-train options for both)."""
    rates = {}
    for name, arch in (("dense", "transformer_multi30k"), ("structured", "structured_transformer_multi30k")):
        run_dir = work / name
        args = [
            "--optimizer",
            "adam",
            "--lr",
            "0.0005",
            "--max-tokens",
            str(max_tokens),
            "--max-update",
            str(updates),
            "--criterion",
            "label_smoothed_cross_entropy",
            "--label-smoothing",
            "0.1",
            "--seed",
            "1",
            "--num-workers",
            "0",
            "--disable-validation",
            "--no-save",
            "--log-interval",
            "10",
            "--max-source-positions",
            str(max_positions),
            "--max-target-positions",
            str(max_positions),
            "--required-batch-size-multiple",
            "1",
            "--skip-invalid-size-inputs-valid-test",
            *extra,
        ]
        result = train(bin_dir, run_dir, arch, args, env=dict(os.environ))
        rates[name] = result.tokens_per_second
    rates["ratio"] = rates["structured"] / rates["dense"]
    return rates


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--updates", type=int, default=60)
    p.add_argument("--doc-tokens", default="512,2048")
    p.add_argument(
        "--no-cross-too",
        action="store_true",
        help="also measure the longest documents with decoders without cross-attention (which both models "
        "keep dense), to isolate what the self-attention structure saves",
    )
    p.add_argument("--work", type=Path, default=REPO_ROOT / "runs" / "bench_train")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "results" / "bench_train.json")
    a = p.parse_args(argv)
    data = prepare_multi30k(REPO_ROOT / "runs" / "data" / "multi30k_en_de", PrepConfig())
    results = {"multi30k": measure(data, a.work / "sentences", a.updates, 4096, 1024)}
    for n in (int(x) for x in a.doc_tokens.split(",")):
        docs = pseudo_documents(data.parent / "spm", a.work / f"docs{n}", n)
        results[f"docs{n}"] = measure(docs, a.work / f"docs{n}-runs", a.updates, 2 * n + 512, 4 * n)
    if a.no_cross_too:
        n = max(int(x) for x in a.doc_tokens.split(","))
        results[f"docs{n}_no_cross"] = measure(
            docs, a.work / f"docs{n}-no-cross-runs", a.updates, 2 * n + 512, 4 * n, ("--no-cross-attention",)
        )
    from .attention import machine

    record = {
        "command": "structmt-bench train " + " ".join(argv if argv is not None else sys.argv[2:]),
        "machine": machine(),
        "updates": a.updates,
        "results": results,
    }
    write_text_atomic(a.out, json.dumps(record, indent=2) + "\n")
    for name, r in results.items():
        print(
            f"{name:10s} dense {r['dense']:8.0f} tok/s  structured {r['structured']:8.0f} tok/s  ratio {r['ratio']:.2f}"
        )


if __name__ == "__main__":
    main()
