"""scipy's own tests, pointed at ssmcore's drop-ins.

Each test here runs one of the installed scipy's test files in a subprocess
(``python -m pytest -p scipy.conftest -p test_scipy_dropins ...``): this module
is also the pytest plugin of that run. Its hook replaces the scipy function a
test module imported (``lfilter``, ``lsim``, ``dlsim``, ``cont2discrete``) with
ssmcore's, and marks the scipy cases known to differ ``xfail(strict=True)``
with the reason, so a case that starts passing (or a new failure) fails here.
The scipy version the case lists were made against is in ``SCIPY_TESTED``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCIPY_TESTED = "1.17"

#: module -> (names replaced by ssmcore's, -k selection of the cases that exercise them)
SUITES = {
    "lfilter": ("test_signaltools", ("lfilter",), "LinearFilter or lfilter or LFilterZI"),
    "lsim": ("test_ltisys", ("lsim",), "Lsim or lsim"),
    "dlsim": ("test_dltisys", ("dlsim",), "dlsim"),
    "cont2discrete": ("test_cont2discrete", ("c2d", "dlsim", "lsim"), ""),
}

#: (suite, end of the test id without parameters) -> reason; these cases are xfail(strict=True).
KNOWN_DIFFERENCES = {
    ("lfilter", "test_invalid_params"): (
        "ssmcore.lfilter is batched over filters: a 2-D b (eye(2)) is two filters, not an error; "
        "its messages start with 'lfilter: ' (the other cases of this test are ported in test_lfilter.py)"
    ),
}


# ----------------------------------------------------------------------------- the plugin side
def _replacements() -> dict[str, object]:
    from ssmcore._discretization import cont2discrete
    from ssmcore._lfilter import lfilter
    from ssmcore._lsim import lsim
    from ssmcore._lti import dlsim

    return {"lfilter": lfilter, "lsim": lsim, "dlsim": dlsim, "c2d": cont2discrete, "cont2discrete": cont2discrete}


def pytest_collection_modifyitems(session, config, items):  # pragma: no cover - runs in the subprocess
    suite = os.environ.get("SSMCORE_SCIPY_SUITE")
    if not suite:
        return
    _, names, _ = SUITES[suite]
    fns = _replacements()
    patched = set()
    done = []
    for item in items:
        mod = getattr(item, "module", None)
        if mod is not None and mod not in patched:
            for name in names:
                if hasattr(mod, name):
                    setattr(mod, name, fns[name])
                    done.append(f"{mod.__name__}.{name}")
            patched.add(mod)
        for (s, key), reason in KNOWN_DIFFERENCES.items():
            if s == suite and (item.nodeid.split("[")[0].endswith("::" + key)):
                item.add_marker(pytest.mark.xfail(strict=True, reason=reason))
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"ssmcore-patched: {' '.join(done)}")


# ----------------------------------------------------------------------------- the tests
def _run_suite(suite: str) -> subprocess.CompletedProcess:
    scipy = pytest.importorskip("scipy")
    module, _, select = SUITES[suite]
    path = Path(scipy.__file__).parent / "signal" / "tests" / f"{module}.py"
    if not path.exists():
        pytest.skip(f"scipy's test file {path.name} is not installed")
    here = Path(__file__).resolve().parent
    root = here.parent
    env = dict(os.environ, SSMCORE_SCIPY_SUITE=suite)
    env["PYTHONPATH"] = os.pathsep.join([str(root), str(here), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "scipy.conftest",
           "-p", "test_scipy_dropins", "--rootdir", str(path.parent), "-rfEX", str(path)]
    if select:
        cmd += ["-k", select]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=str(path.parent), timeout=900)


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_scipy_suite_passes_on_ssmcore(suite):
    proc = _run_suite(suite)
    tail = "\n".join(proc.stdout.splitlines()[-40:])
    assert proc.returncode == 0, f"scipy's {SUITES[suite][0]} against ssmcore.{suite}:\n{tail}\n{proc.stderr[-2000:]}"
    assert " passed" in tail, tail
    patched = [ln for ln in proc.stdout.splitlines() if ln.startswith("ssmcore-patched:")]
    names = SUITES[suite][1]
    assert patched and any(n in patched[0] for n in names), f"the drop-ins were not swapped in: {patched}"
