"""``structmt-bench report``: render ``results/BENCHMARKS.md`` from the JSON files that
``structmt-bench attention|train|decode`` wrote, with each run's command and machine; the GPU
section from ``gpu/bench_attention_cuda.json`` and the other files under ``gpu/`` (``scripts/gpu_session.sh``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..attention.options import StructureConfig
from ..console import setup
from ..files import DataError, existing_dir, write_text_atomic
from ..leaderboard_csv import cross_window, read_rows, score_text
from ..paths import REPO_ROOT, RESULTS_DIR, ResultsFolder
from .attention import table
from .attention_cuda import table as cuda_table
from .common import command_parser, replaces, verdict_number

#: training tokens/s goals, structured / dense (issue #5)
TRAIN_GOALS = {"multi30k": 0.9, "docs2048": 2.0}
#: beam-search sentences/s goal, structured / dense (issue #5)
DECODE_GOAL = 1.0


#: the structure of training benchmark records from before they wrote theirs: the plugin's defaults
DEFAULT_STRUCTURE = {"window": StructureConfig.struct_window, "rare": StructureConfig.struct_rare}


def train_goal(name: str) -> float | None:
    """The goal of a row: its data's goal, for the structured model with or without structured
    cross-attention (``docs2048_cross32``); none for rows that are not translation models (``_no_cross``)."""
    data, _, variant = name.partition("_")
    return TRAIN_GOALS.get(data) if variant == "" or variant.startswith("cross") else None


def _load(path: Path) -> dict[str, Any] | None:
    """The JSON record at ``path``, None when there is none; a file that is not JSON is an error naming it."""
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not a JSON record of structmt-bench ({err})") from None


def _section(path: Path, build: Callable[[dict[str, Any] | None], list[str]]) -> list[str]:
    """``build`` of the record at ``path``: a record without a key this code reads, or with a value of another
    kind, is a ``DataError`` naming the file (not a ``KeyError`` from inside the report)."""
    record = _load(path)
    try:
        return build(record)
    except (KeyError, TypeError, AttributeError, ValueError, IndexError) as err:
        raise DataError(
            f"{path}: not a record this code reads ({type(err).__name__}: {err}): from other code, or edited by hand; "
            "run the command its 'command' field names again"
        ) from None


def _provenance(record: dict[str, Any]) -> list[str]:
    m = record.get("machine", {})
    capability = f" ({m['cpu_capability']})" if "cpu_capability" in m else ""  # recorded since 2026-12-05
    return [
        f"Command: `{record.get('command', '?')}`  ",
        f"Machine: {m.get('cpu', '?')}{capability}, {m.get('threads', '?')} torch threads, "
        f"torch {m.get('torch', '?')}, Python {m.get('python', '?')}; code at commit `{m.get('commit', '?')}`.",
        "",
    ]


#: what the CPU benchmark's efficient rows ran (its record's ``efficient_kernel``, from ``candidate_kernel``)
EFFICIENT_KERNELS = {
    "fused": "structmt's fused C++ kernel",
    "gather": "the gathered-copies path, the C++ kernel not being built (much slower)",
}


def attention_section(record: dict[str, Any] | None) -> list[str]:
    lines = ["## Attention kernel (`structmt-bench attention`)", ""]
    if record is None:
        return lines + ["Not run yet: `structmt-bench attention`.", ""]
    s, hw = record["settings"], record["hardware"]
    lines += _provenance(record)
    # not in the record, fixed by the command: float32 (its only --dtype) and one warm-up step (median_time)
    lines += [
        f"Self-attention over `(batch, {s['heads']} heads, T, {s['dim']})` float32 tensors, {s['tokens']} tokens "
        f"per batch at every T, w={s['window']}, r={s['rare']} rare columns; median of {s['repeats']} steps "
        "after a warm-up. f+b = forward and backward; FlexAttention (compiled, BlockMask from the same "
        "supports) runs forward only, as torch has no FlexAttention backward on CPU, so it is compared with "
        "structmt's forward. fairseq's MultiheadAttention includes its four linear projections "
        f"({s['heads'] * s['dim']}×{s['heads'] * s['dim']} each), which the other rows do not. "
        "Peak memory: resident memory one step adds on top of its inputs, in a fresh "
        "process (`VmHWM` after a reset, with glibc returning freed blocks). The traffic floor is the bytes "
        "the band and rare gathers must move (forward and backward) over the copy bandwidth measured in the "
        f"same run: {hw['copy_gb_per_s']:.1f} GB/s (matmul: {hw['matmul_gflop_per_s']:.0f} GFLOP/s)."
        + (f" The efficient rows ran {EFFICIENT_KERNELS[s['efficient_kernel']]}." if "efficient_kernel" in s else ""),
        "",
        table(record),
        "",
        "![time and memory against T](bench_attention.png)",
        "",
    ]
    return lines


def cross_bleu(
    results_dir: Path, structure: dict[str, int] | None = None, test_set: str = "test_2016_flickr"
) -> dict[int, str]:
    """What the leaderboard says of each structured cross band's translation quality on Multi30k: cross
    window W → the BLEU of every run of the benchmarked structure (``{"window": w, "rare": r}``, the training
    benchmark's; default w=3, r=2) with that band, each beside the same model without it and the dense model
    (same schedule and seed; every recorded re-run of those).  A speed ratio of a ``…_crossW`` row is a
    verdict only with this."""
    structure = structure or DEFAULT_STRUCTURE
    rows = [
        r
        for r in read_rows(ResultsFolder(results_dir).leaderboard)
        if r["data"] == "multi30k_en_de" and r["test_set"] == test_set
    ]

    def benchmarked(x: dict[str, str]) -> bool:
        wanted = (str(structure["window"]), str(structure["rare"]), "auto", "")
        return (x["window"], x["rare"], x["heads"], x["options"]) == wanted

    def scores(same: list[dict[str, str]], keep: Callable[[dict[str, str]], bool]) -> str:
        kept = [x for x in same if keep(x)]
        found = list(dict.fromkeys(score_text(x["bleu"]) for x in kept))
        if len(found) < 2:
            return found[0] if found else "?"
        runs = list(dict.fromkeys(x["run_id"] for x in kept))
        return " or ".join(found) + (" (re-runs)" if len(runs) == 1 else f" (runs {', '.join(runs)})")

    by_window: dict[int, list[str]] = {}
    banded: dict[str, dict[str, str]] = {}  # each run once (its first evaluation), its re-runs beside it
    for r in rows:
        if cross_window(r["cross"]) is not None and benchmarked(r):
            banded.setdefault(r["run_id"], r)
    for run_id, r in banded.items():
        same = [x for x in rows if (x["schedule"], x["seed"]) == (r["schedule"], r["seed"])]
        own = scores([x for x in same if x["run_id"] == run_id], lambda x: True)
        plain = scores(same, lambda x: benchmarked(x) and not x["cross"])
        dense = scores(same, lambda x: x["window"] == "")
        by_window.setdefault(cross_window(r["cross"]), []).append(
            f"BLEU {own} on {test_set} (`{r['schedule']}` schedule, seed {r['seed']}; without the cross "
            f"band {plain}, dense {dense}; run `{run_id}`)"
        )
    return {window: "; ".join(texts) for window, texts in by_window.items()}


def train_section(record: dict[str, Any] | None, quality: dict[int, str] | None = None) -> list[str]:
    """``quality``: :func:`cross_bleu`; a ``…_crossW`` row whose band has no measured BLEU meets no goal."""
    quality = quality or {}
    lines = ["## Training throughput (`structmt-bench train`)", ""]
    if record is None:
        return lines + ["Not run yet: `structmt-bench train`.", ""]
    lines += _provenance(record)
    # the command fixes the archs; records before "structure" was written had the arch's defaults, w=3, r=2
    structure = record.get("structure", DEFAULT_STRUCTURE)
    dense = "dense (`transformer_multi30k`)"
    structured = f"structured (`structured_transformer_multi30k`, w={structure['window']}, r={structure['rare']})"
    if "warmup_updates" not in record:  # records before the warm-up: the command ran dense first in every round
        order = (
            f"{dense} then {structured}, same batches, alternating in one run, dense first in every round and no "
            "untimed warm-up, so dense alone paid each round's cold start (an order bias: results/README.md)"
        )
    elif record["warmup_updates"]:
        order = (
            f"{dense} and {structured}, same batches, in one run: an untimed run of {record['warmup_updates']} "
            "updates of each model first, then rounds in which the order of the models reverses every round"
        )
    else:
        order = f"{dense} and {structured}, same batches, in one run, the order of the models reversing every round"
    lines += [
        f"Target tokens/s reported by fairseq-train over {record['updates']} updates, {order} (best round of "
        "each shown; the ratio is the median of the "
        "per-round ratios, listed in the last column). `docsN`: consecutive Multi30k sentence pairs concatenated "
        "into pseudo-documents of at least N source pieces. `…_crossW`: the structured model with structured "
        "cross-attention as well (`--struct-cross-window W`, a band of half-width W around the source "
        "position aligned by the slope `--struct-cross-slope`), against the same dense runs. "
        "`…_no_cross`: decoders without cross-attention (`--no-cross-attention`, both models): not a "
        "translation model, but it shows what the self-attention structure alone saves.",
        "",
        "| data | dense tok/s | structured tok/s | structured / dense | goal | met | rounds |",
        "|---|---|---|---|---|---|---|",
    ]

    def band(name: str) -> int | None:
        variant = name.partition("_")[2]
        return int(variant[5:]) if variant.startswith("cross") else None

    def verdict(name: str, ratio: float, goal: float) -> str:
        if not ratio >= goal:  # a NaN ratio (a failed measurement) meets nothing
            return "no"
        return "yes" if band(name) is None or band(name) in quality else "yes, BLEU not measured"

    for name, r in record["results"].items():
        goal = train_goal(name)
        met = "–" if goal is None else verdict(name, r["ratio"], goal)
        ratio = f"{r['ratio']:.2f}" if goal is None else verdict_number(r["ratio"], goal, True)
        lines.append(
            f"| {name} | {r['dense']:.0f} | {r['structured']:.0f} | {ratio} | "
            f"{'–' if goal is None else f'≥ {goal}'} | {met} | "
            + ", ".join(f"{x:.2f}" for x in r.get("ratios", [r["ratio"]]))
            + " |"
        )
    lines.append("")
    for data, goal in TRAIN_GOALS.items():
        rows = {n: r for n, r in record["results"].items() if n.partition("_")[0] == data and train_goal(n)}
        shown = {n: verdict_number(r["ratio"], goal, True) for n, r in rows.items()}
        met = [f"`{n}` ({shown[n]})" for n, r in rows.items() if verdict(n, r["ratio"], goal) == "yes"]
        unmeasured = [f"`{n}`" for n, r in rows.items() if verdict(n, r["ratio"], goal) == "yes, BLEU not measured"]
        missed = [f"`{n}` ({shown[n]})" for n, r in rows.items() if verdict(n, r["ratio"], goal) == "no"]
        if rows:
            lines.append(
                f"Goal {data} ≥ {goal}: "
                + (f"met by {', '.join(met)}" if met else "not met")
                + (
                    f"; fast enough but no verdict without a measured BLEU: {', '.join(unmeasured)}"
                    if unmeasured
                    else ""
                )
                + (f"; not by {', '.join(missed)}" if missed else "")
                + ".  "
            )
    bands = sorted({b for n in record["results"] if (b := band(n)) is not None})
    unknown = "BLEU not measured (`structmt-run model=structured_multi30k_cross model.cross_window={}`)"
    lines += [""] + [f"Cross band W={b}: {quality.get(b, unknown.format(b))}.  " for b in bands]
    if quality and any(n.partition("_")[0].startswith("docs") and band(n) in quality for n in record["results"]):
        lines.append(
            "These BLEU scores are of Multi30k's test sentences: a band's translation quality on the long "
            "pseudo-documents it is timed on is not measured."
        )
    return lines + [""]


def tokens_per_s(model: dict[str, Any]) -> float:
    """Output tokens per second of a decode record's model (its best round, as its sentences/s)."""
    return model["output_tokens"] / model["seconds"]


def decode_section(record: dict[str, Any] | None) -> list[str]:
    lines = ["## Beam-search decoding (`structmt-bench decode`)", ""]
    if record is None:
        return lines + ["Not run yet: `structmt-bench decode --dense … --structured … --data …`.", ""]
    lines += _provenance(record)
    d, s = record["dense"], record["structured"]
    ratios = record.get("ratios", [record["ratio"]])
    # the command fixes the step timing's batch; records before "step_batch" was written used 64 as well
    step_batch = record.get("step_batch", 64)
    if "first_by_round" in record:
        about = (
            "Sentences/s of fairseq's beam search over the same test set, dense and structured checkpoints side by "
            f"side in one run: an untimed warm-up batch of each, then {len(ratios)} round{'s' * (len(ratios) != 1)}, "
            "the model that goes "
            f"first swapping every round (first: {', '.join(record['first_by_round'])}). Best round of each shown; "
            "the ratio is the median of the per-round ratios."
        )
        steps = "median of the same number of rounds, after an untimed pass of each"
    else:  # records before the warm-up: the command then ran dense first in every round
        about = (
            "Sentences/s of fairseq's beam search over the same test set, dense and structured checkpoints "
            f"alternating {len(ratios)} times in one run, dense first in every round and no untimed warm-up (an "
            "order bias: results/README.md; best round of each shown; the ratio is the median "
            "of the per-round ratios)."
        )
        steps = "median of the same number of alternating rounds, dense first"
    lines += [
        about,
        "",
        "| model | sentences | sentences/s | output tokens | output tokens/s |",
        "|---|---|---|---|---|",
        *(
            f"| {name} | {m['sentences']} | {m['sentences_per_s']:.1f} | {m.get('output_tokens', '–')} | "
            + (f"{tokens_per_s(m):.0f} |" if "output_tokens" in m else "– |")
            for name, m in (("dense", d), ("structured", s))
        ),
        "",
    ]
    if "output_tokens" in d and "output_tokens" in s:  # a record without the counts shows sentences/s alone
        lines += [
            "Sentences/s mixes speed with output length: a model that writes longer translations is slower per "
            f"sentence. Output tokens/s, best rounds: structured / dense {tokens_per_s(s) / tokens_per_s(d):.2f}.",
            "",
        ]
    lines += [
        f"Structured / dense: {verdict_number(record['ratio'], DECODE_GOAL, True)} "
        f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)}); "
        f"goal ≥ {DECODE_GOAL}: {'met' if record['ratio'] >= DECODE_GOAL else 'not met'}.",
        "",
        "Decoder self-attention keys cached per sequence (summed over layers) after L incremental steps, "
        f"and the mean time of one decoder step for {step_batch} sequences over those L steps (random tokens, "
        f"same checkpoints; {steps}):",
        "",
    ]
    by_model, ms = record["cache_keys_by_length"], record.get("step_ms_by_length", {})
    header = [f"{m} keys" for m in by_model] + [f"{m} ms/step" for m in ms]
    lines += ["| L | " + " | ".join(header) + " |", "|---|" + "---|" * len(header)]
    for length in next(iter(by_model.values())):
        cells = [str(by_model[m][length]) for m in by_model] + [f"{ms[m][length]:.1f}" for m in ms]
        lines.append(f"| {length} | " + " | ".join(cells) + " |")
    # bounded: it stops growing once the output is longer than the structure reaches back (its window), so the
    # two longest L cache as many keys (a wide window may still be filling at the shortest L)
    counts = [v for _, v in sorted(by_model["structured"].items(), key=lambda item: int(item[0]))]
    bounded = len(counts) >= 2 and counts[-1] == counts[-2]
    lines += [
        "",
        "Goal: the structured cache stops growing with the output length (as many keys at the two longest L): "
        f"{'met' if bounded else 'not met'}.",
    ]
    return lines + [""]


#: where a GPU session's results lie, under the results folder (scripts/gpu_session.sh writes into gpu/)
GPU_DIR = "gpu"
CUDA_ATTENTION = "bench_attention_cuda.json"


def cuda_attention_section(record: dict[str, Any], source: str) -> list[str]:
    """The GPU attention benchmark (``structmt-bench attention --device cuda``) of one JSON file."""
    s, m = record["settings"], record.get("machine", {})
    lines = [
        f"### Attention kernel on {record.get('device', '?')} (`{source}`)",
        "",
        f"Command: `{record.get('command', '?')}`  ",
        f"Device: {record.get('device', '?')}; host {m.get('cpu', '?')}; torch {s.get('torch', '?')} "
        f"(CUDA {s.get('cuda', '?')}), Triton {s.get('triton', '?')}, Python {m.get('python', '?')}; "
        f"code at commit `{record.get('commit', m.get('commit', '?'))}`.",
        "",
        f"Self-attention over `(batch, {s['heads']} heads, T, {s['dim']})` {s['dtype']} tensors, {s['tokens']} "
        f"tokens per batch at every T, w={s['window']}, r={s['rare']} ({s['candidates']} candidate keys per "
        f"query); CUDA-event time, median of {s['repeats']} steps after {s['warmup']} warm-up steps; each "
        "cell is forward (no grad) / forward+backward. SDPA flash is dense attention "
        "(`sdpa_kernel(SDPBackend.FLASH_ATTENTION)`); Flex is `torch.compile(flex_attention)` with a "
        "BlockMask of the same supports, built once per T for its timed steps; the BlockMask build (fresh "
        "rare columns each time, as every training batch needs) is timed on its own. structmt Triton is "
        '`structured_attention(impl="triton")`, the whole call; "Triton kernel alone" the custom op on '
        'precomputed candidates; structmt gather is `impl="efficient"` with the Triton kernel off. '
        "The traffic floor: q, k, v, output (and for f+b their gradients) and the candidate positions and "
        "kinds crossing HBM once (`traffic_floor_bytes`), over the device-to-device copy bandwidth measured "
        f"in the same run: {_copy_bandwidth(record)}. Peak memory: the most "
        "`torch.cuda.max_memory_allocated` rose above the memory held before one f+b step.",
        "",
    ]
    if record.get("rebuilt_from"):
        logs = ", ".join(f"`{log}`" for log in record["rebuilt_from"])
        lines += [
            f"**Partial.** Rebuilt from the rows printed in {logs} (`--from-log`): the runs were stopped at "
            "their time limits before they wrote a JSON file; a dash is a measurement they did not reach. The "
            "command above is the rebuild's, and the device and commit it names were given to it (`--gpu`, "
            "`--commit`); each run's own command, machine and the rows it printed are recorded beside its log"
            + "".join(f" ({readme})" for readme in _readmes_beside(record["rebuilt_from"]))
            + ".",
            "",
        ]
    elif record.get("complete") is False:
        lines += [f"**Partial.** The run stopped after T={record['rows'][-1]['T']}.", ""]
    return lines + [cuda_table(record), ""]


def _readmes_beside(logs: list[str]) -> list[str]:
    """Links, from ``results/BENCHMARKS.md``, to the README of each folder of ``logs`` (paths from the repository
    root) under ``results/`` that has one."""
    folders = [f for f in dict.fromkeys(Path(log).parent for log in logs) if f.parts[:1] == ("results",)]
    return [
        f"[{f}/README.md]({f.relative_to('results')}/README.md)"
        for f in folders
        if (REPO_ROOT / f / "README.md").is_file()
    ]


def _copy_bandwidth(record: dict[str, Any]) -> str:
    gb_per_s = record["hardware"].get("copy_gb_per_s")
    return f"{gb_per_s:.0f} GB/s" if gb_per_s is not None else "not measured (no floor in this record)"


def gpu_section(results_dir: Path) -> list[str]:
    """``## GPU``: the GPU attention benchmark (``bench_attention_cuda.json``, here or under ``gpu/``)
    and the training and decoding benchmarks a GPU session wrote under ``gpu/``; "not measured yet"
    when there is none."""
    lines = ["## GPU", ""]
    gpu = results_dir / GPU_DIR
    found = False
    for path in (results_dir / CUDA_ATTENTION, gpu / CUDA_ATTENTION):
        where = str(path.relative_to(results_dir))
        body = _section(
            path, lambda record, where=where: [] if record is None else cuda_attention_section(record, where)
        )
        lines += body
        found |= bool(body)
    for name, section in (("bench_train.json", train_section), ("bench_decode.json", decode_section)):

        def titled(record: dict[str, Any] | None, name: str = name, section: Any = section) -> list[str]:
            if record is None:
                return []
            body = section(record)
            device = f" on {record['device']}" if record.get("device") else ""
            precision = f", {record['precision']}" if record.get("precision") else ""
            return [f"#{body[0]}{device}{precision} (`{GPU_DIR}/{name}`)"] + body[1:]

        body = _section(gpu / name, titled)
        lines += body
        found |= bool(body)
    if not found:
        lines += [
            "Not measured yet: run `scripts/gpu_session.sh` on a GPU machine (it writes `results/gpu/`), "
            "or `structmt-bench attention --device cuda --dtype bfloat16` (it writes "
            "`results/bench_attention_cuda.json`), then `structmt-bench report`.",
            "",
        ]
    return lines


def render(results_dir: Path) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Written by `structmt-bench report` from `bench_attention.json`, `bench_train.json` and "
        "`bench_decode.json` (the GPU section: `gpu/bench_attention_cuda.json` and the rest of `gpu/`); every number "
        "comes from the command shown above its table, run on the machine shown there. Ratios are "
        "measured side by side in one run.",
        "",
    ]
    lines += _section(results_dir / "bench_attention.json", attention_section)
    lines += _section(
        results_dir / "bench_train.json",
        lambda r: train_section(r, cross_bleu(results_dir, (r or {}).get("structure"))),
    )
    lines += _section(results_dir / "bench_decode.json", decode_section)
    lines += gpu_section(results_dir)
    return "\n".join(lines)


def write_benchmarks(results_dir: Path) -> Path:
    """Write the folder's ``BENCHMARKS.md`` (:func:`render`); returns its path."""
    out = ResultsFolder(results_dir).benchmarks_page
    write_text_atomic(out, render(results_dir) + "\n")
    return out


def main(argv: list[str] | None = None) -> None:
    p = command_parser("report", __doc__)
    p.add_argument(
        "--results-dir",
        type=existing_dir,
        default=str(RESULTS_DIR),
        help="the folder of the bench_*.json files, where BENCHMARKS.md is written "
        + replaces(RESULTS_DIR, "the committed BENCHMARKS.md"),
    )
    a = p.parse_args(argv)
    setup(a.verbose)
    print(f"wrote {write_benchmarks(a.results_dir)}")


if __name__ == "__main__":
    main()
