"""``structmt-sweep-report``: BLEU and cost over (w, r) for one data set and schedule,
from ``results/leaderboard.csv``: heatmap PNGs, a markdown table, and the verdict
against the dense baseline of the same schedule."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import re
import shlex
from pathlib import Path

from ..attention.structure import role_mix_text
from ..console import add_verbose_option, setup
from ..figures import annotated_heatmap
from ..files import output_dir, write_text_atomic
from ..leaderboard_csv import p_text, read_rows, score_text, short_commit
from ..paths import REPO_ROOT, RESULTS_DIR, ResultsFolder
from .evaluation import DECODING, row_text
from .leaderboard import evaluations
from .spec import ModelSpec

#: the architecture whose reports carry no ``--arch`` in their name or command
DEFAULT_ARCH = ModelSpec().arch


def name_part(text: str) -> str:
    """``text`` as part of a file name on any system: as is when it is letters, digits and ``. _ + = -``, else
    its alphanumeric runs joined by ``-`` and a digest of it, readable and exact ("syn:1,rare:1" and
    "syn:1;rare:1" are two mixes; "test_2016_flickr[:100]" holds characters Windows refuses)."""
    if re.fullmatch(r"[A-Za-z0-9._+=-]+", text):
        return text
    slug = "-".join(re.findall(r"[A-Za-z0-9]+", text))
    return f"{slug}-{hashlib.sha256(text.encode()).hexdigest()[:6]}"


def sweep_rows(
    rows: list[dict[str, str]], data: str, schedule: str, test_set: str, seed: str | None = None
) -> list[dict[str, str]]:
    """Each run's first evaluation on ``test_set`` (as ``LEADERBOARD.md`` shows it; re-runs are listed there)."""
    kept = [
        r
        for r in rows
        if (r["data"], r["schedule"], r["test_set"]) == (data, schedule, test_set) and seed in (None, r["seed"])
    ]
    return [e[0] for e in evaluations(kept).values()]


def absent(rows: list[dict[str, str]], wanted: dict[str, str]) -> str:
    """Why no row has ``wanted``'s values: the first column none of the rows left by the columns before it
    match, with the values those rows have (``"heads present: auto"``); "" when some row matches them all."""
    for column, value in wanted.items():
        left = [r for r in rows if r[column] == value]
        if not left:
            return f"{column} present: " + ", ".join(sorted({r[column] or "(empty)" for r in rows}))
        rows = left
    return ""


def cells(rows: list[dict[str, str]], what: str) -> dict[tuple[str, str], dict[str, str]]:
    """``(window, rare)`` → the one run of that cell (``("", "")``: the dense baseline); two runs in one cell
    (another seed, arch or setting under the same schedule name) are an error naming both."""
    out: dict[tuple[str, str], dict[str, str]] = {}
    for r in rows:
        other = out.setdefault((r["window"], r["rare"]), r)
        if other is not r:
            where = f"the w={r['window']}, r={r['rare']} cell" if r["window"] else "the dense baseline"
            fix = (
                "they differ in a setting the leaderboard has no column for (model.impl, say):"
                if other["seed"] == r["seed"]
                else "pick one seed with --seed, or"
            )
            raise SystemExit(
                f"error: runs {other['run_id']} (seed {other['seed']}) and {r['run_id']} (seed {r['seed']}) are both "
                f"{where} of {what}; {fix} give the other setting a schedule of its own"
            )
    return out


def sweep_grid(name: str) -> tuple[list[int], list[int]]:
    """The windows and rare counts of the grid sweep ``conf/sweep/<name>.yaml`` (comma-separated values)."""
    from omegaconf import OmegaConf

    path = REPO_ROOT / "conf" / "sweep" / f"{name}.yaml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in path.parent.glob("*.yaml")))
        raise SystemExit(f"error: --sweep {name}: no {path}; sweeps: {known}")
    params = OmegaConf.load(path).get("hydra", {}).get("sweeper", {}).get("params", {})
    values = [str(params.get(key, "")) for key in ("model.window", "model.rare")]
    if not all(v and all(x.strip().isdigit() for x in v.split(",")) for v in values):
        raise SystemExit(
            f"error: --sweep {name}: {path} is not a grid of model.window and model.rare values (comma-separated "
            "integers); an Optuna search has no grid to check"
        )
    ws, rs = ([int(x) for x in v.split(",")] for v in values)
    return sorted(set(ws)), sorted(set(rs))


def chosen_arch(rows: list[dict[str, str]], arch: str | None, what: str) -> str | None:
    """The structured architecture the report is of: ``arch``, else the one the structured rows hold (None
    without structured rows); rows of several are an error naming them (a tiny model's point in the base
    model's heatmap, compared with another model's dense run, or two dense baselines), and so is an ``arch``
    none of them holds (a typo)."""
    archs = sorted({r["arch"] for r in rows if r["window"]})
    if arch is not None:
        if not arch.startswith("structured_"):
            raise SystemExit(f"error: --arch {arch}: give the structured architecture (structured_...)")
        if archs and arch not in archs:
            raise SystemExit(
                f"error: --arch {arch}: no structured run of {what} is of it; they are of {', '.join(archs)}"
            )
        return arch
    if len(archs) > 1:
        raise SystemExit(
            f"error: the structured runs of {what} are of {len(archs)} architectures ({', '.join(archs)}); "
            "pick one with --arch"
        )
    return archs[0] if archs else None


def heatmap(
    points: dict[tuple[int, int], float], title: str, label: str, png: Path, ws: list[int], rs: list[int]
) -> None:
    grid = [[points.get((w, r), float("nan")) for w in ws] for r in rs]
    annotated_heatmap(grid, ws, rs, xlabel="window w", ylabel="rare tokens r", label=label, title=title, png=png)


def _mixed_provenance(rows: list[dict[str, str]]) -> str:
    """A sentence when ``rows`` (the runs a verdict compares) were trained at several commits or on several
    machines, or on machines a row does not name: their differences are then not the settings' alone."""
    commits = sorted({short_commit(r.get("train_commit") or r["git_commit"]) for r in rows})
    machines = sorted({r.get("train_machine") or "" for r in rows})
    if len(commits) == 1 and len(machines) == 1 and machines[0]:
        return ""
    known = [m for m in machines if m]
    where = (
        "on machines the rows do not record (no *trained on*)"
        if not known
        else f"on machines not all recorded ({', '.join(known)} and rows without *trained on*)"
        if len(known) < len(machines)
        else f"on {len(machines)} machines ({', '.join(machines)})"
        if len(machines) > 1
        else f"on one machine ({machines[0]})"
    )
    return (
        f"The runs compared were trained at {len(commits)} commit{'s' * (len(commits) > 1)} "
        f"({', '.join(commits)}) {where}: their differences may come from the code or the machine as well as from "
        "the settings (one setting trained again on another CPU can score otherwise: see its re-runs on the "
        "leaderboard)."
    )


def report(
    results_dir: Path,
    data: str,
    schedule: str,
    test_set: str,
    out_dir: Path,
    heads: str = "auto",
    seed: str | None = None,
    grid_of: str | None = None,
    options: str = "",
    arch: str | None = None,
) -> str:
    """The sweep's table, heatmaps and verdict, from each run's first evaluation.

    The heatmaps hold the runs with role mix ``heads``, dense cross-attention and the ``options`` column
    ``options`` (none by default; ``beam=4`` for a sweep decoded with another beam than its schedule's),
    one run per (w, r); other runs of the same data and schedule are listed in the table only.  ``seed``: only
    the runs of that seed (needed when the schedule has several).  The points of the grid (the sweep
    ``grid_of``'s, else every (w, r) of the windows and rare counts found) that have no run are named, and the
    verdict says it covers only the others.  ``arch``: the structured architecture (needed when the rows hold
    several), whose dense baseline is the same name without ``structured_``."""
    if heads != "auto" and not heads.startswith("roles:"):  # the rows hold a mix in its one spelling
        with contextlib.suppress(ValueError):  # one that does not parse finds no rows: the error lists those there
            heads = role_mix_text(heads)
    csv_path = ResultsFolder(results_dir).leaderboard
    if not csv_path.is_file():
        raise SystemExit(
            f"error: {csv_path} does not exist; give --results-dir the folder whose leaderboard.csv the sweep's "
            "runs were evaluated into (default: results/), or run the sweep first (structmt-run -m +sweep=wr_small)"
        )
    board = read_rows(csv_path)
    rows = sweep_rows(board, data, schedule, test_set, seed)
    what = f"data={data} schedule={schedule} test_set={test_set}" + (f" seed={seed}" if seed else "")
    arch = chosen_arch(rows, arch, what)
    if arch is not None:  # one model and its dense baseline
        dense = ModelSpec(arch=arch).dense_arch
        rows = [r for r in rows if r["arch"] == (arch if r["window"] else dense)]
    decoding = " ".join(o for o in options.split() if o.startswith(tuple(f"{key}=" for key in DECODING)))
    dense = list(cells([r for r in rows if not r["window"] and r["options"] == decoding], what).values())
    grid = cells(
        [r for r in rows if r["window"] and r["heads"] == heads and not r["cross"] and r["options"] == options], what
    )
    outside: list[dict[str, str]] = []
    if grid_of:  # the sweep's grid: a run at another (w, r) is listed, never drawn or the best point
        ws, rs = sweep_grid(grid_of)
        outside = [row for (w, r), row in grid.items() if (int(w), int(r)) not in {(x, y) for x in ws for y in rs}]
        grid = {key: row for key, row in grid.items() if row not in outside}
    points = list(grid.values())
    if len(seeds := sorted({r["seed"] for r in points + dense})) > 1:  # a point would face another seed's dense run
        raise SystemExit(
            f"error: the runs of {what} are of seeds {', '.join(seeds)}, and each point is compared with the dense "
            "baseline of its own seed: pick one seed with --seed"
        )
    others = [r for r in rows if r["window"] and r not in points]
    if grid_of and not points and outside:
        raise SystemExit(
            f"error: no run of {what} heads={heads} lies on the grid of --sweep {grid_of} (w in {ws}, r in {rs}); "
            "runs at " + ", ".join(f"w={r['window']} r={r['rare']}" for r in outside) + " lie outside it"
        )
    if not points:
        structured = [r for r in rows if r["window"]]
        wanted = {"data": data, "schedule": schedule, "test_set": test_set} | ({"seed": seed} if seed else {})
        why = (
            absent(structured, {"heads": heads, "cross": "", "options": options})
            if structured
            else absent(board, wanted) or "only dense runs"
        )
        raise SystemExit(
            f"error: no structured rows for {what} heads={heads} with dense cross-attention and options "
            f"{options!r} in {csv_path}; {why} (--options selects another options column)"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"sweep_{name_part(data)}_{name_part(schedule)}_{name_part(test_set)}"
    stem += f"_seed{name_part(seed)}" if seed else ""  # one page per seed
    stem += f"_heads-{name_part(heads)}" if heads != "auto" else ""  # and per role mix
    stem += f"_options-{name_part(options)}" if options else ""  # and per options
    stem += f"_arch-{name_part(arch)}" if arch != DEFAULT_ARCH else ""  # and per architecture
    bleu = {(int(w), int(r)): float(row["bleu"]) for (w, r), row in grid.items()}
    cost = {(int(w), int(r)): float(row["train_tokens_per_s"]) for (w, r), row in grid.items()}
    if not grid_of:
        ws, rs = sorted({w for w, _ in bleu}), sorted({r for _, r in bleu})
    missing = [(w, r) for w in ws for r in rs if (w, r) not in bleu]
    base = f" (dense {score_text(dense[0]['bleu'])})" if dense else ""
    title = f"sacreBLEU, {data} {test_set}, schedule {schedule}{base}"
    heatmap(bleu, title, "BLEU", out_dir / f"{stem}_bleu.png", ws, rs)
    heatmap(cost, f"training target tokens/s, schedule {schedule}", "tokens/s", out_dir / f"{stem}_cost.png", ws, rs)
    lines = [
        f"# Sweep over (w, r): {data}, {test_set}, schedule `{schedule}`, `{arch}`",
        "",
        f"Generated by `structmt-sweep-report --data {shlex.quote(data)} --schedule {shlex.quote(schedule)} "
        f"--test-set {shlex.quote(test_set)}"  # "test_2016_flickr[:100]" is quoted
        + (f" --heads {shlex.quote(heads)}" if heads != "auto" else "")  # "syn:1;rare:1" is quoted
        + (f" --seed {seed}" if seed else "")
        + (f" --options {shlex.quote(options)}" if options else "")
        + (f" --arch {arch}" if arch != DEFAULT_ARCH else "")
        + (f" --sweep {grid_of}" if grid_of else "")
        + (
            f" --results-dir {shlex.quote(row_text(Path(results_dir)))}"
            if Path(results_dir).resolve() != RESULTS_DIR.resolve()
            else ""
        )
        + (
            f" --out-dir {shlex.quote(row_text(out_dir))}"
            if out_dir.resolve() != ResultsFolder(results_dir).sweeps.resolve()
            else ""
        )
        + f"` from `{row_text(csv_path)}`.",
        "",
        "| model | w | r | heads | cross | seed | BLEU | chrF | p vs dense | train tokens/s | train s | trained on "
        "| run | commit |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    table = dense + sorted(points, key=lambda r: (int(r["window"]), int(r["rare"]))) + others
    for r in table:
        kind = "dense" if not r["window"] else " ".join(filter(None, ("structured", r["options"])))
        kind += " (outside the grid)" if grid_of and r in outside else ""
        lines.append(
            f"| {kind} | {r['window']} | {r['rare']} | {r['heads']} | {r['cross']} | {r['seed']} | "
            f"{score_text(r['bleu'])} | {score_text(r['chrf'])} | {p_text(r['p_value_vs_dense'])} | "
            f"{r['train_tokens_per_s']} | {r['train_seconds']} | "
            f"{r.get('train_machine') or '–'} | {r['run_id']} | {short_commit(r['git_commit'])} |"
        )
    signatures: dict[str, list[str]] = {}
    for r in table:
        signatures.setdefault(r["bleu_signature"], []).append(r["run_id"])
    lines += [
        "",
        f"The heatmaps show the runs with role mix `{heads}` and dense cross-attention. Training tokens/s "
        "are as measured in each run, on the machine *trained on* names (with `train.threads` torch threads), "
        "so they compare fairly only between runs that shared the machine in the same way.",
        "",
        f"![BLEU]({stem}_bleu.png) ![cost]({stem}_cost.png)",
        "",
    ]
    if len(signatures) == 1:
        lines += [f"BLEU signature of every row: `{next(iter(signatures))}`.", ""]
    else:  # another sacreBLEU version or tokenizer on the machine that scored some runs
        lines += [
            f"**The rows were scored with {len(signatures)} BLEU signatures**, whose scores do not compare: "
            + "; ".join(f"`{sig}`: {', '.join(runs)}" for sig, runs in signatures.items())
            + ".",
            "",
        ]
    compared = {r["bleu_signature"] for r in dense + points}
    if missing:
        lines += [
            f"**Missing: {len(missing)} of the {len(ws) * len(rs)} points of the grid have no evaluated run** "
            "(failed, unfinished or not run): " + ", ".join(f"w={w} r={r}" for w, r in missing) + ". What follows "
            "covers the other points only.",
            "",
        ]
    if len(compared) > 1:
        lines.append(
            "No verdict: the runs it would compare (the dense baseline, the points of the heatmaps) were scored with "
            "different BLEU signatures (above), whose scores do not compare."
        )
    elif dense:
        d = float(dense[0]["bleu"])
        best = max(points, key=lambda r: float(r["bleu"]))
        p_vs_dense = p_text(best["p_value_vs_dense"], relation=True) or "= n/a"
        verdict = "at or above" if float(best["bleu"]) >= d else "below"
        lines.append(
            f"Highest test BLEU of the heatmaps (role mix {heads}, dense cross-attention): "
            f"w={best['window']}, r={best['rare']}: BLEU {score_text(best['bleu'])}, {verdict} "
            f"the dense baseline's {score_text(d)} (paired bootstrap p {p_vs_dense})."
        )
        if verdict == "below":
            lines.append("No point of the heatmaps reached the dense baseline.")
        if len(points) > 1:
            lines.append(
                f"That point is the highest of {len(points)} on the test set that scores it: its BLEU and p-value "
                "are not corrected for the choice. Choose a setting on validation BLEU (the objective of "
                "`+sweep=optuna_wr`) and report its test score."
            )
        if provenance := _mixed_provenance(dense + points):
            lines.append(provenance)
    else:
        lines.append(
            f"No verdict: the leaderboard has no dense run of {data}, schedule {schedule}, {test_set} to compare "
            "with (`structmt-run` trains it with `baseline=true`, the default)."
        )
    text = "\n".join(lines) + "\n"
    write_text_atomic(out_dir / f"{stem}.md", text)
    return text


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", default="multi30k_en_de", help="data set of the runs (default: multi30k_en_de)")
    p.add_argument("--schedule", default="cpu_demo", help="training schedule of the runs (default: cpu_demo)")
    p.add_argument("--test-set", default="test_2016_flickr", help="the test set scored (default: test_2016_flickr)")
    p.add_argument("--heads", default="auto", help="role mix of the runs in the heatmaps")
    p.add_argument(
        "--options",
        default="",
        help="the options column of the runs in the heatmaps (default: none; e.g. 'beam=4' for a sweep decoded "
        "with another beam than its schedule's, 'pos_window=2')",
    )
    p.add_argument(
        "--arch",
        help="the structured architecture of the runs (default: the one the rows hold; needed when they hold several); "
        "its dense baseline is the name without structured_",
    )
    p.add_argument("--seed", help="only the runs of this seed (default: all; a (w, r) with two runs is an error)")
    p.add_argument(
        "--sweep",
        metavar="NAME",
        help="the grid sweep that was run (conf/sweep/NAME.yaml, e.g. wr_small): its points without a run are named "
        "(default: the grid of the windows and rare counts found)",
    )
    p.add_argument(
        "--results-dir", type=Path, default=RESULTS_DIR, help="the folder of leaderboard.csv (default: results/)"
    )
    p.add_argument("--out-dir", type=output_dir, default=None, help="default: <results-dir>/sweeps")
    add_verbose_option(p)
    a = p.parse_args(argv)
    setup(a.verbose)
    out_dir = a.out_dir or ResultsFolder(a.results_dir).sweeps
    print(report(a.results_dir, a.data, a.schedule, a.test_set, out_dir, a.heads, a.seed, a.sweep, a.options, a.arch))


if __name__ == "__main__":
    main()
