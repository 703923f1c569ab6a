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
