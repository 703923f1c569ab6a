"""Offline intersphinx inventories for the names ssmcore's documentation links to.

CI builds the documentation without network access, so Sphinx cannot download the
``objects.inv`` of NumPy, SciPy, PyTorch, JAX or Dask. This module lists the
objects our pages and docstrings refer to, checks each against the installed
package (so a name that does not exist is an error here, not a dead link), and
writes a small inventory per project in Sphinx's format into
``docs/_inventories/``. ``docs/conf.py`` reads them.

Regenerate after adding a cross-reference to a new external object::

    python docs/_tools/inventories.py

The URL of an object follows the layout of each project's published documentation
(``INTERSPHINX_BASES`` + ``_uri``); ``SSMCORE_DOCS_INTERSPHINX=online`` makes Sphinx
use the published inventories instead, which checks these links.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import zlib
from pathlib import Path

INTERSPHINX_BASES = {
    "numpy": "https://numpy.org/doc/stable/",
    "scipy": "https://docs.scipy.org/doc/scipy/",
    "torch": "https://docs.pytorch.org/docs/stable/",
    "jax": "https://docs.jax.dev/en/latest/",
    "dask": "https://docs.dask.org/en/stable/",
}

NAMES = {
    "numpy": ["numpy.ndarray", "numpy.dtype", "numpy.asarray", "numpy.einsum", "numpy.convolve",
              "numpy.linalg.solve", "numpy.linalg.matrix_power", "numpy.linalg.LinAlgError",
              "numpy.linalg.norm", "numpy.linalg.eigh", "numpy.fft.rfft", "numpy.fft.irfft",
              "numpy.random.Generator", "numpy.random.default_rng"],
    "scipy": ["scipy.signal", "scipy.linalg", "scipy.fft", "scipy.signal.cont2discrete",
              "scipy.signal.dlsim", "scipy.signal.lsim", "scipy.signal.lti", "scipy.signal.dlti",
              "scipy.signal.lfilter", "scipy.signal.freqz", "scipy.signal.dstep", "scipy.signal.butter",
              "scipy.signal.ss2tf", "scipy.signal.fftconvolve", "scipy.linalg.expm",
              "scipy.special.eval_legendre"],
    "torch": ["torch.Tensor", "torch.compile", "torch.autograd", "torch.autograd.Function",
              "torch.autograd.gradcheck", "torch.func", "torch.func.grad", "torch.func.vmap",
              "torch.library", "torch.nn.Module", "torch.optim.Adam"],
    "jax": ["jax.jit", "jax.grad", "jax.vmap", "jax.value_and_grad", "jax.custom_vjp", "jax.pure_callback",
            "jax.Array", "jax.numpy"],
    "dask": ["dask.array", "dask.array.Array", "dask.array.map_blocks", "dask.array.from_array",
             "dask.compute"],
}

# Pages of modules that are not "generated/<name>.html" in their project's docs.
MODULE_PAGES = {
    "numpy.linalg": "reference/routines.linalg.html",
    "numpy.fft": "reference/routines.fft.html",
    "scipy.signal": "reference/signal.html",
    "scipy.linalg": "reference/linalg.html",
    "scipy.fft": "reference/fft.html",
    "torch.autograd": "autograd.html",
    "torch.func": "func.api.html",
    "torch.library": "library.html",
    "jax.numpy": "jax.numpy.html",
    "dask.array": "array-api.html",
}


def _resolve(name: str):
    """Return the object a dotted name refers to.

    Attributes come first (``torch.autograd.gradcheck`` is the function, not the
    submodule of the same name); submodules are imported where no attribute exists.
    """
    parts = name.split(".")
    obj = importlib.import_module(parts[0])
    for i, attr in enumerate(parts[1:], start=2):
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            obj = importlib.import_module(".".join(parts[:i]))
    return obj


def _role(obj) -> str:
    if inspect.ismodule(obj):
        return "module"
    if inspect.isclass(obj):
        return "exception" if issubclass(obj, BaseException) else "class"
    return "function"


def _uri(project: str, name: str, role: str) -> str:
    if role == "module":
        return f"{MODULE_PAGES[name]}#module-{name}"
    if project in ("numpy", "scipy"):
        return f"reference/generated/{name}.html#{name}"
    if project == "torch":
        return f"generated/{name}.html#{name}" if name != "torch.Tensor" else "tensors.html#torch.Tensor"
    if project == "jax":
        return f"_autosummary/{name}.html#{name}"
    return f"generated/{name}.html#{name}"


def inventory(project: str) -> bytes:
    """The objects.inv (version 2) of the listed names of ``project``."""
    lines = []
    for name in NAMES[project]:
        role = _role(_resolve(name))
        lines.append(f"{name} py:{role} 1 {_uri(project, name, role)} -\n")
    header = (f"# Sphinx inventory version 2\n# Project: {project}\n# Version: \n"
              "# The remainder of this file is compressed using zlib.\n").encode()
    return header + zlib.compress("".join(lines).encode())


def main() -> int:
    out = Path(__file__).resolve().parent.parent / "_inventories"
    out.mkdir(exist_ok=True)
    for project in INTERSPHINX_BASES:
        try:
            data = inventory(project)
        except ImportError as exc:
            print(f"{project}: not installed ({exc}); inventory left as it is", file=sys.stderr)
            continue
        (out / f"{project}.inv").write_bytes(data)
        print(f"{project}: {len(NAMES[project])} objects")
    return 0


if __name__ == "__main__":
    sys.exit(main())
