"""flanneld's HTTP endpoint: flannel's ``/healthz`` and ``/readyz`` (docs/compatibility.md#health),
``/metrics`` and ``/peers``.

One small asyncio server in the daemon's loop (no thread, no web framework). Metrics are read at
scrape time from the objects that own them (conductor, registry, backend) by one collector on a
private registry, so nothing is global and nothing is counted twice. The collector lives in
``metrics`` and is imported only when the server is on (prometheus-client costs ~3 MB of RSS).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("flanneld.http")


@dataclass
class Stats:
    """The conductor's own state for the metrics (one event loop writes it)."""

    ready: bool = False
    not_ready: str = ""  # why not ready while forwarding (e.g. subnet.env cannot be written)
    store_ok: bool = True
    watch_relists: int = 0
    started: float = field(default_factory=time.time)


@dataclass
class View:
    """What the collector and the endpoints read at scrape time, from the objects that own each
    figure (nothing is copied or refreshed on the way)."""

    stats: Stats
    lease: Callable[[], Any] = lambda: None  # our Lease or None
    backend: Callable[[], str] = lambda: ""
    peers: Callable[[], int] = lambda: 0
    datapath: Callable[[], dict[str, int]] = dict  # udp pump counters
    etcd_errors: Callable[[], int] = lambda: 0
    bad_leases: Callable[[], int] = lambda: 0
    reconcile: Callable[[], Any] = lambda: None  # the converger's ConvergeStats or None
    masq_repairs: Callable[[], int] = lambda: 0
    programmed: Callable[[], dict[str, Any]] = dict  # /peers: the data path's peer table


class HttpServer:
    """GET /healthz, /readyz, /metrics and /peers on --healthz-ip:--healthz-port."""

    def __init__(self, host: str, port: int, view: View) -> None:
        from .metrics import registry_for  # only with --healthz-port

        self.host, self.port, self.view = host, port, view
        self.registry = registry_for(view)
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        log.info("serving /healthz /readyz /metrics on %s:%d", self.host, self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 3)

    def respond(self, path: str) -> tuple[int, str, bytes]:
        if path == "/healthz":
            return 200, "text/plain", b"flanneld is running"
        if path == "/readyz":
            if self.view.stats.ready and self.view.stats.store_ok:
                return 200, "text/plain", b"flanneld is ready"
            if self.view.stats.ready:
                return 503, "text/plain", b"flanneld is not ready: etcd is unreachable (forwarding continues)"
            if self.view.stats.not_ready:
                why = f"flanneld is not ready: {self.view.stats.not_ready} (forwarding continues)"
                return 503, "text/plain", why.encode()
            return 503, "text/plain", b"flanneld is not ready yet"
        if path == "/metrics":
            from prometheus_client import generate_latest

            return 200, "text/plain; version=0.0.4; charset=utf-8", generate_latest(self.registry)
        if path == "/peers":
            return 200, "application/json", json.dumps(self.view.programmed(), sort_keys=True).encode()
        return 404, "text/plain", b"not found: try /healthz, /readyz, /metrics or /peers"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = line.decode("latin-1").split()
            method, path = (parts[0], parts[1].split("?")[0]) if len(parts) >= 2 else ("", "")
            status, ctype, body = self.respond(path) if method in ("GET", "HEAD") else (405, "text/plain", b"")
            reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}[status]
            head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                    "Connection: close\r\n\r\n").encode()
            writer.write(head + (body if method == "GET" else b""))
            await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
