"""The installed package's version, for ``smartfarm --version`` and the edge's /health."""
from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version

PACKAGE = "smartfarm"


def package_version() -> str:
    """``0.1.0`` as installed (importlib.metadata), or ``unknown`` when run from a bare tree."""
    try:
        return version(PACKAGE)
    except PackageNotFoundError:
        return "unknown"


def version_line(prog: str = PACKAGE) -> str:
    """``smartfarm 0.1.0 (Python 3.11.9)``: what ``--version`` prints."""
    python = ".".join(str(part) for part in sys.version_info[:3])
    return f"{prog} {package_version()} (Python {python})"
