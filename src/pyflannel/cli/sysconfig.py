"""flannelctl on a host installed as the article does: the etcd endpoints and prefix (and the
health port and subnet file in ``FLANNEL_OPTIONS``) come from ``/etc/sysconfig/flanneld``, the file
systemd hands flanneld, so that ``flannelctl status`` needs no flags there.

Precedence, highest first: flags; ``FLANNELD_*`` variables; ``FLANNEL_ETCD_ENDPOINTS`` /
``FLANNEL_ETCD_PREFIX`` / ``FLANNEL_OPTIONS`` in the environment; the same in the sysconfig file
(``FLANNEL_SYSCONFIG`` names another file). The file is read as systemd reads an EnvironmentFile
(``KEY=value``, quotes stripped, ``#`` comments); a line it cannot read is skipped.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping

DEFAULT_PATH = "/etc/sysconfig/flanneld"
# flanneld flags in FLANNEL_OPTIONS that flannelctl uses too
_SHARED = ("etcd-endpoints", "etcd-prefix", "etcd-keyfile", "etcd-certfile", "etcd-cafile", "etcd-username",
           "etcd-password", "subnet-file", "healthz-ip", "healthz-port")


def read_env_file(path: str) -> dict[str, str]:
    """``KEY=value`` lines of an EnvironmentFile; {} when it is absent or unreadable."""
    out: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read(1 << 20).splitlines()
    except OSError:
        return out
    for line in lines:
        line = line.strip()
        if not line or line.startswith(("#", ";")) or "=" not in line:
            continue
        key, _, value = line.partition("=")
        try:
            words = shlex.split(value, comments=False)
        except ValueError:
            continue
        out[key.strip()] = " ".join(words)
    return out


def _flags_in(options: str) -> dict[str, str]:
    """``-healthz-port=8081 --subnet-file /x`` -> {"healthz-port": "8081", "subnet-file": "/x"}."""
    try:
        words = shlex.split(options)
    except ValueError:
        return {}
    out, i = {}, 0
    while i < len(words):
        name, eq, value = words[i].lstrip("-").partition("=")
        if words[i].startswith("-") and name in _SHARED:
            if not eq and i + 1 < len(words):
                value, i = words[i + 1], i + 1
            out[name] = value
        i += 1
    return out


def with_sysconfig(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` plus ``FLANNELD_*`` defaults derived from the sysconfig variables."""
    conf = read_env_file(environ.get("FLANNEL_SYSCONFIG", DEFAULT_PATH))
    conf.update({k: v for k, v in environ.items() if k.startswith("FLANNEL_")})
    derived = {name: value for name, value in _flags_in(conf.get("FLANNEL_OPTIONS", "")).items()}
    if conf.get("FLANNEL_ETCD_ENDPOINTS"):
        derived["etcd-endpoints"] = conf["FLANNEL_ETCD_ENDPOINTS"]
    if conf.get("FLANNEL_ETCD_PREFIX"):
        derived["etcd-prefix"] = conf["FLANNEL_ETCD_PREFIX"]
    out = {f"FLANNELD_{name.upper().replace('-', '_')}": value for name, value in derived.items()}
    out.update(environ)  # FLANNELD_* set in the environment win
    return out


__all__ = ["DEFAULT_PATH", "read_env_file", "with_sysconfig"]
