"""flanneld's HTTP endpoint: flannel's ``/healthz`` and ``/readyz`` (§8), and ``/metrics``.

One small asyncio server in the daemon's loop (no thread, no web framework). Metrics are read at
scrape time from the objects that own them (conductor, registry, backend) by one collector on a
private registry, so nothing is global and nothing is counted twice. The collector lives in
``metrics`` and is imported only when the server is on (prometheus-client costs ~3 MB of RSS).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("flanneld.http")


@dataclass
class Stats:
    """Counters the daemon keeps for the metrics (plain ints: one event loop writes them)."""

    ready: bool = False
    store_ok: bool = True
    etcd_errors: int = 0
    watch_relists: int = 0
    bad_leases: int = 0
    reconcile_runs: int = 0
    reconcile_errors: int = 0
    reconcile_changes: int = 0
    reconcile_seconds: float = 0.0
    masq_repairs: int = 0
    started: float = field(default_factory=time.time)


@dataclass
class View:
    """What the collector asks the daemon at scrape time."""

    stats: Stats
    lease: Callable[[], Any] = lambda: None  # our Lease or None
    backend: Callable[[], str] = lambda: ""
    peers: Callable[[], int] = lambda: 0
    datapath: Callable[[], dict[str, int]] = dict  # udp pump counters


class HttpServer:
    """GET /healthz, /readyz, /metrics on --healthz-ip:--healthz-port."""

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
            return 503, "text/plain", b"flanneld is not ready yet"
        if path == "/metrics":
            from prometheus_client import generate_latest

            return 200, "text/plain; version=0.0.4; charset=utf-8", generate_latest(self.registry)
        return 404, "text/plain", b"not found: try /healthz, /readyz or /metrics"

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
