"""Root pytest configuration: doctest collection of the optional-framework modules.

``--doctest-modules`` imports every module of ``ssmcore``; the Dask and xarray
entry points need their optional extras, so where those are not installed
their modules are not collected (the tests in tests/ skip on their own).
"""

import importlib.util

collect_ignore = [
    f"ssmcore/{name}.py"
    for name, needs in (("dask", "dask"), ("xarray", "xarray"))
    if importlib.util.find_spec(needs) is None
]
