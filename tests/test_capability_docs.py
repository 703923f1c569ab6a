"""docs/backends.md shows the capability table the dispatcher enforces (regenerate with the command below)."""

from pathlib import Path

import ssmcore
from ssmcore.dispatch import capability_table

DOC = Path(__file__).resolve().parent.parent / "docs" / "backends.md"
BEGIN, END = "<!-- capability-table:begin -->\n", "<!-- capability-table:end -->"


def test_docs_table_is_the_dispatchers_table():
    text = DOC.read_text()
    table = text.split(BEGIN, 1)[1].split(END, 1)[0]
    assert table == capability_table(), (
        "docs/backends.md is stale; regenerate the table with\n"
        "python -c \"import ssmcore; from ssmcore.dispatch import capability_table; print(capability_table())\""
    )
    assert ssmcore.list_ops()
