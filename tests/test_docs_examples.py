"""The ```python blocks of the documentation pages and of the README run.

Each page's blocks run in order in one namespace, as a reader pastes them into one
session: later blocks use the names earlier ones define. A block preceded by the
line ``<!-- docs-test: skip (reason) -->`` is not run (side-by-side comparisons,
solves of the BAL problem that take seconds); the reason is part of the page's
source, invisible in the rendered site.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

# Pages whose blocks are not run here: edited on other branches.
EXCLUDED: dict[str, str] = {}

_FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
_SKIP = re.compile(r"<!--\s*docs-test:\s*skip\b")


def python_blocks(text: str) -> list[tuple[int, str, bool]]:
    """(line, code, skipped) of each ```python block of a page."""
    blocks = []
    for match in _FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").splitlines()
        skipped = bool(before) and bool(_SKIP.search(before[-1]))
        blocks.append((text.count("\n", 0, match.start()) + 1, match.group(1), skipped))
    return blocks


def test_blocks_are_found_and_skip_markers_read():
    text = "a\n```python\nx = 1\n```\n<!-- docs-test: skip (why) -->\n```python\ny = 2\n```\n"
    assert python_blocks(text) == [(2, "x = 1\n", False), (6, "y = 2\n", True)]


PAGES = sorted(
    str(path.relative_to(ROOT)) for path in [*DOCS.glob("*.md"), ROOT / "README.md"]
    if path.name not in EXCLUDED and any(not skipped for _, _, skipped in python_blocks(path.read_text()))
)


@pytest.mark.parametrize("page", PAGES)
def test_page_examples_run(page):
    path = ROOT / page
    namespace: dict = {"__name__": f"docs.{path.stem}"}
    for line, code, skipped in python_blocks(path.read_text()):
        if not skipped:
            exec(compile(code, f"{path}:{line}", "exec"), namespace)  # noqa: S102 - the docs' own code
