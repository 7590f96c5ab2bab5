"""The README as a front page and docs/ beside it: the README fits in 250 lines and keeps what a
newcomer needs first; every relative link and anchor in README.md and docs/ resolves (images
included, `../images/` from docs/); the text the tests run or count (the authors' commands, the
bad-input cases) is where they say it is; the stage-time table quotes only figures that the
pages measure. Plain file reading: no process is started."""
import re
from pathlib import Path

import pytest

from tests.test_authors_commands import AUTHORS_COMMANDS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
MAX_README_LINES = 250
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def prose(path: Path) -> str:
    """The page's text with its fenced code blocks blanked out (links are not read there)."""
    return re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of every heading of a page."""
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", prose(path), flags=re.M)}


def section(text: str, heading: str) -> str:
    """The text under `## heading` up to the next `## ` heading."""
    start = text.index(f"## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def test_readme_fits_on_a_front_page():
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; move text to docs/"


def test_readme_keeps_the_newcomer_essentials_early():
    text = README.read_text()
    for command in ("make demo", "make test", "make install", "make test-floor",
                    "python -m pytest", "images/two_stages.png"):
        assert command in text, command
    # Where data goes and what to do when something fails come before the pipeline and results.
    first = text.index("## The pipeline")
    for early in ("## Install", "### GPU clusters", "## Where data and results go",
                  "## When something fails", "docs/troubleshooting.md"):
        assert text.index(early) < first, early
    for later in ("## How long each stage takes", "## Results measured here", "## Documentation"):
        assert later in text, later


def test_every_docs_page_is_linked_from_the_readme():
    linked = {target.split("#")[0] for target in LINK.findall(prose(README))}
    pages = {f"docs/{page.name}" for page in DOCS.glob("*.md")}
    assert pages and pages <= linked, sorted(pages - linked)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_and_anchors_resolve(page):
    broken = []
    for target in LINK.findall(prose(page)):
        if re.match(r"[a-z]+:", target):  # http(s), mailto: not checked offline
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.is_file():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading with that anchor in {file.name}")
    assert not broken, broken


def test_the_authors_commands_tested_are_the_ones_documented():
    """tests/test_authors_commands.py runs these texts; docs/authors.md shows them verbatim."""
    text = (DOCS / "authors.md").read_text()
    for stage, command in AUTHORS_COMMANDS.items():
        assert command in text, stage


def test_the_bad_input_count_in_the_docs_is_the_tests_count():
    from tests import test_bad_input as bad
    count = len(bad.CASES) + len(bad.HOSTILE) + len(bad.READER_CASES) + len(bad.GENOTYPE_FILE_CASES)
    documented = re.search(r"checks (\d+) cases", (DOCS / "faults.md").read_text())
    assert documented and int(documented.group(1)) == count


def test_the_stage_time_table_quotes_measured_figures():
    """Every duration in the README's table is stated, with its unit, elsewhere in the pages."""
    table = section(README.read_text(), "How long each stage takes")
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    others = README.read_text().replace(table, "") + "".join(p.read_text() for p in PAGES[1:])
    durations = re.findall(r"(\d[\d,.]*(?: \+- \d[\d,.]*)?)\s*(s|min|h|days)\b", "\n".join(rows))
    assert len(durations) >= 10

    def quoted(number: str, unit: str) -> bool:
        """A mean +- std is quoted from a table whose header holds the unit."""
        after = "" if "+-" in number else rf"\s*{unit}"
        return re.search(rf"(?<![\d.,]){re.escape(number)}{after}", others) is not None

    unquoted = [f"{number} {unit}" for number, unit in durations if not quoted(number, unit)]
    assert not unquoted, unquoted
    assert "not measured" in table
