"""``mk-docker-opts --daemon-json[=FILE]``: flannel's Docker options as settings in docker's own
``daemon.json`` (pyflannel's extension; flannel's script has no such mode).

Why: flannel's way hands docker ``--bip/--mtu/--ip-masq`` through an env file and a drop-in that
replaces docker's ``ExecStart``. That drops Debian docker.io's ``--containerd=…``, names a dockerd
that docker-ce does not have (``/usr/bin/dockerd``), and ties docker's lifecycle to flanneld's.
Every packaging of dockerd reads ``/etc/docker/daemon.json``, so the stock unit stays as it is and
the drop-in only orders docker after flanneld.

The merge owns exactly three keys (``bip``, ``mtu``, ``ip-masq``) and keeps every other key and its
order; the file is replaced atomically and only when it changes; a file that is not a JSON object
is refused with one line and left untouched (never corrupt an operator's config).
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Mapping
from typing import Any

from ..subnetfile import atomic_write

DEFAULT_PATH = "/etc/docker/daemon.json"
OWNED = ("bip", "mtu", "ip-masq")


class DaemonJsonError(Exception):
    """The existing daemon.json cannot be merged into; ``str()`` names the cause and the fix."""


def docker_settings(values: Mapping[str, str], ipmasq: bool = True) -> dict[str, Any]:
    """subnet.env values -> daemon.json settings, as mk-docker-opts derives its options."""
    out: dict[str, Any] = {}
    if values.get("FLANNEL_SUBNET"):
        out["bip"] = values["FLANNEL_SUBNET"]
    masq = values.get("FLANNEL_IPMASQ", "")
    if masq and ipmasq:
        if masq not in ("true", "false"):
            raise DaemonJsonError(f"Invalid value of FLANNEL_IPMASQ: {masq}")
        out["ip-masq"] = masq == "false"  # flannel masquerades itself: docker must not, and vice versa
    if values.get("FLANNEL_MTU"):
        try:
            out["mtu"] = int(values["FLANNEL_MTU"])
        except ValueError as err:
            raise DaemonJsonError(f"Invalid value of FLANNEL_MTU: {values['FLANNEL_MTU']}") from err
    return out


def merge(existing: str | None, settings: Mapping[str, Any], path: str = DEFAULT_PATH) -> str:
    """The new daemon.json text: ``existing`` with the owned keys set from ``settings`` (an owned
    key flannel has no value for is removed)."""
    doc: dict[str, Any] = {}
    if existing is not None and existing.strip():
        try:
            doc = json.loads(existing)
        except ValueError as err:
            raise DaemonJsonError(f"{path} is not valid JSON ({err}): fix it (docker would not start with it "
                                  "either); it was left untouched") from err
        if not isinstance(doc, dict):
            raise DaemonJsonError(f"{path} is not a JSON object: fix it; it was left untouched")
    for key in OWNED:
        doc.pop(key, None)
    for key in OWNED:
        if key in settings:
            doc[key] = settings[key]
    return json.dumps(doc, indent=2) + "\n"


def write_if_changed(path: str, text: str) -> bool:
    """Atomically replace ``path`` with ``text`` unless it already holds it; True if written."""
    with contextlib.suppress(FileNotFoundError), open(path, encoding="utf-8") as f:
        if f.read() == text:
            return False
    atomic_write(path, text, prefix=".daemon.json.")
    return True


def run(values: Mapping[str, str], path: str, ipmasq: bool, prog: str) -> int:
    """Merge flannel's settings into ``path``; the exit status (1 with one line on stderr)."""
    try:
        settings = docker_settings(values, ipmasq)
        try:
            with open(path, encoding="utf-8") as f:
                existing: str | None = f.read()
        except FileNotFoundError:
            existing = None
        text = merge(existing, settings, path)
        if write_if_changed(path, text):
            shown = ", ".join(f"{k}={json.dumps(v)}" for k, v in settings.items())
            print(f"{prog}: wrote {shown} to {path}; docker uses them from its next start", file=sys.stderr)
    except (DaemonJsonError, UnicodeDecodeError) as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"{prog}: cannot update {path}: {err.strerror or err}", file=sys.stderr)
        return 1
    return 0
