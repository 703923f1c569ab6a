"""Print the declared minimum of each runtime dependency as ``name==version`` (one per line).

Read from ``[project] dependencies`` in pyproject.toml, so the minimum-versions job of
``.ci/run`` tests exactly what the package declares.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib


def main() -> int:
    meta = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    for req in meta["project"]["dependencies"]:
        m = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9A-Za-z.]*)\s*", req)
        if m is None:
            print(f"dependency {req!r} has no plain '>=' minimum", file=sys.stderr)
            return 1
        print(f"{m.group(1)}=={m.group(2)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
