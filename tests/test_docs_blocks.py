"""Every ```python block of the guide (docs/*.md) and of README.md runs as written.

The blocks of one page run in order in one namespace (a later block may use names
an earlier one defined), as a reader pasting them into one session would. A block
whose fence is ```python skip-test is shown in the docs but not run here (for
output-only snippets); none needs it today.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
FENCE = re.compile(r"^```python([^\n]*)\n(.*?)^```", re.S | re.M)

# Pages whose blocks need an optional framework: skipped (not failed) without it.
NEEDS = {"adapters.md": ("torch", "jax")}


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(first line number, source) of each runnable ```python block."""
    blocks = []
    for m in FENCE.finditer(text):
        if "skip-test" in m.group(1):
            continue
        blocks.append((text.count("\n", 0, m.start()) + 2, m.group(2)))
    return blocks


README = DOCS.parent / "README.md"
PAGES = sorted(p.name for p in DOCS.glob("*.md") if python_blocks(p.read_text())) + ["README.md"]


def test_the_guide_has_python_blocks():
    assert len(PAGES) >= 8, PAGES


@pytest.mark.parametrize("page", PAGES)
def test_page_blocks_run(page, tmp_path, monkeypatch):
    for module in NEEDS.get(page, ()):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{page} needs {module}")
    monkeypatch.chdir(tmp_path)  # a block that writes a file writes it here
    namespace: dict = {"__name__": f"docs_{page[:-3]}"}
    path = README if page == "README.md" else DOCS / page
    for line, source in python_blocks(path.read_text()):
        code = compile("\n" * (line - 1) + source, str(path), "exec")  # tracebacks point into the page
        try:
            exec(code, namespace)
        except Exception as exc:  # noqa: BLE001 - re-raised with the block's location
            raise AssertionError(f"{page}: the ```python block at line {line} fails: {exc!r}") from exc
