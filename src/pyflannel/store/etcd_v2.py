"""Read-only access to etcd's **v2** store, over its HTTP API (``GET /v2/keys/...``).

flanneld reads the v3 store; a config written with ``ETCDCTL_API=2 etcdctl mk`` (the article's
command, and every flannel guide before etcd 3.4) lands in the v2 store, invisible to v3. This
module lets flanneld and flannelctl notice that and ``flannelctl config migrate-v2`` copy it over.
It never writes. Every failure (v2 disabled, etcd down, not HTTP) reads as "not there": the v2
lookup is a hint on top of the v3 answer, never a reason to fail.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from .etcd import EtcdOptions

_TIMEOUT = 2.0


@dataclass(frozen=True)
class V2Node:
    key: str
    value: bytes
    ttl: int | None  # seconds left; None: no TTL


class V2Keys:
    """The v2 keys API on the same endpoints (and TLS, user) as the v3 client."""

    def __init__(self, options: EtcdOptions) -> None:
        self.options = options

    def _context(self) -> ssl.SSLContext | None:
        o = self.options
        if not (o.cafile or o.certfile):
            return None
        ctx = ssl.create_default_context(cafile=o.cafile or None)
        if o.certfile:
            ctx.load_cert_chain(o.certfile, o.keyfile or None)
        return ctx

    def _get(self, key: str, recursive: bool) -> dict[str, Any] | None:
        """The decoded ``node`` of the first endpoint that answers with one; None otherwise."""
        path = "/v2/keys" + urllib.parse.quote(key) + ("?recursive=true" if recursive else "")
        headers = {}
        if self.options.username:
            token = base64.b64encode(f"{self.options.username}:{self.options.password}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        try:
            ctx = self._context()
        except (OSError, ssl.SSLError, ValueError):
            return None
        for ep in self.options.endpoints:
            ep = ep.strip().rstrip("/")
            if not ep:
                continue
            url = (ep if "://" in ep else f"http://{ep}") + path
            try:
                with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=_TIMEOUT,
                                            context=ctx) as r:
                    node = json.loads(r.read()).get("node")
                    return node if isinstance(node, dict) else None
            except urllib.error.HTTPError as err:
                if err.code == 404:  # no such key, or the v2 API is off: either way, not there
                    return None
            except (OSError, ValueError, AttributeError):
                continue
        return None

    def probe(self, endpoint: str) -> tuple[str | None, str, float | None]:
        """``GET <endpoint>/version``: (etcd's version or None, what went wrong, its clock as unix
        time from the HTTP ``Date`` header, or None)."""
        url = (endpoint if "://" in endpoint else f"http://{endpoint}").rstrip("/") + "/version"
        try:
            with urllib.request.urlopen(url, timeout=_TIMEOUT, context=self._context()) as r:
                date = r.headers.get("Date")
                when = email.utils.parsedate_to_datetime(date).timestamp() if date else None
                return str(json.loads(r.read()).get("etcdserver", "?")), "", when
        except urllib.error.HTTPError as err:
            return None, f"HTTP {err.code} {err.reason}", None
        except urllib.error.URLError as err:
            return None, str(err.reason), None
        except (OSError, ssl.SSLError, ValueError, AttributeError) as err:
            return None, str(err) or type(err).__name__, None

    def get(self, key: str) -> V2Node | None:
        node = self._get(key, recursive=False)
        if node is None or node.get("dir") or not isinstance(node.get("value"), str):
            return None
        return _node(node)

    def list_dir(self, key: str) -> list[V2Node]:
        """The values directly under ``key`` (a v2 directory); empty when there is none."""
        node = self._get(key, recursive=True)
        if node is None:
            return []
        return [_node(n) for n in node.get("nodes") or [] if isinstance(n, dict) and isinstance(n.get("value"), str)]


def _node(node: dict[str, Any]) -> V2Node:
    ttl = node.get("ttl")
    return V2Node(str(node.get("key", "")), str(node["value"]).encode(), int(ttl) if isinstance(ttl, int) else None)


async def v2_config(options: EtcdOptions, config_key: str) -> bytes | None:
    """``<prefix>/config`` in the v2 store, or None (not there, v2 off, etcd down)."""
    node = await asyncio.to_thread(V2Keys(options).get, config_key)
    return None if node is None else node.value


def only_in_v2(config_key: str, endpoints: str, prefix: str) -> str:
    """The message for a config found only in the v2 store: what happened and the fix."""
    return (f"the network config {config_key} is not in etcd's v3 store but is in its v2 store (written with "
            f"the v2 API, e.g. ETCDCTL_API=2 `etcdctl mk`), which flanneld does not read: copy it to v3 with "
            f"`flannelctl -etcd-endpoints={endpoints} -etcd-prefix={prefix} config migrate-v2`")


async def v2_leases(options: EtcdOptions, subnets_prefix: str) -> list[V2Node]:
    """The keys under ``<prefix>/subnets/`` in the v2 store, with their TTLs."""
    return await asyncio.to_thread(V2Keys(options).list_dir, subnets_prefix.rstrip("/"))
