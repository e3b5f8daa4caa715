"""``structmt-bench train``: training target tokens/s of the structured model over the
dense one (same architecture size, same batches), measured one after the other in one
run, on Multi30k sentences and on pseudo-documents (consecutive Multi30k sentences
concatenated to a target length)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

from ..data.files import write_text_atomic
from ..data.prepare import PrepConfig, binarize, prepare_multi30k
from ..paths import REPO_ROOT
from ..pipeline.steps import train


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
    bin_dir: Path,
    work: Path,
    updates: int,
    max_tokens: int,
    max_positions: int,
    extra: tuple[str, ...] = (),
    rounds: int = 1,
) -> dict[str, Any]:
    """Target tokens/s of dense and structured on the same data, alternating ``rounds`` times
    (``extra``: more fairseq-train options for both).  Reports the best round of each model and
    the median of the per-round ratios."""
    per_round = [_one_round(bin_dir, work, updates, max_tokens, max_positions, extra) for _ in range(rounds)]
    ratios = [r["structured"] / r["dense"] for r in per_round]
    return {
        "dense": max(r["dense"] for r in per_round),
        "structured": max(r["structured"] for r in per_round),
        "ratio": statistics.median(ratios),
        "ratios": ratios,
    }


def _one_round(
    bin_dir: Path, work: Path, updates: int, max_tokens: int, max_positions: int, extra: tuple[str, ...]
) -> dict[str, float]:
    rates = {}
    for name, arch in (("dense", "transformer_multi30k"), ("structured", "structured_transformer_multi30k")):
        run_dir = work / name
        shutil.rmtree(run_dir, ignore_errors=True)  # a fresh log: the rate is read from it
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
    return rates


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--updates", type=int, default=60)
    p.add_argument("--doc-tokens", default="512,2048")
    p.add_argument("--rounds", type=int, default=2, help="alternate dense and structured this many times")
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
    results = {"multi30k": measure(data, a.work / "sentences", a.updates, 4096, 1024, rounds=a.rounds)}
    for n in (int(x) for x in a.doc_tokens.split(",")):
        docs = pseudo_documents(data.parent / "spm", a.work / f"docs{n}", n)
        results[f"docs{n}"] = measure(docs, a.work / f"docs{n}-runs", a.updates, 2 * n + 512, 4 * n, rounds=a.rounds)
    if a.no_cross_too:
        n = max(int(x) for x in a.doc_tokens.split(","))
        docs = pseudo_documents(data.parent / "spm", a.work / f"docs{n}", n)
        results[f"docs{n}_no_cross"] = measure(
            docs, a.work / f"docs{n}-no-cross-runs", a.updates, 2 * n + 512, 4 * n, ("--no-cross-attention",), a.rounds
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
            f"{name:18s} dense {r['dense']:6.0f} tok/s  structured {r['structured']:6.0f} tok/s (best of "
            f"{a.rounds})  ratio {r['ratio']:.2f} (median; rounds {', '.join(f'{x:.2f}' for x in r['ratios'])})"
        )


if __name__ == "__main__":
    main()
