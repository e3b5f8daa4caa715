"""``structmt-bench decode``: beam-search sentences/s of a dense and a structured
checkpoint on the same test set (measured one after the other in one run), and
the decoder self-attention cache size against the output length."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..data.files import write_text_atomic
from ..paths import REPO_ROOT


def sentences_per_second(checkpoint: Path, data_dir: Path, subset: str, beam: int, batch_size: int) -> dict[str, Any]:
    from fairseq.dataclass.configs import GenerationConfig

    from ..analysis.extract import load

    model, task = load(checkpoint, data_dir)
    task.load_dataset(subset)
    generator = task.build_generator([model], GenerationConfig(beam=beam, max_len_a=1.2, max_len_b=10))
    itr = task.get_batch_iterator(
        dataset=task.dataset(subset), max_sentences=batch_size, required_batch_size_multiple=1
    ).next_epoch_itr(shuffle=False)
    sentences, tokens, start = 0, 0, time.perf_counter()
    with torch.no_grad():
        for sample in itr:
            hypos = task.inference_step(generator, [model], sample)
            sentences += len(hypos)
            tokens += sum(len(h[0]["tokens"]) for h in hypos)
    seconds = time.perf_counter() - start
    return {
        "checkpoint": str(checkpoint),
        "sentences": sentences,
        "output_tokens": tokens,
        "seconds": seconds,
        "sentences_per_s": sentences / seconds,
    }


def cache_sizes(checkpoint: Path, data_dir: Path, lengths: list[int]) -> dict[int, int]:
    """Cached decoder self-attention key vectors per sequence and head, summed over layers, after ``L`` steps."""
    from ..analysis.extract import load

    model, task = load(checkpoint, data_dir)
    dictionary = task.target_dictionary
    src = torch.full((1, 12), dictionary.index("▁a") if dictionary.index("▁a") != dictionary.unk() else 10)
    src[0, -1] = dictionary.eos()
    enc = model.encoder(src, src_lengths=torch.tensor([12]))
    out = {}
    with torch.no_grad():
        for length in lengths:
            state: dict = {}
            tokens = torch.full((1, length), dictionary.eos())
            tokens[0, 1:] = torch.randint(dictionary.nspecial, len(dictionary), (length - 1,))
            for t in range(length):
                model.decoder.forward(tokens[:, : t + 1], encoder_out=enc, incremental_state=state)
            total = 0
            for layer in model.decoder.layers:
                buf = layer.self_attn._get_input_buffer(state)
                total += sum(v.size(-2) for k, v in buf.items() if k.endswith("key") and v is not None and v.dim() == 4)
            out[length] = total
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dense", type=Path, required=True, help="dense checkpoint")
    p.add_argument("--structured", type=Path, required=True, help="structured checkpoint")
    p.add_argument("--data", type=Path, required=True, help="data-bin both were trained on")
    p.add_argument("--subset", default="test")
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3, help="alternate dense and structured this many times")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "results" / "bench_decode.json")
    a = p.parse_args(argv)
    rounds = []
    for _ in range(a.repeats):  # alternating spreads slow phases of a shared machine over both
        dense = sentences_per_second(a.dense, a.data, a.subset, a.beam, a.batch_size)
        structured = sentences_per_second(a.structured, a.data, a.subset, a.beam, a.batch_size)
        rounds.append({"dense": dense, "structured": structured})
    ratios = [r["structured"]["sentences_per_s"] / r["dense"]["sentences_per_s"] for r in rounds]
    best = {name: max((r[name] for r in rounds), key=lambda x: x["sentences_per_s"]) for name in rounds[0]}
    dense, structured = best["dense"], best["structured"]
    lengths = [8, 32, 128, 256]
    caches = {"dense": cache_sizes(a.dense, a.data, lengths), "structured": cache_sizes(a.structured, a.data, lengths)}
    from .attention import machine

    result = {
        "command": "structmt-bench decode " + " ".join(str(x) for x in (argv if argv is not None else sys.argv[2:])),
        "machine": machine(),
        "dense": dense,
        "structured": structured,
        "ratio": statistics.median(ratios),
        "ratios": ratios,
        "cache_keys_by_length": caches,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(a.out, json.dumps(result, indent=2) + "\n")
    print(
        f"dense {dense['sentences_per_s']:.1f} sent/s, structured {structured['sentences_per_s']:.1f} sent/s "
        f"(best of {a.repeats}); ratio structured / dense, median of rounds: {result['ratio']:.2f} "
        f"({', '.join(f'{r:.2f}' for r in ratios)})"
    )
    for name, sizes in caches.items():
        print(f"{name:10s} cached keys per head after L steps: " + ", ".join(f"L={k}: {v}" for k, v in sizes.items()))


if __name__ == "__main__":
    main()
