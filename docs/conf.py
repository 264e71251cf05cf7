"""Sphinx configuration of the scARKIDS documentation (``make docs``)."""

from __future__ import annotations

from importlib import metadata

project = "scARKIDS"
author = "the scARKIDS developers"
copyright = "2025-2026, the scARKIDS developers"
release = metadata.version("scarkids")
version = release

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx.ext.mathjax",
]
autosummary_generate = True
# members inherited from torch.nn.Module are torch's API, not ours
autodoc_default_options = {"members": True, "inherited-members": "Module"}
autodoc_typehints = "none"  # the numpydoc Parameters sections say the types
autoclass_content = "class"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_use_param = True
myst_enable_extensions = ["colon_fence", "dollarmath"]
nb_execution_mode = "force"  # the tutorial runs at every build
nb_execution_timeout = 900
nb_execution_raise_on_error = True
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
html_theme = "furo"
html_title = f"scARKIDS {release}"
suppress_warnings = ["mystnb.unknown_mime_type"]
