import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from namespaces import NAMESPACE_PARAMS

# Property tests: a modest number of examples by default, more with HYPOTHESIS_PROFILE=thorough.
settings.register_profile(
    "default", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "thorough", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture
def rng():
    return np.random.default_rng(20261125)


def _gpu_available() -> bool:
    from ssmcore.dispatch import gpu_available

    return gpu_available()


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` run only where CuPy sees a CUDA device."""
    if _gpu_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (cupy.cuda.is_available() is False or CuPy is missing)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=NAMESPACE_PARAMS)
def ns(request):
    """The array namespace a device-neutral test runs on (numpy, strict, cupy); see tests/namespaces.py."""
    return request.param


def pytest_generate_tests(metafunc):
    """A test taking ``backend`` runs on the CPU backends its op declares (the capability table).

    The op is named by ``@pytest.mark.op("name")`` or a module-level ``OP``. An
    explicit ``@pytest.mark.parametrize("backend", ...)`` wins. CuPy twins are
    tested through the ``ns`` fixture (CuPy arrays), not through ``backend=``.
    """
    if "backend" not in metafunc.fixturenames:
        return
    for mark in metafunc.definition.iter_markers("parametrize"):
        names = mark.args[0]
        if "backend" in (names.replace(" ", "").split(",") if isinstance(names, str) else names):
            return
    marker = metafunc.definition.get_closest_marker("op")
    op = marker.args[0] if marker else getattr(metafunc.module, "OP", None)
    if op is None:
        return
    from ssmcore.dispatch import capabilities

    metafunc.parametrize("backend", [b for b in capabilities()[op] if b != "cupy"])
