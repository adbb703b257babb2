"""Go flannel, the original, as built by ``scripts/goflannel.sh`` into the repository's git-ignored
``.cache/goflannel``: the lab runs it on a host instead of pyflannel's flanneld, and the tests
compare it with ours.

``binary()`` is the Go flanneld's path, or None with ``missing()`` saying why (the message
setup printed, naming what to install).
"""

from __future__ import annotations

import os
from pathlib import Path

VERSION = "v0.28.9"
MODULE = "github.com/flannel-io/flannel"
# src/pyflannel/lab/goflannel.py -> the repository (pyflannel is installed editable by setup)
CACHE = Path(__file__).resolve().parents[3] / ".cache" / "goflannel"
REQUIRE_ENV = "PYFLANNEL_REQUIRE_GO_FLANNEL"  # "1" (CI): a missing Go flannel fails instead of skipping


def binary() -> str | None:
    path = CACHE / "bin" / "flannel"
    stamp = CACHE / "bin" / "flannel.version"
    if os.access(path, os.X_OK) and stamp.exists() and stamp.read_text().strip() == VERSION:
        return str(path)
    return None


def module_dir() -> Path:
    """Flannel's module source in the module cache (read-only use: ``dist/mk-docker-opts.sh``)."""
    return CACHE / "mod" / f"{MODULE}@{VERSION}"


def mk_docker_opts_script() -> str | None:
    path = module_dir() / "dist" / "mk-docker-opts.sh"
    return str(path) if path.exists() else None


def how_built() -> str:
    """``go install ...``, or the fallback build's description (scripts/goflannel.sh)."""
    try:
        return (CACHE / "bin" / "flannel.how").read_text().strip()
    except OSError:
        return ""


def missing() -> str:
    """Why there is no Go flannel: setup's message, or a pointer to setup."""
    try:
        reason = (CACHE / "status").read_text().strip()
    except OSError:
        reason = "it has not been built yet: run `make setup` (needs Go >= 1.25 and gcc)"
    return f"Go flannel {VERSION} is not available: {reason}"


def required() -> bool:
    return os.environ.get(REQUIRE_ENV) == "1"
