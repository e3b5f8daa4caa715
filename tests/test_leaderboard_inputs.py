"""What the leaderboard does with a CSV that is not as its writer left it (a hand edit, another tool), and
that every table and figure drawn from it shows each run's first evaluation and averages only seeds."""

from __future__ import annotations

import codecs
import csv
import re
import shutil
import threading
from pathlib import Path

import pytest
from conftest import copy_benchmark_inputs

from structmt.pipeline import leaderboard, sweep_report

pytestmark = pytest.mark.reliability  # failure handling: docs/reliability.md

REPO = Path(__file__).resolve().parents[1]
DENSE = "multi30k_en_de-cpu_demo-dense-fc731a8c"


@pytest.fixture
def board(tmp_path: Path) -> Path:
    """A copy of the committed leaderboard (header on line 1, the first row, DENSE on test_2016_flickr, on 2)."""
    path = tmp_path / "leaderboard.csv"
    shutil.copyfile(REPO / "results" / "leaderboard.csv", path)
    return path


def _edit(path: Path, edit) -> bytes:
    """Apply ``edit`` to the file's lines (bytes, without newlines); returns the new content."""
    lines = path.read_bytes().split(b"\n")
    edit(lines)
    path.write_bytes(b"\n".join(lines))
    return path.read_bytes()


def _new_row(path: Path) -> dict[str, str]:
    return leaderboard.read_rows(path)[0] | {"run_id": "NEWRUN", "hypothesis": "results/hyps/NEWRUN.de"}


def _rejected(path: Path, message: str) -> None:
    """Reading ``path`` and adding a row to it both fail with exactly ``message``; the file is left as it was."""
    before = path.read_bytes()
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        leaderboard.read_rows(path)
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        leaderboard.add_rows(path, [{"run_id": "NEWRUN", "test_set": "t", "bleu": 1.0}])
    assert path.read_bytes() == before


# --- #2: a rewrite never drops a column or a field ---------------------------------------------------------


@pytest.mark.parametrize(
    "edit, what",
    [
        (lambda h: h + b",notes", "unknown ['notes'], missing []"),
        (lambda h: h.replace(b",bleu,", b",BLEU,"), "unknown ['BLEU'], missing ['bleu']"),
        (lambda h: h.replace(b"bleu,chrf", b"chrf,bleu"), "repeated or reordered columns"),
    ],
)
def test_a_header_that_is_not_the_columns_is_rejected_and_nothing_is_rewritten(board, edit, what):
    def header(lines: list[bytes]) -> None:
        lines[0] = edit(lines[0])
        if b"notes" in lines[0]:
            lines[1:-1] = [line + b",checked by hand" for line in lines[1:-1]]

    _edit(board, header)
    _rejected(
        board,
        f"{board}:1: the header is not the leaderboard's columns ({what}); adding a row rewrites the file "
        f"with exactly those columns and would lose the others, so fix the header by hand (it is "
        f"{','.join(leaderboard.COLUMNS)}) and keep other columns in a file of their own",
    )


@pytest.mark.parametrize("line, edit, fields", [(2, lambda x: x + b",oops", 28), (5, lambda x: x[: x.rfind(b",")], 26)])
def test_a_row_with_a_stray_or_a_missing_field_is_rejected_naming_its_line(board, line, edit, fields):
    def stray(lines: list[bytes]) -> None:
        lines[line - 1] = edit(lines[line - 1])

    _edit(board, stray)
    assert len(leaderboard.COLUMNS) == 27
    _rejected(
        board,
        f"{board}:{line}: {fields} fields where the header has 27 (a stray or missing comma, or a field "
        "with a comma but no quotes?); fix the line by hand",
    )


def test_lines_are_counted_in_the_file_when_a_quoted_field_holds_a_newline(board):
    def edit(lines: list[bytes]) -> None:
        lines[1] = lines[1] + b'"CPU A\nand B"'  # its (empty) train_machine field: now two lines, 2 and 3
        lines[2] = lines[2] + b",oops"  # the next row starts on line 4

    _edit(board, edit)
    with pytest.raises(ValueError, match=f"^{re.escape(str(board))}:4: 28 fields where the header has 27 "):
        leaderboard.read_rows(board)


def test_a_blank_line_is_skipped_and_the_lines_after_it_keep_their_numbers(board):
    """A blank line (a hand edit, an editor's extra line) holds no row: the rows are read as they were, and a bad
    row after it is named by its line in the file."""
    rows = leaderboard.read_rows(board)
    _edit(board, lambda lines: lines.insert(2, b""))
    assert leaderboard.read_rows(board) == rows
    _edit(board, lambda lines: lines.__setitem__(3, lines[3] + b",oops"))  # the second row, now on line 4
    with pytest.raises(ValueError, match=f"^{re.escape(str(board))}:4: 28 fields where the header has 27 "):
        leaderboard.read_rows(board)


# --- #13: other hand edits ---------------------------------------------------------------------------------


def test_a_utf8_bom_is_read_and_not_written_back(board):
    original = board.read_bytes()
    rows = leaderboard.read_rows(board)
    board.write_bytes(codecs.BOM_UTF8 + original)
    assert leaderboard.read_rows(board) == rows
    new = _new_row(board)
    assert leaderboard.add_rows(board, [new]) == 1
    assert board.read_bytes().startswith(original)  # no BOM, every byte of the rows kept
    assert leaderboard.read_rows(board) == rows + [new]


def test_a_byte_that_is_not_utf8_is_rejected_naming_its_line(board):
    _edit(board, lambda lines: lines.__setitem__(3, lines[3].replace(b"cpu_demo", b"cpu_d\xe9mo", 1)))
    _rejected(
        board,
        f"{board}:4: invalid UTF-8 at byte 20 of the line (0xe9: invalid continuation byte); save the file as UTF-8",
    )


@pytest.mark.parametrize(
    "old, new, problem",
    [
        (b",14.84,36.39,", b",14.84x,36.39,", "column bleu is '14.84x', not a number"),
        (b",14.84,36.39,", b",nan,36.39,", "column bleu is 'nan', not a number"),
        (b",14.84,36.39,", b",,36.39,", "column bleu is '', not a number"),
        (b",2350080,500,", b",2350080,5OO,", "column updates is '5OO', not an integer"),
        # a hand edit's spaces: int(" 3") is 3, but the labels are compared as they are (a seed left out)
        (b",14.84,36.39,", b", 14.84,36.39,", "column bleu is ' 14.84', with spaces around it"),
        (
            b",test_2016_flickr,",
            b",test_2016_flickr ,",
            "column test_set is 'test_2016_flickr ', with spaces around it",
        ),
    ],
)
def test_a_bad_number_is_rejected_naming_its_line_and_column(board, old, new, problem):
    _edit(board, lambda lines: lines.__setitem__(1, lines[1].replace(old, new, 1)))
    _rejected(board, f"{board}:2: {problem}; fix the value by hand")


def test_a_new_row_with_a_bad_number_is_not_written(board):
    before = board.read_bytes()
    with pytest.raises(ValueError, match=r"^leaderboard row of NEWRUN on test_2016_flickr: column seed is '1\.5', "):
        leaderboard.add_rows(board, [_new_row(board) | {"seed": 1.5}])
    assert board.read_bytes() == before


@pytest.mark.parametrize("p", [-0.5, 0, 1.5])
def test_a_p_value_outside_0_to_1_is_refused(board, p):
    """A p-value is in (0, 1]: 0 would be printed as the bootstrap's floor, ≤ 0.001."""
    before = board.read_bytes()
    with pytest.raises(ValueError, match=rf"column p_value_vs_dense is '{p}', not a p-value \(0 < p <= 1\)"):
        leaderboard.add_rows(board, [_new_row(board) | {"p_value_vs_dense": p}])
    assert board.read_bytes() == before
    leaderboard.add_rows(board, [_new_row(board) | {"p_value_vs_dense": 1.0}])  # identical hypotheses: p = 1


def test_a_duplicated_row_is_an_error_naming_both_lines_not_a_rerun(board):
    _edit(board, lambda lines: lines.insert(3, lines[1]))
    message = (
        f"{board}:4 records the same evaluation (run_id, test_set, hypothesis) as line 2 and is identical: "
        "a re-run has its own hypothesis file; delete the line that is wrong"
    )
    _rejected(board, message)
    _edit(board, lambda lines: lines.__setitem__(3, lines[3].replace(b",14.84,", b",14.85,")))
    _rejected(board, message.replace("is identical", "differs only in ['bleu']"))


def test_one_row_given_twice_in_one_call_is_added_once(board):
    rows = leaderboard.read_rows(board)
    new = _new_row(board)
    assert leaderboard.add_rows(board, [new, dict(new)]) == 1
    assert leaderboard.read_rows(board) == rows + [new]


def test_a_row_added_again_without_some_scores_is_not_a_row_scored_otherwise(board):
    """A row given again with its chrF left empty (not scored this time) matches the stored one: nothing is added
    and nothing is refused; a chrF that differs is refused."""
    before = board.read_bytes()
    again = leaderboard.read_rows(board)[0] | {"chrf": "", "chrf_signature": ""}
    assert leaderboard.add_rows(board, [again]) == 0
    assert board.read_bytes() == before
    with pytest.raises(ValueError, match=r"is recorded with other scores \(chrf 36\.39 there, 36\.4 now\)"):
        leaderboard.add_rows(board, [again | {"chrf": 36.4}])


# --- #3: a headline row averages seeds of one setting only --------------------------------------------------


def _reproduce_dense(rows: list[dict[str, str]]) -> dict[str, str]:
    return next(r for r in rows if r["run_id"] == "multi30k_en_de-reproduce-dense-d5ac2722")


def test_a_hand_sorted_csv_gives_the_same_headline_first_evaluations_and_pairs(board):
    """The first evaluation of a run is the row with the run's own hypothesis file, wherever it stands: with the
    rows in reverse order, a re-run was averaged as the seed's score (dense 37.23 for 37.24) and listed the first
    evaluation as a re-run."""
    from structmt.pipeline.evaluation import first_evaluation

    rows = leaderboard.read_rows(board)
    backwards = rows[::-1]

    def reruns_unordered(table: str) -> list[tuple[str, list[str]]]:
        """Each line with its re-runs cell as a set: re-runs keep the file's order (leaderboard.evaluations)."""
        cells = [line.rpartition(" | ") for line in table.splitlines()]
        return [(head, sorted(e.strip() for e in re.findall(r"[^,(]+\([^)]*\)", last))) for head, _, last in cells]

    for schedule in ("reproduce", "cpu_demo"):
        got, want = (leaderboard.headline(r, "multi30k_en_de", schedule) for r in (backwards, rows))
        assert reruns_unordered(got) == reruns_unordered(want) and got.count("again, ") == want.count("again, ")
    dense = _reproduce_dense(rows)
    first = first_evaluation(backwards, dense["run_id"], "test_2016_flickr")
    assert first is not None and first["hypothesis"] == dense["hypothesis"] and first["bleu"] == "37.45"


def test_headline_refuses_seeds_scored_with_another_sacrebleu_signature(board):
    rows = leaderboard.read_rows(board)
    dense = _reproduce_dense(rows)
    for column in ("bleu_signature", "chrf_signature"):
        other = [r | {column: r[column].replace("version:2.6.0", "version:2.0.0")} if r is dense else r for r in rows]
        with pytest.raises(ValueError, match=rf"\({column} nrefs.* are not seeds of one setting"):
            leaderboard.headline(other, "multi30k_en_de", "reproduce")


def test_headline_refuses_two_runs_that_claim_one_seed(board):
    rows = leaderboard.read_rows(board)
    # train.lr=0.0001: another run id, the same labels and seed
    other = _reproduce_dense(rows) | {"run_id": "multi30k_en_de-reproduce-dense-0badc0de", "bleu": "3.10"}
    with pytest.raises(
        ValueError,
        match="^"
        + re.escape(
            "headline of reproduce on multi30k_en_de, test_2016_flickr, transformer_multi30k: runs "
            "multi30k_en_de-reproduce-dense-d5ac2722 and multi30k_en_de-reproduce-dense-0badc0de both claim seed 1: "
            "they are different settings under one schedule name; give one of them a schedule name of its own"
        )
        + "$",
    ):
        leaderboard.headline(rows + [other | {"hypothesis": "x.de"}], "multi30k_en_de", "reproduce")


def test_headline_refuses_runs_that_differ_in_updates_and_still_lists_reruns(board):
    rows = leaderboard.read_rows(board)
    dense = _reproduce_dense(rows)
    shorter = dense | {"run_id": "multi30k_en_de-reproduce-dense-5eed4444", "seed": "4", "updates": "1000"}
    with pytest.raises(
        ValueError,
        match="^"
        + re.escape(
            "headline of reproduce on multi30k_en_de, test_2016_flickr, transformer_multi30k: runs "
            "multi30k_en_de-reproduce-dense-d5ac2722 (updates 3500) and multi30k_en_de-reproduce-dense-5eed4444 "
            "(updates 1000) are not seeds of one setting"
        ),
    ):
        leaderboard.headline(rows + [shorter], "multi30k_en_de", "reproduce")
    for column, value in (("direction", "de-en"), ("params", "123")):  # the other seed-invariant columns
        other = dense | {"run_id": "multi30k_en_de-reproduce-dense-5eed5555", "seed": "4", column: value}
        with pytest.raises(ValueError, match=re.escape(f"-5eed5555 ({column} {value}) are not seeds of one setting")):
            leaderboard.headline(rows + [other], "multi30k_en_de", "reproduce")
    # a re-run of the same run id is not another seed: listed as a re-run, not averaged
    before = leaderboard.headline(rows, "multi30k_en_de", "reproduce").splitlines()[2]
    rerun = dense | {"bleu": "3.10", "hypothesis": "x.de", "git_commit": "c0ffee" + "0" * 34}
    assert before.endswith(" | 1: 37.41 (trained again, ff534f8b), 2: 37.11 (trained again, 99bfdd1d) |")
    after = leaderboard.headline(rows + [rerun], "multi30k_en_de", "reproduce").splitlines()[2]
    assert after == before.replace("ff534f8b), ", "ff534f8b), 1: 3.10 (decoded again, c0ffee00), ")
    # the retrained seed-2 model decoded again: like an earlier evaluation's training (the re-run's), not the first's
    (retrained,) = [r for r in rows if r["run_id"] == dense["run_id"].replace("d5ac2722", "4a27cf14") and
                    r["test_set"] == dense["test_set"] and r["train_commit"].startswith("99bfdd1d")]  # fmt: skip
    again = retrained | {"bleu": "37.10", "hypothesis": "y.de", "git_commit": "d00d" + "0" * 36}
    last = leaderboard.headline(rows + [again], "multi30k_en_de", "reproduce").splitlines()[2]
    assert last == before.replace("99bfdd1d) |", "99bfdd1d), 2: 37.10 (decoded again, d00d0000) |")


def test_a_model_trained_again_at_the_same_commit_is_a_rerun_trained_again(board):
    """A run id trained again at the same commit has other weights: its training time tells it apart, so the
    headline lists its evaluation as trained again, not as the first model decoded again."""
    rows = leaderboard.read_rows(board)
    before = leaderboard.headline(rows, "multi30k_en_de", "reproduce").splitlines()[2]
    dense = _reproduce_dense(rows)
    retrained = dense | {"bleu": "3.10", "hypothesis": "x.de", "train_seconds": "13100.0", "git_commit": "c0ffee" * 6}
    after = leaderboard.headline(rows + [retrained], "multi30k_en_de", "reproduce").splitlines()[2]
    assert after == before.replace("ff534f8b), ", "ff534f8b), 1: 3.10 (trained again, afdacb57), ")
    same = dense | {"bleu": "3.10", "hypothesis": "x.de", "train_seconds": "13030.04", "git_commit": "c0ffee" * 6}
    after = leaderboard.headline(rows + [same], "multi30k_en_de", "reproduce").splitlines()[2]
    assert after == before.replace("ff534f8b), ", "ff534f8b), 1: 3.10 (decoded again, c0ffeec0), ")


def test_headline_lists_seeds_in_numeric_order(board):
    """Seed 10 comes after seed 2 in a headline row, not between 1 and 2 as text would sort it."""
    rows = leaderboard.read_rows(board)
    tenth = _reproduce_dense(rows) | {"run_id": "multi30k_en_de-reproduce-dense-5eed0010", "seed": "10",
                                      "hypothesis": "z.de", "bleu": "30.00"}  # fmt: skip
    row = leaderboard.headline(rows + [tenth], "multi30k_en_de", "reproduce").splitlines()[2]
    assert "| 1: 37.45, 2: 37.48, 3: 36.80, 10: 30.00 |" in row
    assert "| 1: afdacb57 → 15f3a16d, 2: a69e5e2c → 73bc302d, 3: 6a986c8d → f3aed3e3, 10: afdacb57 → 15f3a16d |" in row


def test_headline_takes_a_seed_written_with_a_leading_zero_for_the_same_seed(board):
    """Seed ``01`` (a hand edit) is seed 1: a run with it beside seed 1's run is a second run of that seed, never
    averaged as another seed."""
    rows = leaderboard.read_rows(board)
    other = _reproduce_dense(rows) | {"run_id": "multi30k_en_de-reproduce-dense-0badc0de", "seed": "01",
                                      "hypothesis": "x.de"}  # fmt: skip
    with pytest.raises(
        ValueError,
        match=re.escape(
            "runs multi30k_en_de-reproduce-dense-d5ac2722 and multi30k_en_de-reproduce-dense-0badc0de both claim "
            "seed 1:"
        ),
    ):
        leaderboard.headline(rows + [other], "multi30k_en_de", "reproduce")


def test_headline_refuses_runs_of_another_size_and_keeps_other_data_out(board):
    """A model made bigger through extra fairseq arguments keeps its labels: its ``params`` tell it apart, so it
    is never averaged as another seed; runs of another data set never enter the table."""
    rows = leaderboard.read_rows(board)
    dense = _reproduce_dense(rows)
    bigger = dense | {"run_id": "multi30k_en_de-reproduce-dense-5eed0004", "seed": "4", "params": "1000"}
    with pytest.raises(
        ValueError,
        match=re.escape(
            f"runs multi30k_en_de-reproduce-dense-d5ac2722 (params {dense['params']}) and "
            "multi30k_en_de-reproduce-dense-5eed0004 (params 1000) are not seeds of one setting"
        ),
    ):
        leaderboard.headline(rows + [bigger], "multi30k_en_de", "reproduce")
    table = leaderboard.headline(rows, "multi30k_en_de", "reproduce")
    reverse = [r | {"data": "multi30k_en_de-de-en", "run_id": r["run_id"] + "-de-en", "seed": "9", "bleu": "1.00"}
               for r in rows if r["schedule"] == "reproduce"]  # fmt: skip
    assert leaderboard.headline(rows + reverse, "multi30k_en_de", "reproduce") == table


def test_the_markdown_ranks_first_evaluations_by_bleu_with_each_reruns_under_its_run(tmp_path):
    """Best BLEU first by each run's first evaluation, a re-run (even a worse or better one) right under it, and
    every cell in its column."""
    rows = [
        {c: "" for c in leaderboard.COLUMNS}
        | {"run_id": run, "test_set": "t", "arch": "a", "bleu": bleu, "chrf": chrf, "seed": "1", "updates": "10"}
        | {"hypothesis": f"{run}.{bleu}.de", "bleu_signature": "sig", "git_commit": "c" * 40}
        for run, bleu, chrf in [("A", "20.0", "50.0"), ("B", "30.0", "55.0"), ("B", "10.0", "40.0")]
    ]
    rows[0] |= {"window": "3", "rare": "2", "heads": "auto", "cross": "w4/slope0.97", "p_value_vs_dense": "0.02"}
    rows[0] |= {"options": "error=sink:1", "train_seconds": "12.0", "train_tokens_per_s": "34.5", "machine": "M"}
    rows[0] |= {"train_machine": "T"}
    table = [line for line in leaderboard.render_markdown(rows).splitlines() if line.startswith("| ")][1:]
    assert table == [
        "| B | a |  |  |  |  | 1 | 30.00 | 55.00 |  | 10 |  |  | – | cccccccc | – |",
        "| ↳ *re-run* 1 | a |  |  |  |  | 1 | 10.00 | 40.00 |  | 10 |  |  | – | cccccccc | – |",
        "| A | a error=sink:1 | 3 | 2 | auto | w4/slope0.97 | 1 | 20.00 | 50.00 | 0.02 | 10 | 12.0 | 34.5 "
        "| T | cccccccc | M |",
    ]


def test_each_test_sets_section_names_its_own_bleu_signatures(board):
    """A test set's section lists the signatures of its own rows: taken from every row, they passed the tests,
    whose rows all shared one."""
    rows = leaderboard.read_rows(board)
    rows = [r | {"bleu_signature": f"sig-of-{r['test_set']}"} for r in rows]
    sections = leaderboard.render_markdown(rows).split("\n## ")[1:]
    assert len(sections) == len({r["test_set"] for r in rows}) >= 2
    for section in sections:
        test = section.splitlines()[0]
        assert section.rstrip().endswith(f"BLEU signature: `sig-of-{test}`"), test


def test_the_committed_leaderboard_page_is_the_csv_rendered_now():
    """``results/LEADERBOARD.md`` is what the code renders from the committed CSV: a row edited in one and not
    the other, or a rendering change not re-published, fails here."""
    rows = leaderboard.read_rows(REPO / "results" / "leaderboard.csv")
    assert (REPO / "results" / "LEADERBOARD.md").read_text(encoding="utf-8") == leaderboard.render_markdown(rows)


def test_headline_keeps_a_model_with_other_structure_options_apart_from_the_seeds(board):
    """A structured run with another option that has no column of its own (here ``error=sink:1``, as the
    pipeline labels it) is another model: its own headline row, never a fourth seed of the w=3, r=2 one."""
    from structmt.pipeline.spec import ModelSpec

    rows = leaderboard.read_rows(board)
    structured = next(r for r in rows if r["run_id"] == "multi30k_en_de-reproduce-w3-r2-c244007f")
    options = ModelSpec(error="sink:1", apply="encoder").options_label()
    assert options == "error=sink:1 apply=encoder" and ModelSpec(impl="reference").options_label() == ""
    sink = structured | {"run_id": "multi30k_en_de-reproduce-w3-r2-5eed0004", "seed": "4", "options": options}
    table = leaderboard.headline(rows + [sink], "multi30k_en_de", "reproduce")
    assert "| test_2016_flickr | structured_transformer_multi30k | 3 | 2 | 3 | 38.62 ± 0.25 |" in table  # as before
    assert "| test_2016_flickr | structured_transformer_multi30k error=sink:1 apply=encoder | 3 | 2 | 1 |" in table


def test_a_leaderboard_from_before_the_last_columns_is_read_and_written_with_them(board):
    rows = leaderboard.read_rows(board)
    _edit(board, lambda lines: lines.__setitem__(slice(None), [line.rsplit(b",", 4)[0] for line in lines if line]))
    assert board.read_bytes().split(b"\n")[0].endswith(b",hypothesis")  # no train_commit … train_machine
    old = leaderboard.read_rows(board)
    assert old == [r | {"train_commit": "", "machine": "", "options": "", "train_machine": ""} for r in rows]
    with pytest.raises(
        ValueError, match=r"the header is not the leaderboard's columns \(unknown \['notes'\], missing \[\]\)"
    ):
        _edit(board, lambda lines: lines.__setitem__(0, lines[0] + b",notes"))  # the columns after it may be absent
        leaderboard.read_rows(board)
    _edit(board, lambda lines: lines.__setitem__(0, lines[0].removesuffix(b",notes")))
    leaderboard.add_rows(board, [_new_row(board)])
    assert board.read_bytes().split(b"\n")[0].endswith(b",train_commit,machine,options,train_machine")
    _edit(board, lambda lines: lines.__setitem__(0, lines[0].replace(b",machine", b"")))  # one in the middle gone
    with pytest.raises(ValueError, match=r"the header is not the leaderboard's columns \(unknown \[\], missing"):
        leaderboard.read_rows(board)


def test_a_leaderboard_without_a_column_that_every_row_needs_is_refused_naming_it(board):
    """Only the columns added last may be absent from an older file; one without the hypothesis column (its rows
    cut to match) is refused naming what is missing, not read with every hypothesis empty."""
    _edit(board, lambda lines: lines.__setitem__(slice(None), [line.rsplit(b",", 5)[0] for line in lines if line]))
    assert board.read_bytes().split(b"\n")[0].endswith(b",git_commit")
    _rejected(
        board,
        f"{board}:1: the header is not the leaderboard's columns (unknown [], missing ['hypothesis', 'train_commit', "
        "'machine', 'options', 'train_machine']); adding a row rewrites the file with exactly those columns and would "
        f"lose the others, so fix the header by hand (it is {','.join(leaderboard.COLUMNS)}) and keep other columns "
        "in a file of their own",
    )


# --- #21: an unknown --headline schedule ---------------------------------------------------------------------


def test_headline_of_an_unknown_schedule_or_data_lists_what_is_there(board, capsys):
    args = ["--results-dir", str(board.parent), "--headline"]
    with pytest.raises(SystemExit) as e:
        leaderboard.main(args + ["reprodcue"])
    assert str(e.value) == (
        f"error: {board} has no rows of schedule 'reprodcue' on multi30k_en_de; schedules there: "
        "cpu_demo, finetune, reproduce"
    )
    with pytest.raises(SystemExit) as e:
        leaderboard.main(args + ["reproduce", "--data", "multi30k_en_fr"])
    assert str(e.value) == f"error: {board} has no rows of --data multi30k_en_fr; data sets there: multi30k_en_de"
    leaderboard.main(args + ["reproduce"])
    rows = leaderboard.read_rows(board)
    assert capsys.readouterr().out == leaderboard.headline(rows, "multi30k_en_de", "reproduce") + "\n"


def test_options_that_headline_would_ignore_are_refused(board, capsys):
    """``--headline`` only prints: with ``--wandb`` the W&B table was silently not rebuilt, and ``--data`` without
    ``--headline`` was silently ignored."""
    before = board.parent.stat().st_mtime_ns, sorted(p.name for p in board.parent.iterdir())
    for args, message in [
        (["--headline", "reproduce", "--wandb"], "--headline only prints a table; rebuild the W&B table by a run"),
        (["--data", "multi30k_en_de"], "--data chooses the data set of --headline; pass --headline SCHEDULE"),
        # an unset variable in a script ("$SCHEDULE"): rewrote the pages as if no option were given
        (["--headline", ""], "--headline is empty; give a schedule name"),
        (["--headline", "reproduce", "--data", " "], "--data is empty; give a data set name"),
    ]:
        with pytest.raises(SystemExit) as e:
            leaderboard.main(["--results-dir", str(board.parent), "--wandb-dir", str(board.parent / "w"), *args])
        assert e.value.code == 2 and message in capsys.readouterr().err
    assert (board.parent.stat().st_mtime_ns, sorted(p.name for p in board.parent.iterdir())) == before


# --- #5: the chart shows what the markdown shows --------------------------------------------------------------


def _plotted(fig) -> dict[tuple[str, str], float]:
    """(run, test set) → the bar's BLEU, from each panel of a chart."""
    out = {}
    for ax in fig.axes:
        test = ax.get_title().split(",")[0]
        runs = [t.get_text() for t in ax.get_yticklabels()]
        out |= {(run, test): bar.get_width() for run, bar in zip(runs, ax.containers[0], strict=True)}
    return out


def test_the_chart_plots_each_runs_first_evaluation(board, monkeypatch):
    figures = []
    monkeypatch.setattr("structmt.figures.save", lambda fig, png: figures.append(fig))
    leaderboard.write_chart(board, board.parent / "leaderboard.png")
    plotted = _plotted(figures[0])
    first: dict[tuple[str, str], float] = {}
    with open(board, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            first.setdefault((r["run_id"], r["test_set"]), float(r["bleu"]))
    assert plotted == first
    assert plotted[DENSE, "test_2016_flickr"] == 14.84  # the re-run scored 15.72
    assert plotted["multi30k_en_de-reproduce-dense-d5ac2722", "test_2017_flickr"] == 28.42  # re-run: 27.39
    import matplotlib.pyplot as plt

    plt.close(figures[0])


def test_the_chart_keeps_its_size_with_any_number_of_runs(tmp_path, monkeypatch):
    """Its width once grew with runs × test sets, until matplotlib refused to draw it (over 2^16 pixels) and every
    later evaluation failed in publish; now it shows the best CHART_RUNS runs of each test set."""
    from matplotlib.image import imread

    rows = [
        {"run_id": f"run-{i:03d}", "test_set": test, "bleu": i / 10, "chrf": 50.0, "bleu_signature": "s"}
        for i in range(300)
        for test in ("test_2016_flickr", "test_2017_flickr")
    ]
    leaderboard.add_rows(tmp_path / "leaderboard.csv", rows)
    leaderboard.publish(tmp_path)
    height, width, _ = imread(tmp_path / "leaderboard.png").shape
    assert height < 1200 and width < 2000
    figures = []
    monkeypatch.setattr("structmt.figures.save", lambda fig, png: figures.append(fig))
    leaderboard.write_chart(tmp_path / "leaderboard.csv", tmp_path / "x.png")
    plotted = _plotted(figures[0])
    tests = ("test_2016_flickr", "test_2017_flickr")
    assert set(plotted) == {(f"run-{i:03d}", t) for i in range(300 - leaderboard.CHART_RUNS, 300) for t in tests}
    import matplotlib.pyplot as plt

    plt.close(figures[0])


def test_the_chart_says_how_many_runs_it_shows_only_when_it_leaves_some_out(tmp_path, monkeypatch):
    """A panel's title is its test set while it shows every run (exactly ``top`` of them included), and says
    "best ``top`` of N runs" once there are more."""
    figures = []
    monkeypatch.setattr("structmt.figures.save", lambda fig, png: figures.append(fig))
    rows = [
        {"run_id": f"run-{i}", "test_set": test, "bleu": float(i), "chrf": 50.0, "bleu_signature": "s"}
        for test, runs in (("a", 2), ("b", 3))
        for i in range(runs)
    ]
    leaderboard.add_rows(tmp_path / "leaderboard.csv", rows)
    leaderboard.write_chart(tmp_path / "leaderboard.csv", tmp_path / "x.png", top=2)
    assert [ax.get_title() for ax in figures[0].axes] == ["a", "b, best 2 of 3 runs"]
    import matplotlib.pyplot as plt

    plt.close(figures[0])


# --- #6: the sweep report: first evaluations, one run per (w, r) ----------------------------------------------


def _sweep(
    board: Path, monkeypatch, schedule: str, seed: str | None = None, arch: str | None = None
) -> tuple[dict, str]:
    points = {}
    monkeypatch.setattr(sweep_report, "heatmap", lambda p, title, label, png, ws, rs: points.setdefault(label, p))
    chosen = ({"seed": seed} if seed else {}) | ({"arch": arch} if arch else {})  # the call before the options existed
    text = sweep_report.report(
        board.parent, "multi30k_en_de", schedule, "test_2016_flickr", board.parent / "sweeps", **chosen
    )
    return points["BLEU"], text


def _add_beside_the_w3_r0_cell(board: Path, run_id: str, **changes: str) -> None:
    """A row like the committed ``cpu_demo`` w=3, r=0 run's, as ``run_id`` with ``changes``, its own hypothesis."""
    cell = next(r for r in leaderboard.read_rows(board) if r["run_id"] == "multi30k_en_de-cpu_demo-w3-r0-c2f552a9")
    leaderboard.add_rows(board, [cell | {"run_id": run_id, "hypothesis": f"{run_id}.de"} | changes])


def test_the_sweep_report_uses_each_runs_first_evaluation(board, monkeypatch):
    bleu, text = _sweep(board, monkeypatch, "cpu_demo")
    assert bleu == {(1, 0): 21.23, (1, 2): 20.37, (3, 0): 24.15, (3, 2): 24.06}  # (3, 2) re-run: 24.6
    assert (
        "Highest test BLEU of the heatmaps (role mix auto, dense cross-attention): "
        "w=3, r=0: BLEU 24.15, at or above the dense baseline's 14.84 "
        "(paired bootstrap p ≤ 0.001).\nThat point is the highest of 4 "
    ) in text
    assert "| 24.60 |" not in text and "| 15.72 |" not in text
    # the page names the leaderboard it was made from, and its command the folder
    assert f" --results-dir {board.parent}` from `{board}`." in text
    committed = (REPO / "results" / "sweeps" / "sweep_multi30k_en_de_cpu_demo_test_2016_flickr.md").read_text()
    here = text.replace(f" --results-dir {board.parent}", "").replace(str(board), "results/leaderboard.csv")
    assert here == committed  # the committed report is this code's output


def test_the_sweep_verdict_says_when_its_runs_were_trained_at_several_commits_or_on_several_machines():
    """Points trained at other commits or on other CPUs differ by more than their settings (the committed page's
    runs: 4 commits, machines unrecorded); one commit on one named machine needs no sentence."""
    row = {"git_commit": "a" * 40, "train_commit": "", "train_machine": "CPU A"}
    assert (
        sweep_report._mixed_provenance([row, row | {"git_commit": "a" * 40 + "+dirty", "train_commit": "a" * 40}]) == ""
    )
    assert "trained at 2 commits (aaaaaaaa, bbbbbbbb) on one machine (CPU A): " in sweep_report._mixed_provenance(
        [row, row | {"train_commit": "b" * 40}]
    )
    assert " at 1 commit (aaaaaaaa) on 2 machines (CPU A, CPU B): " in sweep_report._mixed_provenance(
        [row, row | {"train_machine": "CPU B"}]
    )
    assert "on machines not all recorded (CPU A and rows without" in sweep_report._mixed_provenance(
        [row, row | {"train_machine": ""}]
    )
    assert "on machines the rows do not record" in sweep_report._mixed_provenance([row | {"train_machine": ""}] * 2)


def test_the_sweep_report_says_which_architectures_the_rows_hold_when_arch_matches_none(board, monkeypatch):
    with pytest.raises(SystemExit) as e:
        _sweep(board, monkeypatch, "cpu_demo", arch="structured_transformer_multi30")  # a typo
    assert str(e.value) == (
        "error: --arch structured_transformer_multi30: no structured run of data=multi30k_en_de schedule=cpu_demo "
        "test_set=test_2016_flickr is of it; they are of structured_transformer_multi30k"
    )


def test_two_runs_of_one_seed_in_a_cell_are_not_told_to_pick_a_seed(board, monkeypatch):
    """model.impl=reference changes the run id but no leaderboard label: --seed cannot separate the runs."""
    _add_beside_the_w3_r0_cell(board, "multi30k_en_de-cpu_demo-w3-r0-f799e0ba")
    with pytest.raises(SystemExit) as e:
        _sweep(board, monkeypatch, "cpu_demo")
    assert str(e.value) == (
        "error: runs multi30k_en_de-cpu_demo-w3-r0-c2f552a9 (seed 1) and multi30k_en_de-cpu_demo-w3-r0-f799e0ba "
        "(seed 1) are both the w=3, r=0 cell of data=multi30k_en_de schedule=cpu_demo test_set=test_2016_flickr; "
        "they differ in a setting the leaderboard has no column for (model.impl, say): give the other setting a "
        "schedule of its own"
    )


def test_the_sweep_report_gives_no_verdict_across_bleu_signatures(board, monkeypatch):
    _, text = _sweep(board, monkeypatch, "cpu_demo")
    signature = "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0"
    assert f"BLEU signature of every row: `{signature}`." in text and "at or above the dense baseline" in text
    intl = signature.replace("13a", "intl")
    _add_beside_the_w3_r0_cell(
        board, "multi30k_en_de-cpu_demo-w5-r0-0000intl", window="5", bleu_signature=intl, bleu="30.0"
    )
    _, text = _sweep(board, monkeypatch, "cpu_demo")
    assert f"**The rows were scored with 2 BLEU signatures**, whose scores do not compare: `{signature}`: " in text
    assert f"; `{intl}`: multi30k_en_de-cpu_demo-w5-r0-0000intl." in text
    assert "No verdict: the runs it would compare" in text and "at or above" not in text and "Highest" not in text


def test_runs_of_another_seed_listed_in_the_table_show_their_seed(board, monkeypatch):
    _add_beside_the_w3_r0_cell(
        board, "multi30k_en_de-cpu_demo-w3-r0-syn4-5eed0007", heads="syn:4", seed="7", bleu="30.0"
    )
    bleu, text = _sweep(board, monkeypatch, "cpu_demo")
    assert bleu[3, 0] == 24.15
    assert "| structured | 3 | 0 | syn:4 |  | 7 | 30.00 |" in text
    assert "| structured | 3 | 0 | auto |  | 1 | 24.15 |" in text


def test_the_sweep_report_takes_one_run_per_cell_and_another_variant_cannot_take_it(board, monkeypatch):
    with pytest.raises(SystemExit) as e:
        _sweep(board, monkeypatch, "reproduce")
    assert str(e.value) == (
        "error: runs multi30k_en_de-reproduce-dense-d5ac2722 (seed 1) and multi30k_en_de-reproduce-dense-4a27cf14 "
        "(seed 2) are both the dense baseline of data=multi30k_en_de schedule=reproduce test_set=test_2016_flickr; "
        "pick one seed with --seed, or give the other setting a schedule of its own"
    )
    bleu, text = _sweep(board, monkeypatch, "reproduce", seed="1")
    assert bleu == {(3, 2): 38.53}
    assert (
        "Highest test BLEU of the heatmaps (role mix auto, dense cross-attention): "
        "w=3, r=2: BLEU 38.53, at or above the dense baseline's 37.45 "
    ) in text
    page = board.parent / "sweeps" / "sweep_multi30k_en_de_reproduce_test_2016_flickr_seed1.md"
    assert page.read_text() == text  # a page per seed: another seed's report does not overwrite it
    # a structured cross band of the same (w, r) and seed is listed, not put in the cell
    rows = leaderboard.read_rows(board)
    cell = next(r for r in rows if r["run_id"] == "multi30k_en_de-cpu_demo-w3-r0-c2f552a9")
    band = cell | {"run_id": "multi30k_en_de-cpu_demo-w3-r0-x4-0000aaaa", "cross": "w4/slope0.97", "bleu": "99.0"}
    leaderboard.add_rows(board, [band | {"hypothesis": "band.de"}])
    bleu, text = _sweep(board, monkeypatch, "cpu_demo")
    assert bleu[3, 0] == 24.15 and "| structured | 3 | 0 | auto | w4/slope0.97 | 1 | 99.00 |" in text
    # another arch's runs (a point of its own, its own dense baseline): an error naming both, not a point in the
    # heatmap compared with the other model's dense run; --arch picks one model and its dense baseline
    dense = next(r for r in rows if r["run_id"] == "multi30k_en_de-cpu_demo-dense-fc731a8c")
    tiny = cell | {"run_id": "tiny-w5-r1", "arch": "structured_transformer_tiny", "window": "5", "rare": "1"}
    tiny_dense = dense | {"run_id": "tiny-dense", "arch": "transformer_tiny", "bleu": "5.0"}
    leaderboard.add_rows(board, [tiny | {"bleu": "30.0", "hypothesis": "t.de"}, tiny_dense | {"hypothesis": "d.de"}])
    with pytest.raises(SystemExit, match=r"of 2 architectures \(structured_transformer_multi30k, structured_tr"):
        _sweep(board, monkeypatch, "cpu_demo")
    bleu, text = _sweep(board, monkeypatch, "cpu_demo", arch="structured_transformer_multi30k")
    assert bleu[3, 0] == 24.15 and (5, 1) not in bleu and "tiny" not in text and "dense baseline's 14.84" in text
    bleu, text = _sweep(board, monkeypatch, "cpu_demo", arch="structured_transformer_tiny")
    assert bleu == {(5, 1): 30.0} and "dense baseline's 5.0" in text and "--arch structured_transformer_tiny" in text
    assert (
        board.parent / "sweeps" / "sweep_multi30k_en_de_cpu_demo_test_2016_flickr_arch-structured_transformer_tiny.md"
    ).is_file()


def test_the_sweep_report_refuses_points_of_several_seeds_without_seed(board, monkeypatch):
    """A point trained with another seed (train.seed=2 baseline=false) was drawn beside the others and compared
    with the seed-1 dense run."""
    point = {"window": "5", "rare": "2", "seed": "2", "bleu": "27.13", "p_value_vs_dense": ""}
    _add_beside_the_w3_r0_cell(board, "multi30k_en_de-cpu_demo-w5-r2-5eed0002", **point)
    with pytest.raises(SystemExit, match=r"^error: the runs of .* are of seeds 1, 2, and each point is compared"):
        _sweep(board, monkeypatch, "cpu_demo")
    bleu, _ = _sweep(board, monkeypatch, "cpu_demo", seed="1")
    assert (5, 2) not in bleu and bleu[3, 0] == 24.15


# --- #8: LEADERBOARD.md is rendered under the CSV lock ---------------------------------------------------------


def test_publish_holds_the_csv_lock_so_the_last_markdown_has_every_row(board, monkeypatch):
    row = leaderboard.read_rows(board)[0]
    leaderboard.add_rows(board, [row | {"run_id": "RUN_A", "hypothesis": "a.de"}])
    monkeypatch.setattr(leaderboard, "write_chart", lambda csv_path, png: None)
    a_read, b_done = threading.Event(), threading.Event()
    read = leaderboard.read_rows

    def slow_read(path: Path) -> list[dict[str, str]]:
        rows = read(path)
        if threading.current_thread().name == "A":  # job A is descheduled between reading and writing
            a_read.set()
            b_done.wait(2)
        return rows

    def job_b() -> None:
        leaderboard.add_rows(board, [row | {"run_id": "RUN_B", "hypothesis": "b.de"}])
        leaderboard.publish(board.parent)
        b_done.set()

    monkeypatch.setattr(leaderboard, "read_rows", slow_read)
    a = threading.Thread(target=leaderboard.publish, args=(board.parent,), name="A")
    a.start()
    assert a_read.wait(30)
    b = threading.Thread(target=job_b)
    b.start()
    a.join()
    b.join()
    md = (board.parent / "LEADERBOARD.md").read_text()
    assert "| RUN_A |" in md and "| RUN_B |" in md
    assert md == leaderboard.render_markdown(read(board))


def test_fill_empty_completes_empty_cells_and_never_changes_a_value(tmp_path):
    from structmt.leaderboard_csv import fill_empty

    board = tmp_path / "leaderboard.csv"
    first = {"run_id": "a", "test_set": "t", "hypothesis": "h", "bleu": 30.0, "p_value_vs_dense": ""}
    second = first | {"run_id": "b", "p_value_vs_dense": 0.2}
    leaderboard.add_rows(board, [first, second])
    assert (
        fill_empty(
            board, [first | {"p_value_vs_dense": 0.01}, second | {"p_value_vs_dense": 0.5}], ["p_value_vs_dense"]
        )
        == 1
    )
    assert [r["p_value_vs_dense"] for r in leaderboard.read_rows(board)] == ["0.01", "0.2"]
    assert fill_empty(board, [first | {"p_value_vs_dense": 0.3}], ["p_value_vs_dense"]) == 0
    with pytest.raises(ValueError, match="column bleu_ci95 is 'wide', not a number"):
        fill_empty(board, [second | {"bleu_ci95": "wide"}], ["bleu_ci95"])
    assert [r["bleu_ci95"] for r in leaderboard.read_rows(board)] == ["", ""]


def test_a_leaderboard_that_links_to_a_shared_file_stays_a_link_and_keeps_its_mode(board, tmp_path):
    """``results/leaderboard.csv`` as a symbolic link to a team's file: a row goes into that file (the link was
    replaced by a private copy, and the team's file never saw the row), under the lock beside it, and the file
    keeps its mode (a rewrite made a group-writable file 0o644)."""
    from structmt.leaderboard_csv import lock

    board.chmod(0o664)
    link = tmp_path / "checkout" / "leaderboard.csv"
    link.parent.mkdir()
    link.symlink_to(board)
    assert leaderboard.add_rows(link, [_new_row(board)]) == 1
    assert link.is_symlink() and "NEWRUN" in board.read_text()
    assert board.stat().st_mode & 0o777 == 0o664
    assert lock(link).lock_file == lock(board).lock_file == str(board) + ".lock"
    dangling = tmp_path / "checkout" / "other.csv"
    dangling.symlink_to(tmp_path / "unmounted" / "team" / "leaderboard.csv")
    with pytest.raises(FileNotFoundError, match=r"links to .*unmounted/team/leaderboard.csv, whose folder does not"):
        leaderboard.add_rows(dangling, [_new_row(board)])
    assert not (tmp_path / "unmounted").exists()


# --- a re-run that make demo records reaches every page made from the leaderboard -----------------------------

HEADER = leaderboard.headline([], "", "").split("\n")[:2]


def _rerun_row(board: Path, bleu: str) -> dict[str, str]:
    """A re-run of the committed ``cpu_demo`` dense run on test_2016_flickr from another machine and commit, as
    an evaluation would add it (hypotheses of their own, named by their content)."""
    first = next(r for r in leaderboard.read_rows(board) if r["schedule"] == "cpu_demo" and r["window"] == "")
    commit = "0123abcd" * 5
    return first | {
        "bleu": bleu,
        "git_commit": commit,
        "train_commit": commit,
        "train_seconds": "999.0",
        "machine": "Another CPU (AVX2)",
        "hypothesis": first["hypothesis"].replace(".de", ".0123abcd.de"),
    }


def test_a_rerun_recorded_in_a_copy_of_the_project_reaches_its_readme_tables_and_benchmarks_page(tmp_path):
    """The README's two commands in order: ``make demo`` on a machine whose hypotheses differ records a re-run,
    and ``make test`` then checks that the README's tables and BENCHMARKS.md say what the leaderboard says. Both
    were left behind (only LEADERBOARD.md and the chart were rendered again), so the second command failed."""
    results = copy_benchmark_inputs(tmp_path)
    shutil.copy(REPO / "results" / "BENCHMARKS.md", results / "BENCHMARKS.md")  # a publish renders it again
    readme = REPO.joinpath("README.md").read_text(encoding="utf-8")
    (tmp_path / "README.md").write_text(readme, encoding="utf-8")
    board = results / "leaderboard.csv"
    assert leaderboard.add_rows(board, [_rerun_row(board, "15.55")]) == 1
    assert leaderboard.publish(results) == []
    new = (tmp_path / "README.md").read_text(encoding="utf-8").split("\n")
    changed = [(a, b) for a, b in zip(readme.split("\n"), new, strict=True) if a != b]
    assert len(changed) == 1, changed  # the cpu_demo table's dense test_2016_flickr row; nothing else
    old_row, new_row = changed[0]
    assert old_row.startswith("| test_2016_flickr | transformer_multi30k | – | – | 1 | 14.84 |")
    assert new_row == old_row.removesuffix(" |") + ", 1: 15.55 (trained again, 0123abcd) |"
    from structmt.bench import report

    page = (results / "BENCHMARKS.md").read_text(encoding="utf-8")
    assert page == report.render(results) + "\n" != (REPO / "results" / "BENCHMARKS.md").read_text(encoding="utf-8")
    assert "dense 14.84 or 15.72 or 15.39 or 15.55 (re-runs)" in page  # the W=32 verdict's dense model


def test_readme_tables_are_rewritten_row_by_row_from_the_headline_their_marker_names(board):
    """Each table row becomes the ``--headline`` row of its test set, model, w and r (its other cells are the
    leaderboard's); rows the README leaves out stay out; text around it, and a table without a marker, stay."""
    rows = leaderboard.read_rows(board)
    printed = leaderboard.headline(rows, "multi30k_en_de", "cpu_demo").split("\n")
    dense, structured = printed[2], next(x for x in printed if "| structured_transformer_multi30k | 3 | 2 |" in x)
    stale = dense.replace("| 14.84 |", "| 14.00 |")
    text = "\n".join(
        ["intro", "<!-- structmt-leaderboard --headline cpu_demo -->", *HEADER, stale, structured, "", "after"]
        + ["", *HEADER, stale, ""]  # no marker: not the pipeline's table
    )
    assert leaderboard.refresh_headlines(text, rows) == text.replace(stale, dense, 1)
    # --data names the data set of the marker's table; another one's rows are not there
    other = text.replace("cpu_demo -->", "cpu_demo --data multi30k_en_de -->")
    assert leaderboard.refresh_headlines(other, rows) == other.replace(stale, dense, 1)
    wmt = "`structmt-leaderboard --headline cpu_demo --data wmt14_en_de` prints no row "
    with pytest.raises(ValueError, match=rf"^line 5: {wmt}"):
        leaderboard.refresh_headlines(text.replace("cpu_demo -->", "cpu_demo --data wmt14_en_de -->"), rows)
    gone = stale.replace("transformer_multi30k", "structured_transformer_multi30k")  # structured without w and r
    with pytest.raises(ValueError) as e:
        leaderboard.refresh_headlines(text.replace(stale, gone, 1), rows)
    assert str(e.value) == (
        "line 5: `structmt-leaderboard --headline cpu_demo` prints no row of test_2016_flickr / "
        "structured_transformer_multi30k / – / – (any more)"
    )
    with pytest.raises(ValueError, match=r"^line 3: below its marker \(line 2\) is not the table "):
        leaderboard.refresh_headlines(text.replace(HEADER[1], "|---|---|", 1), rows)


def test_a_readme_table_that_cannot_be_rewritten_is_a_warning_of_publish_and_an_error_of_the_command(
    board, caplog, capsys
):
    """The evaluation's rows are in the CSV by then, and LEADERBOARD.md shows them: publish warns and goes on;
    ``structmt-leaderboard``, whose job the pages are, stops with the reason."""
    readme = board.parent / "README.md"
    results = board.parent / "results"
    results.mkdir()
    board = board.rename(results / "leaderboard.csv")
    table = ["<!-- structmt-leaderboard --headline nonesuch -->", *HEADER, "| t | m | – | – |"]
    readme.write_text("\n".join(table), encoding="utf-8")
    problem = (
        f"{readme}'s headline tables are not rewritten: README.md line 4: `structmt-leaderboard --headline "
        "nonesuch` prints no row of t / m / – / – (any more)"
    )
    assert leaderboard.publish(results) == [problem]
    assert problem in caplog.messages and (results / "LEADERBOARD.md").exists()
    assert readme.read_text(encoding="utf-8") == "\n".join(table)
    with pytest.raises(SystemExit) as e:
        leaderboard.main(["--results-dir", str(results)])
    assert str(e.value) == f"error: {problem}"
