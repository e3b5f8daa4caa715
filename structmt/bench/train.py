"""``structmt-bench train``: training target tokens/s of the structured model over the
dense one (same architecture size, same batches), measured one after the other in one
run, on Multi30k sentences and on pseudo-documents (consecutive Multi30k sentences
concatenated to a target length).

Both sides pay the same start-up: every model first trains untimed for ``--warmup-updates``
updates, and the order of the models reverses every round, so dense is not always the one that
runs first (:func:`~structmt.bench.common.side_by_side`)."""

from __future__ import annotations

import json
import os
import shutil
import statistics
from pathlib import Path
from typing import Any

from ..attention.options import StructureConfig
from ..console import setup
from ..data.datasets import prepare_dataset
from ..data.prepare import PrepConfig, binarize, refuse_foreign_files
from ..fairseq_cli import train
from ..files import DataError, int_at_least, write_text_atomic
from ..paths import RESULTS_DIR, RUNS_DIR, DataFolder
from ..provenance import machine
from .common import (
    add_old_name,
    command_line,
    command_parser,
    output_file,
    positive_float,
    positive_ints,
    replaces,
    side_by_side,
)


def pseudo_documents(spm_dir: Path, out_dir: Path, tokens: int, src: str = "en", tgt: str = "de") -> Path:
    """Concatenate consecutive SentencePiece-encoded sentence pairs until the source reaches ``tokens`` pieces
    (the pieces left over at the end of a split, fewer than ``tokens``, are dropped). A split too short for one
    such document is a ``DataError`` naming ``--doc-tokens``; one whose two sides differ in lines, naming both."""
    out_dir.mkdir(parents=True, exist_ok=True)
    texts: dict[Path, str] = {}
    for split in ("train", "valid"):
        s_lines = (spm_dir / f"{split}.{src}").read_text(encoding="utf-8").splitlines()
        t_lines = (spm_dir / f"{split}.{tgt}").read_text(encoding="utf-8").splitlines()
        if len(s_lines) != len(t_lines):  # a file changed by hand: zip below would name neither file
            raise DataError(
                f"{spm_dir / f'{split}.{src}'} has {len(s_lines)} lines, {spm_dir / f'{split}.{tgt}'} "
                f"{len(t_lines)}: not sentence pairs; delete {spm_dir.parent} and run again (it is prepared anew)"
            )
        docs_s, docs_t, cur_s, cur_t, pieces = [], [], [], [], 0
        for s, t in zip(s_lines, t_lines, strict=True):
            cur_s.append(s)
            cur_t.append(t)
            pieces += len(s.split())
            if pieces >= tokens:
                docs_s.append(" ".join(cur_s))
                docs_t.append(" ".join(cur_t))
                cur_s, cur_t, pieces = [], [], 0
        if not docs_s:
            total = sum(len(x.split()) for x in s_lines)
            raise DataError(
                f"--doc-tokens {tokens}: the {split} split has {total} source pieces in all, too few for one "
                f"pseudo-document of {tokens}; choose a smaller --doc-tokens"
            )
        texts[out_dir / f"{split}.{src}"] = "".join(d + "\n" for d in docs_s)
        texts[out_dir / f"{split}.{tgt}"] = "".join(d + "\n" for d in docs_t)
    # binarized again whenever the documents change (data prepared again, another SentencePiece model): a kept
    # data-bin of the old ones would train on other token ids
    changed = [p for p, text in texts.items() if not p.is_file() or p.read_text(encoding="utf-8") != text]
    bin_dir = out_dir / "bin"
    if changed:  # first: a process killed before binarize leaves no data-bin to pass for the new documents'
        refuse_foreign_files(bin_dir)
        shutil.rmtree(bin_dir, ignore_errors=True)
    for path in changed:
        write_text_atomic(path, texts[path])
    if changed or not (bin_dir / f"train.{src}-{tgt}.{src}.bin").exists():
        binarize(out_dir, bin_dir, src, tgt, ["train", "valid"])
    return bin_dir


#: model name → (arch, extra fairseq-train options) of the compared models; "dense" is the baseline
Variants = dict[str, tuple[str, tuple[str, ...]]]
STRUCTURED: Variants = {"structured": ("structured_transformer_multi30k", ())}


def measure(
    bin_dir: Path,
    work: Path,
    updates: int,
    max_tokens: int,
    max_positions: int,
    extra: tuple[str, ...] = (),
    rounds: int = 1,
    variants: Variants = STRUCTURED,
    warmup_updates: int = 0,
) -> dict[str, dict[str, Any]]:
    """Target tokens/s of dense and each variant on the same data, ``rounds`` times (``extra``: more
    fairseq-train options for all), after an untimed run of ``warmup_updates`` updates of each model
    (none when 0), the order of the models reversed every other round.  One result per variant: the
    best round of dense and of the variant, and the median of the per-round ratios variant / dense."""
    models: Variants = {"dense": ("transformer_multi30k", ()), **variants}

    def rate(name: str, warmup: bool) -> float:
        if warmup and not warmup_updates:
            return 0.0
        arch, model_args = models[name]
        run_dir = work / (f"{name}-warmup" if warmup else name)
        n = warmup_updates if warmup else updates
        return _train_rate(bin_dir, run_dir, arch, n, max_tokens, max_positions, (*extra, *model_args))

    per_round = side_by_side(list(models), rounds, rate)
    out = {}
    for name in variants:
        ratios = [r[name] / r["dense"] for r in per_round]
        out[name] = {
            "dense": max(r["dense"] for r in per_round),
            "structured": max(r[name] for r in per_round),
            "ratio": statistics.median(ratios),
            "ratios": ratios,
        }
    return out


def _train_rate(
    bin_dir: Path,
    run_dir: Path,
    arch: str,
    updates: int,
    max_tokens: int,
    max_positions: int,
    extra: tuple[str, ...],
) -> float:
    """Target tokens/s of one fresh fairseq-train run of ``arch`` for ``updates`` updates."""
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
        # one process on one device: fairseq's default is every GPU the machine shows (data-parallel, its
        # tokens/s the sum over them), which the record's one device name would not say
        "--distributed-world-size",
        "1",
        *extra,
    ]
    result = train(bin_dir, run_dir, arch, args, env=dict(os.environ))
    if not result.tokens_per_second > 0:
        raise RuntimeError(
            f"{run_dir / 'train.log'}: fairseq-train logged no training rate for {arch} ({result.updates} updates): "
            "read the log's end; no ratio is computed from it"
        )
    return result.tokens_per_second


def main(argv: list[str] | None = None) -> None:
    p = command_parser("train", __doc__)
    p.add_argument(
        "--updates", type=int_at_least(2), default=60, help="timed updates of every run (fairseq gives no rate for 1)"
    )
    p.add_argument(
        "--doc-tokens",
        type=positive_ints,
        default="512,2048",
        help="comma-separated lengths N of the pseudo-documents (at least N source pieces each)",
    )
    p.add_argument(
        "--rounds",
        type=int_at_least(1),
        default=2,
        help="rounds of dense and structured (the order reverses every round)",
    )
    p.add_argument(
        "--warmup-updates",
        type=int_at_least(0),
        default=10,
        help="an untimed run of every model first, of this many updates (0: none)",
    )
    also_no_cross = p.add_argument(
        "--also-no-cross",
        action="store_true",
        help="also measure the longest documents with decoders without cross-attention, to isolate what "
        "the self-attention structure saves",
    )
    add_old_name(p, "--no-cross-too", also_no_cross)
    p.add_argument(
        "--cross-window",
        type=int_at_least(-1),
        default=32,
        help="also measure the structured model with structured cross-attention of this half-width "
        "(--struct-cross-window; -1: do not)",
    )
    p.add_argument(
        "--cross-slope", type=positive_float, default=0.97, help="its --struct-cross-slope (Multi30k en-de: 0.97)"
    )
    p.add_argument(
        "--work",
        type=Path,
        default=RUNS_DIR / "bench_train",
        help="folder for the runs' data and checkpoints (default: runs/bench_train)",
    )
    out = RESULTS_DIR / "bench_train.json"
    p.add_argument("--out", type=output_file, default=out, help="JSON file to write " + replaces(out))
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where fairseq-train runs")
    precision = p.add_mutually_exclusive_group()
    precision.add_argument("--bf16", action="store_true", help="--device cuda: train in bfloat16 (fairseq --bf16)")
    precision.add_argument(
        "--fp16", action="store_true", help="--device cuda: train in float16 (fairseq --fp16, dynamic loss scaling)"
    )
    a = p.parse_args(argv)
    setup(a.verbose)
    if (a.bf16 or a.fp16) and a.device != "cuda":
        p.error("--bf16 and --fp16 need --device cuda")
    if a.device == "cuda":
        from .common import require_cuda

        require_cuda("train")
    # fairseq-train takes the GPU whenever it sees one: --cpu keeps --device cpu on the CPU
    device_args = ("--cpu",) if a.device == "cpu" else ("--bf16",) if a.bf16 else ("--fp16",) if a.fp16 else ()
    started_on = machine()  # the commit the run starts from
    variants = dict(STRUCTURED)
    if a.cross_window >= 0:
        cross = ("--struct-cross-window", str(a.cross_window), "--struct-cross-slope", str(a.cross_slope))
        variants[f"cross{a.cross_window}"] = ("structured_transformer_multi30k", cross)
    data = DataFolder(RUNS_DIR / "data" / "multi30k_en_de")  # the pipeline's at the defaults
    prepare_dataset("multi30k_en_de", data.path, PrepConfig())  # locked, checked
    results: dict[str, Any] = {}

    def add(name: str, found: dict[str, dict[str, Any]]) -> None:
        for variant, row in found.items():
            results[name if variant == "structured" else f"{name}_{variant}"] = row

    warm = a.warmup_updates
    docs = {n: pseudo_documents(data.spm, a.work / f"docs{n}", n) for n in a.doc_tokens}  # all, first
    sentences = measure(data.bin, a.work / "sentences", a.updates, 4096, 1024, device_args, a.rounds, variants, warm)
    add("multi30k", sentences)
    for n in a.doc_tokens:
        found = measure(
            docs[n], a.work / f"docs{n}-runs", a.updates, 2 * n + 512, 4 * n, device_args, a.rounds, variants, warm
        )
        add(f"docs{n}", found)
    if a.also_no_cross:
        n = max(a.doc_tokens)
        no_cross = (*device_args, "--no-cross-attention")
        found = measure(
            docs[n],
            a.work / f"docs{n}-no-cross-runs",
            a.updates,
            2 * n + 512,
            4 * n,
            no_cross,
            a.rounds,
            STRUCTURED,
            warm,
        )
        add(f"docs{n}_no_cross", found)
    record = {
        "command": command_line("train", argv),
        "machine": started_on,
        "device": _device_name(a.device),
        "precision": "bf16" if a.bf16 else "fp16" if a.fp16 else "fp32",
        "updates": a.updates,
        "warmup_updates": a.warmup_updates,
        "order": "reversed every round (round 1: dense first)",
        # the structured arch's own defaults: this command passes no --struct-window / --struct-rare
        "structure": {"window": StructureConfig.struct_window, "rare": StructureConfig.struct_rare},
        "results": results,
    }
    write_text_atomic(a.out, json.dumps(record, indent=2) + "\n")
    for name, r in results.items():
        print(
            f"{name:18s} dense {r['dense']:6.0f} tok/s  structured {r['structured']:6.0f} tok/s (best of "
            f"{a.rounds})  ratio {r['ratio']:.2f} (median; rounds {', '.join(f'{x:.2f}' for x in r['ratios'])})"
        )


def _device_name(device: str) -> str:
    """``cpu``, or the GPU's name (``torch.cuda.get_device_name``)."""
    if device != "cuda":
        return device
    import torch

    return torch.cuda.get_device_name()


if __name__ == "__main__":
    main()
