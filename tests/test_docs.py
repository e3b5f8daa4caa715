"""The README stays short and the documentation stands alone: the README fits in 220 lines with the
newcomer commands on its first screen, every relative link of the README and of ``docs/`` leads to a
file of the repository (and to a heading there, when it names one), and nothing points at a design
file outside the repository."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.M)
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # http:, https:, mailto:, ...


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code, where brackets are not links."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def relative_links(page: Path) -> list[str]:
    text = _prose(page.read_text(encoding="utf-8"))
    targets = INLINE_LINK.findall(text) + REFERENCE_LINK.findall(text)
    return [t for t in targets if not EXTERNAL.match(t)]


def anchors(page: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces as hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", page.read_text(encoding="utf-8")).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_link_extraction_sees_links_and_skips_code(tmp_path):
    page = tmp_path / "p.md"
    page.write_text(
        'See [a](docs/a.md), ![fig](docs/f.png "t") and [web](https://example.org).\n'
        "`[not](a-link.md)`\n```\n[nor](this.md)\n```\n[ref]: results/README.md\n[top](#here)\n",
        encoding="utf-8",
    )
    assert relative_links(page) == ["docs/a.md", "docs/f.png", "#here", "results/README.md"]


def test_the_readme_is_at_most_220_lines():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 220, f"README.md has {len(lines)} lines; move detail into docs/ or results/README.md"


def test_the_first_screen_of_the_readme_has_the_newcomer_commands():
    first_screen = "\n".join(README.read_text(encoding="utf-8").splitlines()[:40])
    assert "make demo" in first_screen
    assert "make test" in first_screen


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_leads_to_a_file_of_the_repository(page):
    broken = []
    for link in relative_links(page):
        path_part, _, fragment = link.partition("#")
        target = (page.parent / path_part).resolve() if path_part else page
        if not target.is_relative_to(REPO):
            broken.append(f"{link}: outside the repository")
        elif not target.exists():
            broken.append(f"{link}: no such file")
        elif fragment and target.suffix == ".md" and fragment not in anchors(target):
            broken.append(f"{link}: no heading #{fragment} in {target.relative_to(REPO)}")
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="needs a git checkout")
@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_link_leads_into_an_ignored_path(page):
    """A link into ``runs/``, ``.venv/`` or another ignored folder works here and nowhere else."""
    paths = sorted({link.partition("#")[0] for link in relative_links(page)} - {""})
    resolved = [(page.parent / p).resolve() for p in paths]
    targets = [str(t.relative_to(REPO)) for t in resolved if t.is_relative_to(REPO)]
    if not targets:
        return
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", *targets], cwd=REPO, capture_output=True, text=True, check=False
    ).stdout.split()
    assert not ignored, f"{page.relative_to(REPO)} links to ignored paths: {ignored}"


def test_no_page_names_a_design_file_outside_the_repository():
    files = [README, *(p for p in sorted((REPO / "docs").rglob("*")) if p.is_file())]
    naming = [str(p.relative_to(REPO)) for p in files if b"DESIGN.md" in p.read_bytes()]
    assert not naming, f"these pages mention DESIGN.md, which is not part of the repository: {naming}"


def test_the_by_hand_recipe_decodes_as_the_pipeline_does():
    """docs/plugin.md's fairseq-generate line passes every decoding option the pipeline's decode passes."""
    from structmt import fairseq_cli

    page = (REPO / "docs" / "plugin.md").read_text(encoding="utf-8")
    generate = page[page.index("fairseq-generate runs/") :].split("```")[0].replace("\\\n", " ")
    words = generate.split()
    passed = dict(zip(words, words[1:], strict=False))
    assert passed["--max-len-a"] == str(fairseq_cli.MAX_LEN_A) and passed["--max-len-b"] == str(fairseq_cli.MAX_LEN_B)
    assert passed["--remove-bpe"] == "sentencepiece" and passed["--required-batch-size-multiple"] == "1"


@pytest.mark.parametrize("page", [README, REPO / "docs" / "plugin.md"], ids=lambda p: p.name)
def test_the_by_hand_training_is_the_headline_schedule(page):
    """The fairseq-train lines of the README and docs/plugin.md train with the ``reproduce`` schedule's optimisation
    (and stop: fairseq's own --max-update is 0, no limit)."""
    from structmt.pipeline.recipes import load_schedule

    text = page.read_text(encoding="utf-8")
    train = text[text.index("fairseq-train runs/") :].split("```")[0].replace("\\\n", " ")
    words = [w.strip("'") for w in train.split()]
    given = dict(zip(words, words[1:], strict=False))
    args = load_schedule("reproduce").fairseq_args()
    expected = dict(zip(args, args[1:], strict=False))
    optimisation = ["--optimizer", "--adam-betas", "--lr", "--lr-scheduler", "--warmup-updates", "--max-tokens"]
    optimisation += ["--max-update", "--dropout", "--criterion", "--label-smoothing"]
    assert {o: given.get(o) for o in optimisation} == {o: expected[o] for o in optimisation}


def test_the_quoted_role_mixes_of_plugin_md_are_what_hydra_reads():
    """docs/plugin.md's quoting of comma values: one run gets the whole mix, a sweep gets one mix per job."""
    import re
    import shlex

    from hydra.core.override_parser.overrides_parser import OverridesParser

    page = (REPO / "docs" / "plugin.md").read_text(encoding="utf-8")
    single, sweep = (shlex.split(c)[-1] for c in re.findall(r"`(structmt-run [^`]*model\.heads[^`]*)`", page))
    parser = OverridesParser.create()
    assert parser.parse_overrides([single])[0].value() == "pos:1,syn:2,rare:1"
    jobs = list(parser.parse_overrides([sweep])[0].sweep_string_iterator())
    assert [j.strip("'") for j in jobs] == ["pos:1,syn:2,rare:1", "pos:2,syn:2"]


def _marked_reliability(file: str, name: str) -> bool | None:
    """Whether ``tests/<file>``'s test ``name`` carries the reliability marker (None: no such test)."""
    tree = ast.parse((REPO / "tests" / file).read_text(encoding="utf-8"))
    module = any(
        isinstance(n, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in n.targets)
        and "reliability" in ast.unparse(n.value)
        for n in tree.body
    )
    test = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name), None)
    if test is None:
        return None
    return module or any(ast.unparse(d) == "pytest.mark.reliability" for d in test.decorator_list)


def test_every_reliability_item_has_tests_that_make_test_reliability_runs():
    """docs/reliability.md says each item is a test that ``make test-reliability`` runs: its table names
    them (one row per item), and each named test exists and carries the marker."""
    page = (REPO / "docs" / "reliability.md").read_text(encoding="utf-8")
    items = re.findall(r"^- \*\*", page, re.M)
    rows = re.findall(r"^\| (?!item |---)[^|]+\| (.+) \|$", page, re.M)
    assert len(rows) == len(items) and all(re.search(r"`test_\w+\.py::test_\w+`", row) for row in rows)
    named = re.findall(r"`(test_\w+\.py)::(test_\w+)`", page)
    found = {(file, name): _marked_reliability(file, name) for file, name in named}
    assert [f"{file}::{name}" for (file, name), marked in found.items() if marked is None] == []  # no such test
    assert [f"{file}::{name}" for (file, name), marked in found.items() if marked is False] == []  # not marked


def test_every_test_a_page_names_exists():
    """A test named in README, docs/ or results/ pages (`test_…`, or a prefix ending in …) is a test function
    of tests/: renaming a test cannot leave a page pointing at nothing."""
    defined = {
        n.name
        for path in (REPO / "tests").glob("test_*.py")
        for n in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")
    }
    pages = [*PAGES, *sorted((REPO / "results").rglob("*.md"))]
    named = {m for page in pages for m in re.findall(r"`(?:test_\w+\.py::)?(test_\w+…?)`", page.read_text("utf-8"))}
    assert len(named) >= 10
    missing = [
        n for n in sorted(named) if not any(d.startswith(n[:-1]) if n.endswith("…") else d == n for d in defined)
    ]
    assert missing == []
