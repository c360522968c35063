"""Where Numba's on-disk cache of compiled kernels goes when the package directory is read-only.

Kernels are ``cache=True``: Numba writes them beside the sources
(``__pycache__``) or, when that directory is read-only (an installed package),
in the user-wide cache (``$XDG_CACHE_HOME`` or ``~/.cache``, ``numba/``). When
neither is writable Numba refuses to compile at all ("no locator available"),
so :func:`ensure_cache_dir` points it at a per-user folder in the temporary
directory instead. ``NUMBA_CACHE_DIR``, when set, always wins.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _writable(path: Path) -> bool:
    """Whether ``path`` exists as a writable folder or could be created as one."""
    p = path
    while not p.exists():
        if p.parent == p:
            return False
        p = p.parent
    return p.is_dir() and os.access(p, os.W_OK | os.X_OK)


def fallback_cache_dir(package_dir: Path, user_cache: Path, environ) -> str | None:
    """The folder to use as ``NUMBA_CACHE_DIR``, or None when Numba's own choice works."""
    if environ.get("NUMBA_CACHE_DIR") or _writable(package_dir) or _writable(user_cache):
        return None
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return str(Path(tempfile.gettempdir()) / f"tcpc-numba-cache-{uid}")


def ensure_cache_dir() -> None:
    """Set ``NUMBA_CACHE_DIR`` (before Numba is imported) when no default cache location is writable."""
    user_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "numba"
    chosen = fallback_cache_dir(Path(__file__).resolve().parent, user_cache, os.environ)
    if chosen is not None:
        os.environ["NUMBA_CACHE_DIR"] = chosen
