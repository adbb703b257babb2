"""subnet.env on disk: written atomically (flannel uses renameio), read back at the next start."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import tempfile

from .core.errors import LocalConfigError
from .core.subnetenv import parse_subnet_env, previous_subnets

log = logging.getLogger("flanneld")


def write_subnet_file(path: str, text: str) -> None:
    """Atomic: a temp file in the same directory, fsync, rename; mode 0644 (flannel: renameio)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o755, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".subnet.env.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_previous_subnet(path: str) -> tuple[ipaddress.IPv4Network | None, ipaddress.IPv4Network | None]:
    """(previous FLANNEL_SUBNET as a network, previous FLANNEL_NETWORK) from an old subnet.env."""
    try:
        with open(path) as f:
            values = parse_subnet_env(f.read(), source=path)
    except FileNotFoundError:
        return None, None
    except (OSError, LocalConfigError) as err:
        log.warning("ignoring unreadable previous subnet file %s: %s", path, err)
        return None, None
    prev_net = None
    with contextlib.suppress(ValueError):
        prev_net = ipaddress.IPv4Network(values.get("FLANNEL_NETWORK", ""), strict=False)
    return previous_subnets(values)[0], prev_net
