"""``structmt-bench decode``: beam-search sentences/s of a dense and a structured
checkpoint on the same test set (alternating in one run), and the decoder
self-attention cache size and step time against the output length.

Both sides pay the same start-up: each model runs untimed first (one batch of the beam search;
one pass of each length of the step timing), and the model that goes first swaps every round
(:func:`~structmt.bench.common.side_by_side`)."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from ..checkpoints import load_model
from ..console import setup
from ..fairseq_cli import MAX_LEN_A, MAX_LEN_B
from ..files import int_at_least, split_problem, write_text_atomic
from ..models.structured_transformer import StructuredTransformerModel
from ..paths import RESULTS_DIR
from ..provenance import machine
from .common import add_old_name, command_line, command_parser, output_file, replaces, side_by_side
from .workload import sync

#: sequences per decoder step in the step timing (fixed: the command has no option for it)
STEP_BATCH = 64
#: the output lengths L of the step timing (fixed likewise)
STEP_LENGTHS = (8, 32, 128, 512)


def sentences_per_second(
    model: Any, task: Any, subset: str, beam: int, batch_size: int, device: str = "cpu", batches: int | None = None
) -> dict[str, Any]:
    """Beam-search ``subset`` (already loaded into ``task``) with ``model`` (on ``device``); only its
    first ``batches`` batches when given (a warm-up)."""
    from fairseq import utils
    from fairseq.dataclass.configs import GenerationConfig

    generator = task.build_generator([model], GenerationConfig(beam=beam, max_len_a=MAX_LEN_A, max_len_b=MAX_LEN_B))
    itr = task.get_batch_iterator(
        dataset=task.dataset(subset), max_sentences=batch_size, required_batch_size_multiple=1
    ).next_epoch_itr(shuffle=False)
    sync(device)
    sentences, tokens, start = 0, 0, time.perf_counter()
    with torch.no_grad():
        for done, sample in enumerate(itr):
            if batches is not None and done >= batches:
                break
            if device == "cuda":
                sample = utils.move_to_cuda(sample)
            hypos = task.inference_step(generator, [model], sample)
            sentences += len(hypos)
            tokens += sum(len(h[0]["tokens"]) for h in hypos)
    sync(device)
    seconds = time.perf_counter() - start
    return {
        "sentences": sentences,
        "output_tokens": tokens,
        "seconds": seconds,
        "sentences_per_s": sentences / seconds,
    }


def beam_rounds(
    models: dict[str, tuple[Any, Any]], subset: str, beam: int, batch_size: int, repeats: int, device: str = "cpu"
) -> list[dict[str, dict[str, Any]]]:
    """``repeats`` rounds of :func:`sentences_per_second` of every model, after an untimed warm-up batch
    of each, the first model swapping every round (:func:`~structmt.bench.common.side_by_side`)."""

    def measure(name: str, warmup: bool) -> dict[str, Any]:
        model, task = models[name]
        return sentences_per_second(model, task, subset, beam, batch_size, device, batches=1 if warmup else None)

    return side_by_side(list(models), repeats, measure)


def incremental_steps(
    models: dict[str, tuple[Any, Any]],
    lengths: list[int],
    repeats: int,
    batch: int = STEP_BATCH,
    device: str = "cpu",
) -> dict[str, dict[int, dict[str, float]]]:
    """Per model: decoder self-attention keys cached per sequence (summed over layers) after ``L``
    incremental steps, and the time of one decoder step for ``batch`` sequences of random tokens,
    averaged over the ``L`` steps (median of ``repeats``, after an untimed pass of each model, the
    first model swapping every round)."""
    dictionary = next(iter(models.values()))[1].target_dictionary
    gen = torch.Generator().manual_seed(0)
    src = torch.randint(dictionary.nspecial, len(dictionary), (batch, 12), generator=gen)
    src[:, -1] = dictionary.eos()
    src = src.to(device)
    out: dict[str, dict[int, dict[str, float]]] = {name: {} for name in models}
    with torch.no_grad():
        for length in lengths:
            tokens = torch.randint(dictionary.nspecial, len(dictionary), (batch, length), generator=gen)
            tokens[:, 0] = dictionary.eos()
            tokens = tokens.to(device)

            def one_pass(name: str, warmup: bool, tokens: torch.Tensor = tokens, length: int = length) -> float:
                model = models[name][0]
                model.decoder.set_beam_size(1)  # beam search set it on the cross-attention blocks
                enc = model.encoder(src, src_lengths=torch.full((batch,), 12, device=device))
                state: dict = {}
                sync(device)
                start = time.perf_counter()
                for t in range(length):
                    model.decoder.forward(tokens[:, : t + 1], encoder_out=enc, incremental_state=state)
                sync(device)
                seconds = time.perf_counter() - start
                keys = 0
                for layer in model.decoder.layers:
                    buf = layer.self_attn._get_input_buffer(state)
                    keys += sum(v.size(-2) for k, v in buf.items() if k.endswith("key") and v.dim() == 4)
                out[name][length] = {"cache_keys": keys}
                return seconds

            rounds = side_by_side(list(models), repeats, one_pass)
            for name in models:
                out[name][length]["ms_per_step"] = 1000 * statistics.median(r[name] for r in rounds) / length
    return out


def pair_difference(dense: tuple[Any, Any], structured: tuple[Any, Any]) -> str:
    """How two (model, task) differ beyond the attention structure ("" when they do not): the translation
    direction, or a parameter's name or shape (layers, widths, heads, dictionaries); the ratio of two such
    models' speeds would not be the structure's."""
    (dense_model, dense_task), (structured_model, structured_task) = dense, structured
    directions = [f"{t.cfg.source_lang}→{t.cfg.target_lang}" for t in (dense_task, structured_task)]
    if directions[0] != directions[1]:
        return f"they translate {directions[0]} and {directions[1]}"
    shapes = [{k: tuple(v.shape) for k, v in m.state_dict().items()} for m in (dense_model, structured_model)]
    for name in sorted(shapes[0].keys() | shapes[1].keys()):
        if shapes[0].get(name) != shapes[1].get(name):
            shown = [str(s.get(name, "none")) for s in shapes]
            return f"parameter {name} is {shown[0]} in the dense model, {shown[1]} in the structured one"
    return ""


def main(argv: list[str] | None = None) -> None:
    p = command_parser("decode", __doc__)
    p.add_argument("--dense", type=Path, required=True, help="dense checkpoint")
    p.add_argument("--structured", type=Path, required=True, help="structured checkpoint")
    data_bin = p.add_argument(
        "--data-bin", type=Path, help="the binarised data (fairseq-preprocess's folder) both were trained on"
    )
    add_old_name(p, "--data", data_bin)
    p.add_argument("--subset", default="test", help="the split of --data-bin to decode (default: test)")
    p.add_argument("--beam", type=int_at_least(1), default=5, help="beam size (default: 5)")
    p.add_argument(
        "--batch-size", type=int_at_least(1), default=64, help="sentences per beam-search batch (default: 64)"
    )
    p.add_argument(
        "--repeats",
        type=int_at_least(1),
        default=3,
        help="rounds of dense and structured (after an untimed warm-up of each; the first swaps every round)",
    )
    out = RESULTS_DIR / "bench_decode.json"
    p.add_argument("--out", type=output_file, default=out, help="JSON file to write " + replaces(out))
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the models decode")
    precision = p.add_mutually_exclusive_group()
    precision.add_argument("--bf16", action="store_true", help="--device cuda: decode with bfloat16 weights")
    precision.add_argument("--fp16", action="store_true", help="--device cuda: decode with float16 weights")
    a = p.parse_args(argv)
    setup(a.verbose)
    if a.data_bin is None:  # not argparse's required=True: --data, its old name, counts too
        p.error("the following arguments are required: --data-bin")
    if (a.bf16 or a.fp16) and a.device != "cuda":
        p.error("--bf16 and --fp16 need --device cuda")
    if a.device == "cuda":
        from .common import require_cuda

        require_cuda("decode")
    if problem := split_problem(a.data_bin, a.subset):  # before the models load
        p.error(problem)
    started_on = machine()  # the commit the run starts from
    # (model, task) of each
    models = {"dense": load_model(a.dense, a.data_bin), "structured": load_model(a.structured, a.data_bin)}
    for name, path in (("dense", a.dense), ("structured", a.structured)):  # a swapped pair: a meaningless ratio
        if isinstance(models[name][0], StructuredTransformerModel) != (name == "structured"):
            p.error(f"--{name} {path}: not a {name} model's checkpoint (the two may be swapped)")
    if difference := pair_difference(*(models[name] for name in ("dense", "structured"))):
        p.error(f"--dense {a.dense} and --structured {a.structured} are not one model shape: {difference}")
    if a.device == "cuda":
        dtype = torch.bfloat16 if a.bf16 else torch.float16 if a.fp16 else torch.float32
        models = {name: (model.to("cuda", dtype), task) for name, (model, task) in models.items()}
    for _, task in models.values():
        task.load_dataset(a.subset)
    # alternating spreads slow phases of a shared machine over both; the warm-up and the swapped order, cold starts
    rounds = beam_rounds(models, a.subset, a.beam, a.batch_size, a.repeats, a.device)
    ratios = [r["structured"]["sentences_per_s"] / r["dense"]["sentences_per_s"] for r in rounds]
    best = {name: max((r[name] for r in rounds), key=lambda x: x["sentences_per_s"]) for name in models}
    dense, structured = best["dense"], best["structured"]
    steps = incremental_steps(models, list(STEP_LENGTHS), a.repeats, device=a.device)
    result = {
        "command": command_line("decode", argv),
        "machine": started_on,
        "device": torch.cuda.get_device_name() if a.device == "cuda" else "cpu",
        "precision": "bf16" if a.bf16 else "fp16" if a.fp16 else "fp32",
        "dense": {"checkpoint": str(a.dense), **dense},
        "structured": {"checkpoint": str(a.structured), **structured},
        "ratio": statistics.median(ratios),
        "ratios": ratios,
        "first_by_round": [next(iter(r)) for r in rounds],
        "warmup": "one untimed batch of each model (step timing: one untimed pass of each length)",
        "step_batch": STEP_BATCH,
        "cache_keys_by_length": {m: {n: r["cache_keys"] for n, r in by_n.items()} for m, by_n in steps.items()},
        "step_ms_by_length": {m: {n: r["ms_per_step"] for n, r in by_n.items()} for m, by_n in steps.items()},
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(a.out, json.dumps(result, indent=2) + "\n")
    print(
        f"dense {dense['sentences_per_s']:.1f} sent/s, structured {structured['sentences_per_s']:.1f} sent/s "
        f"(best of {a.repeats}); ratio structured / dense, median of rounds: {result['ratio']:.2f} "
        f"({', '.join(f'{r:.2f}' for r in ratios)})"
    )
    for name, by_n in steps.items():
        print(
            f"{name:10s} after L steps (cached keys, ms per step of {STEP_BATCH} sequences): "
            + ", ".join(f"L={n}: {r['cache_keys']}, {r['ms_per_step']:.1f} ms" for n, r in by_n.items())
        )


if __name__ == "__main__":
    main()
