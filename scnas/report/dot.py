"""Graphviz's `dot` program, which draws the cell diagrams: pip cannot install it, so its absence is one
line saying how to (kept free of heavy imports: the Snakefile asks too)."""

from __future__ import annotations

import shutil

from scnas.errors import ScnasError

DOT_MISSING = (
    "Graphviz's `dot` program is not on PATH (it draws the cell diagrams): install Graphviz "
    "(Debian/Ubuntu: sudo apt-get install -y graphviz; conda: conda install -c conda-forge graphviz)"
)


def have_dot() -> bool:
    return shutil.which("dot") is not None


def require_dot() -> None:
    """Stop with one line saying how to install Graphviz when its `dot` program is missing."""
    if not have_dot():
        raise ScnasError(DOT_MISSING)
