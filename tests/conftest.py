import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

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
