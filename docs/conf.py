"""Sphinx configuration of the ssmcore documentation site.

Build it with ``python -m sphinx -W --keep-going -b html docs docs/_build/html``
(``.ci/run`` does exactly that, after the tests).

Cross-references to NumPy, SciPy, PyTorch, JAX and Dask (intersphinx) resolve
offline by default from the small inventories committed in ``docs/_inventories/``
(written by ``docs/_tools/make_inventories.py``): the build never touches the
network, so it cannot warn about a failed fetch. With
``SSMCORE_DOCS_INTERSPHINX=online`` the projects' published inventories are
fetched first and the local ones are the fallback (Sphinx then reports a failed
fetch at info level, not as a warning).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))  # document the checkout, not whatever ssmcore is installed
sys.path.insert(0, str(DOCS / "_tools"))

from inventories import INTERSPHINX_BASES  # noqa: E402

import ssmcore  # noqa: E402

project = "ssmcore"
author = "the ssmcore developers"
copyright = "the ssmcore developers"  # noqa: A001 - Sphinx's name for it
release = version = ssmcore.__version__

extensions = [
    "myst_parser",
    "numpydoc",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx_gallery.gen_gallery",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_api_functions.rst", "_tools", "_inventories", "**/*.ipynb",
                    "gallery/*.py", "gallery/*.zip", "gallery/*.md5", "gallery/*.json"]
templates_path: list[str] = []

# --- MyST: the guide pages are plain Markdown that also reads well on a code host
myst_heading_anchors = 3  # [text](#choosing-a-mode) and page.md#section links
myst_enable_extensions = ["dollarmath", "amsmath"]

# --- API reference: generated from ssmcore.__all__ (see _api_page below)
# api.rst includes the generated table; autosummary reads both for its stubs (docs/generated/).
autosummary_generate = ["api.rst", "_api_functions.rst"]
autosummary_imported_members = True
autodoc_typehints = "none"  # numpydoc's Parameters section carries the types
autodoc_default_options = {"members": False}
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
numpydoc_validation_checks: set[str] = set()  # validation is a test (tests/test_docstrings.py)

# --- intersphinx: offline inventories by default (module docstring)
_online = os.environ.get("SSMCORE_DOCS_INTERSPHINX", "offline") == "online"
intersphinx_mapping = {
    name: (base, (None, str(DOCS / "_inventories" / f"{name}.inv")) if _online
           else str(DOCS / "_inventories" / f"{name}.inv"))
    for name, base in INTERSPHINX_BASES.items()
}
intersphinx_timeout = 10

# --- sphinx-gallery: examples/gallery/plot_*.py run at build time, their figures kept
_gallery_skip = []
if importlib.util.find_spec("dask") is None or importlib.util.find_spec("ssmcore.dask") is None:
    _gallery_skip.append("dask")  # ssmcore.dask not in this checkout (or dask missing): no Dask example
sphinx_gallery_conf = {
    "examples_dirs": str(ROOT / "examples" / "gallery"),
    "gallery_dirs": "gallery",
    "filename_pattern": r"/plot_",
    "ignore_pattern": r"__init__\.py" + "".join(f"|plot_[^/]*{s}" for s in _gallery_skip),
    "within_subsection_order": "FileNameSortKey",
    "download_all_examples": False,
    "remove_config_comments": True,
    "abort_on_example_error": False,  # report every failing example, then fail the build
    "only_warn_on_example_error": False,
    "backreferences_dir": None,
    "show_memory": False,
    "min_reported_time": 1,
    "image_scrapers": ("matplotlib",),
    "reset_modules": ("matplotlib",),
    "capture_repr": (),
}

# --- HTML
html_theme = "pydata_sphinx_theme"
html_title = f"ssmcore {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "navbar_end": ["theme-switcher"],
    "footer_start": ["copyright"],
    "footer_end": [],
}
html_static_path: list[str] = []
html_show_sourcelink = False

# Guide pages in the order of the user guide; any other top-level Markdown page
# (e.g. gpu.md, dask.md added later) is appended to the guide toctree by _guide_pages.
GUIDE_ORDER = ["discretization", "hippo", "scan", "lti", "convolution", "selective_scan", "ssd",
               "adapters", "gradients"]
NOT_GUIDE = {"index", "benchmarking", "changelog", "contributing", "api"}
GUIDE_MARKER = "guide-pages-not-listed-above"

# Titles of the API sections, by the module that defines the functions; a module not
# listed here gets a section titled from its name, so new areas appear without an edit.
API_SECTIONS = {
    "ssmcore.registry": "Gradients and the op registry",
    "ssmcore._discretization": "Discretisation",
    "ssmcore._hippo": "HiPPO",
    "ssmcore._initializers": "Diagonal initialisations (S4D, Mamba, LRU)",
    "ssmcore._scan": "Scans",
    "ssmcore._selective_scan": "Selective scan (Mamba)",
    "ssmcore._ssd": "State space duality (Mamba-2)",
    "ssmcore._lti": "LTI simulation",
    "ssmcore._convolution": "Convolution mode",
    "ssmcore._warmup": "Compiling ahead (warm-up)",
}


def public_functions() -> list[tuple[str, object]]:
    """``(name, object)`` of every callable in ``ssmcore.__all__``, in its order."""
    return [(n, getattr(ssmcore, n)) for n in ssmcore.__all__ if callable(getattr(ssmcore, n))]


def _api_page() -> str:
    """The body of _api_functions.rst (included by api.rst): one autosummary table per module."""
    groups: dict[str, list[str]] = {}
    for name, obj in public_functions():
        groups.setdefault(getattr(obj, "__module__", "ssmcore"), []).append(name)
    order = list(API_SECTIONS) + sorted(set(groups) - set(API_SECTIONS))
    out = [".. This file is generated by docs/conf.py from ssmcore.__all__; do not edit.", "",
           ".. currentmodule:: ssmcore", ""]
    for module in order:
        if module not in groups:
            continue
        title = API_SECTIONS.get(module, module.rsplit(".", 1)[-1].strip("_").replace("_", " ").capitalize())
        out += [title, "-" * len(title), "", ".. autosummary::", "   :toctree: generated", "   :nosignatures:", ""]
        out += [f"   {name}" for name in sorted(groups[module], key=str.lower)]
        out.append("")
    # The framework modules present in this checkout (ssmcore.dask/xarray may not be).
    present = [m for m, (framework, _extra) in ssmcore._LAZY_SUBMODULES.items()
               if importlib.util.find_spec(f"ssmcore.{m}") is not None and importlib.util.find_spec(framework)]
    title = "Framework adapters"
    out += [title, "-" * len(title), "",
            "``ssmcore.<framework>.<op>`` takes the same arguments as the NumPy function of the same name;",
            "these modules are lazy attributes of ``ssmcore`` (see :doc:`adapters`).", ""]
    for m in present:
        out += [f".. automodule:: ssmcore.{m}", "   :no-members:", ""]
    return "\n".join(out)


def _write_if_changed(path: Path, text: str) -> None:
    # Rewriting an unchanged file would make Sphinx rebuild every page that includes it.
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


_write_if_changed(DOCS / "_api_functions.rst", _api_page())


def _guide_pages(app, docname, source):
    """Replace the marker line of index.md's guide toctree by the unlisted guide pages."""
    if docname != "index":
        return
    pages = sorted(p.stem for p in DOCS.glob("*.md") if p.stem not in set(GUIDE_ORDER) | NOT_GUIDE)
    source[0] = source[0].replace(GUIDE_MARKER + "\n", "".join(f"{p}\n" for p in pages))


def setup(app):
    app.connect("source-read", _guide_pages)
    return {"parallel_read_safe": True}
