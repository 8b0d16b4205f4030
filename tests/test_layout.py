"""The checkout's trees depend in one direction: tests and benchmarks share helpers through
`harness/`, and neither imports the other (so a benchmark survives a test's refactor and back)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imported_top_levels(tree: str) -> dict[str, set[str]]:
    """File -> top-level names of the absolute imports in every module of `tree`."""
    found = {}
    for file in sorted((ROOT / tree).rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[file.relative_to(ROOT).as_posix()] = names
    return found


@pytest.mark.parametrize(
    ("tree", "forbidden"),
    [("tests", {"bench"}), ("bench", {"tests"}), ("harness", {"tests", "bench"})],
)
def test_trees_do_not_import_each_other(tree: str, forbidden: set[str]) -> None:
    imports = imported_top_levels(tree)
    assert imports, f"no modules found under {tree}/"
    assert {file: names & forbidden for file, names in imports.items() if names & forbidden} == {}


def test_tests_and_benchmarks_use_the_shared_harness() -> None:
    # The point of the rule above: the helpers both need are really shared, not copied.
    assert any("harness" in names for names in imported_top_levels("tests").values())
    assert any("harness" in names for names in imported_top_levels("bench").values())
