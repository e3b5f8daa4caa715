"""The analysis's projections on the thesis's own attention matrices, beside its Tables 16 and 17.

    .venv/bin/python scripts/thesis_matrices.py PATH/matrix_list.pkl

``matrix_list.pkl`` is in the thesis's repository (EddieConti/Master-Thesis-UB, ``code experiments/``): the
attention of its model's 8 encoder heads on one 16-token sentence, padded to 350 × 350. It is read with an
unpickler that builds numpy arrays and nothing else. Their rows do not sum to 1: row masses reach exactly
1/0.9, as after attention dropout at rate 0.1 (each weight zeroed, or scaled by 1/0.9). The exact projections
here allow that (structmt-analyze refuses rows of mass above 1):

- unconstrained: X copies A inside the support, so |A - X| is A's mass outside it;
- row-stochastic: each row of X sums to 1 on the support; per row the optimum costs the mass outside plus
  |1 - the mass inside|;

each at the thesis's (w, num-pos) with the best num-pos columns (all column sets tried), divided by n².
It also runs the thesis's random procedure as structmt-analyze does (``thesis_random_search``, seed 0;
``--draws`` members per family and pair of coefficients, 30 as structmt-analyze by default: the thesis's own
loops also ran over a third coefficient, 11 values, so 330 draws match its number of members).
Prints a Markdown table; writes nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import pickle
import statistics
from pathlib import Path

import numpy as np
import torch

from structmt.analysis.project import THESIS_DRAWS, band_support, thesis_random_search
from structmt.analysis.report import THESIS_N, THESIS_SETTINGS, thesis_quote
from structmt.checkpoints import numpy_pickle_globals
from structmt.files import int_at_least


class ArraysOnly(pickle.Unpickler):
    """Builds numpy arrays and nothing else (the names structmt's checkpoint loading allows for them)."""

    def find_class(self, module: str, name: str) -> object:
        found = numpy_pickle_globals().get(f"{module}.{name}")
        if found is None:
            raise pickle.UnpicklingError(f"{module}.{name} is not a numpy array part: refused")
        return found


def load_crops(path: Path, n: int = THESIS_N) -> torch.Tensor:
    """``(heads, n, n)`` float64: each matrix's first n rows and columns, checked to hold all its rows' mass."""
    with path.open("rb") as f:
        matrices = [np.asarray(m, dtype=np.float64) for m in ArraysOnly(f).load()]
    crops = []
    for i, m in enumerate(matrices):
        if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] < n:
            raise SystemExit(f"error: {path}: matrix {i} has shape {m.shape}, not a square of at least {n}")
        if not np.allclose(m[:n].sum(1), m[:n, :n].sum(1)):
            raise SystemExit(f"error: {path}: matrix {i}'s first {n} rows attend beyond column {n}: not a crop")
        crops.append(m[:n, :n])
    return torch.tensor(np.stack(crops))


def exact(a: torch.Tensor, w: int, r: int) -> tuple[float, float]:
    """``(unconstrained, row-stochastic)`` optimum |A - X| / n² over every set of r columns beside the band."""
    n = a.size(-1)
    best = [float("inf"), float("inf")]
    for cols in itertools.combinations(range(n), r):
        support = band_support(n, w)
        support[:, list(cols)] = True
        inside, outside = (a * support).sum(1), (a * ~support).sum(1)
        best[0] = min(best[0], float(outside.sum()))
        best[1] = min(best[1], float((outside + (1 - inside).abs()).sum()))
    return best[0] / n**2, best[1] / n**2


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("pickle", type=Path, help="the thesis's code experiments/matrix_list.pkl")
    p.add_argument(
        "--draws",
        type=int_at_least(1),
        default=THESIS_DRAWS,
        help=f"the random procedure's members per family and (c_d, c_sp) pair (default {THESIS_DRAWS}; "
        "330 = the thesis's count over its three coefficients)",
    )
    a = p.parse_args()
    crops = load_crops(a.pickle)
    rows = crops.sum(-1)
    digest = hashlib.sha256(a.pickle.read_bytes()).hexdigest()
    print(f"{a.pickle} (sha256 {digest[:16]}…): {crops.size(0)} heads, {THESIS_N}×{THESIS_N} crops")
    floor = float((rows - 1).abs().sum(-1).mean()) / THESIS_N**2
    at_most = int(((rows - 1 / 0.9).abs() < 1e-6).sum())  # float32 weights: an exact row is within 2e-7
    print(
        f"row mass: {float(rows.min()):.4f} to {float(rows.max()):.4f}; {at_most} of {rows.numel()} rows at 1/0.9 "
        f"(within 1e-6); no row-stochastic X gets below sum |row mass - 1| / n² = {floor:.4f} per entry (mean over "
        f"heads); the procedure draws {a.draws} members per family and pair of coefficients\n"
    )
    print(
        "| w | num-pos | thesis (Tables 16/17), mean | its procedure here | unconstrained | row-stochastic "
        "| thesis ÷ row-stochastic |"
    )
    print("|---|---|---|---|---|---|---|")
    for w, r in THESIS_SETTINGS:
        quote = thesis_quote(w, r)
        assert quote is not None
        fits = [exact(c, w, r) for c in crops]
        unconstrained, row_stochastic = (statistics.mean(f[k] for f in fits) for k in (0, 1))
        search = statistics.mean(s.per_entry for s in thesis_random_search(crops.float(), w, r, a.draws))
        thesis = quote["mean_error_per_entry"]
        print(
            f"| {w} | {r} | {thesis:.4f} | {search:.4f} | {unconstrained:.4f} | {row_stochastic:.4f} | "
            f"{thesis / row_stochastic:.1f}× |"
        )


if __name__ == "__main__":
    main()
