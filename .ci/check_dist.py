"""Check that the built wheel and sdist contain what they must (and nothing generated).

Usage: python .ci/check_dist.py DIST_DIR
"""

from __future__ import annotations

import sys
import tarfile
import zipfile
from pathlib import Path

WHEEL_MUST = ["ssmcore/__init__.py", "ssmcore/py.typed", "ssmcore/backends/numba/_jit.py",
              "ssmcore/reference/scan.py", "ssmcore-{v}.dist-info/licenses/LICENSE"]
SDIST_MUST = ["LICENSE", "README.md", "CHANGELOG.md", "CONTRIBUTING.md", "pyproject.toml", "MANIFEST.in",
              "ssmcore/py.typed", "docs/conf.py", "docs/index.md", "docs/api.rst", "docs/_inventories/numpy.inv",
              "examples/gallery/README.rst", "benchmarks/asv.conf.json", "benchmarks/benchmarks/__init__.py",
              "benchmarks/_timing.py", "tests/conftest.py", "tests/vjp_check.py"]
NEVER = ["docs/_build/", "docs/generated/", "docs/gallery/", "__pycache__", ".nbi", ".nbc", ".asv/"]


def main(dist: str) -> int:
    wheels = list(Path(dist).glob("ssmcore-*.whl"))
    sdists = list(Path(dist).glob("ssmcore-*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, (wheels, sdists)
    version = wheels[0].name.split("-")[1]
    wheel = set(zipfile.ZipFile(wheels[0]).namelist())
    root = f"ssmcore-{version}/"
    sdist = {n[len(root):] for n in tarfile.open(sdists[0]).getnames() if n.startswith(root)}
    problems = [f"wheel lacks {m}" for m in (w.format(v=version) for w in WHEEL_MUST) if m not in wheel]
    problems += [f"sdist lacks {m}" for m in SDIST_MUST if m not in sdist]
    problems += [f"wheel has {n}" for n in wheel if not n.startswith(("ssmcore/", f"ssmcore-{version}.dist-info/"))]
    problems += [f"{kind} has generated file {n}" for kind, names in (("wheel", wheel), ("sdist", sdist))
                 for n in names for bad in NEVER if bad in n]
    for p in problems:
        print("check_dist:", p, file=sys.stderr)
    print(f"check_dist: wheel {len(wheel)} files, sdist {len(sdist)} files, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
