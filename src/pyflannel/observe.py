"""flanneld's HTTP endpoint: flannel's ``/healthz`` and ``/readyz`` (docs/compatibility.md#health),
``/metrics`` and ``/peers``.

One small asyncio server in the daemon's loop (no thread, no web framework). Metrics are read at
scrape time from the objects that own them (conductor, registry, backend) by one collector on a
private registry, so nothing is global and nothing is counted twice. The collector lives in
``metrics`` and is imported only when the server is on (prometheus-client costs ~3 MB of RSS).
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .core.backoff import LogOnce
from .core.plan import public_of

log = logging.getLogger("flanneld.http")


@dataclass
class Stats:
    """The conductor's own state for the metrics (one event loop writes it)."""

    subnet_file_written: bool = False  # Go flannel's whole notion of ready
    not_ready: str = ""  # why subnet.env is not written while forwarding (e.g. it cannot be written)
    store_ok: bool = True  # the store probe's last read of etcd succeeded
    store_problem: str = ""  # why not, for /readyz ("the Kubernetes API server is unreachable")
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
    known: Callable[[], int] = lambda: 0  # peer leases in the watcher's table (programmed or not)
    wg_peers: Callable[[], list[dict[str, Any]]] = list  # wireguard: each peer's handshake and bytes
    network: Callable[[], str] = lambda: ""  # the Network of the config flanneld runs with
    compiled_pump: Callable[[], bool] = lambda: False  # whether the compiled udp pump was built


def readiness(stats: Stats) -> tuple[bool, str]:
    """Whether flanneld is ready and, if not, why: what ``/readyz`` answers and ``flannel_ready``
    reports (one function, so that they cannot disagree). Ready means subnet.env is written (Go
    flannel's /readyz) *and* etcd answers (pyflannel's addition: without etcd no new peer is
    learnt and our lease cannot be renewed; forwarding to the known peers goes on)."""
    if stats.subnet_file_written and stats.store_ok:
        return True, "flanneld is ready"
    if stats.subnet_file_written:
        return False, f"flanneld is not ready: {stats.store_problem or 'etcd is unreachable'} (forwarding continues)"
    if stats.not_ready:
        return False, f"flanneld is not ready: {stats.not_ready} (forwarding continues)"
    return False, "flanneld is not ready yet"


def _span(seconds: float) -> str:
    s = int(seconds)
    h, rest = divmod(abs(s), 3600)
    text = f"{h}h{rest // 60:02d}m{rest % 60:02d}s" if h else f"{rest // 60}m{rest % 60:02d}s"
    return text if s >= 0 else f"-{text}"


def state_lines(view: View, now: float | None = None, show: int = 8) -> list[str]:
    """The daemon's state in a few lines, for the log (SIGUSR1): lease, peers, converger, etcd."""
    now = time.time() if now is None else now
    s, lease = view.stats, view.lease()
    if lease is None:
        own = "lease: none yet"
    elif lease.is_reservation:
        own = f"lease {lease.ident} public_ip={public_of(lease)} reservation (never expires)"
    else:
        left = "unknown" if lease.expiration is None else _span(lease.expiration - now)
        own = f"lease {lease.ident} public_ip={public_of(lease)} expires_in={left}"
    lines = [f"state: {own} backend={view.backend() or '-'} ready={'yes' if readiness(s)[0] else 'no'} "
             f"etcd={'ok' if s.store_ok else 'UNREACHABLE'} up={_span(now - s.started)}"]
    rows = list(view.programmed().get("peers", []))
    listed = ", ".join(f"{r['subnet']} via {r['public_ip']}" for r in rows[:show])
    more = f" (+{len(rows) - show} more)" if len(rows) > show else ""
    lines.append(f"state: peers in etcd={view.known()} programmed={len(rows)} bad_keys={view.bad_leases()}"
                 + (f": {listed}{more}" if rows else ""))
    r = view.reconcile()
    if r is not None:
        last = f"{_span(now - r.last_ok)} ago" if r.last_ok else "never"
        lines.append(f"state: converger runs={r.runs} full={r.full_runs} changes={r.changes} errors={r.errors} "
                     f"last_ok={last}; etcd errors={view.etcd_errors()} relists={s.watch_relists}")
    counters = view.datapath()
    if counters:
        shown = " ".join(f"{k}={v}" for k, v in sorted(counters.items()) if v)
        lines.append(f"state: datapath {shown or 'no packets yet'}")
    return lines


MAX_CONNECTIONS = 32  # served at once; more wait in the kernel's listen backlog, costing us no descriptor
REQUEST_TIMEOUT_S = 2.0  # a whole exchange: the request head, the answer and the close
_HEAD_LIMIT = 8192  # bytes of one request line or header line
_BUSY_WARNING_S = 600.0  # "all slots busy" is logged at most this often


def listen_socket(host: str, port: int, backlog: int = 128) -> socket.socket:
    """A listening, non-blocking TCP socket on ``host:port`` (SO_REUSEADDR, as asyncio's)."""
    family, kind, proto, _, addr = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                      flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class HttpServer:
    """GET /healthz, /readyz, /metrics and /peers on --healthz-ip:--healthz-port.

    It listens on every address by default (flannel's), so it must survive a flood: at most
    ``MAX_CONNECTIONS`` are served at once (the next ones wait in the listen backlog, holding no
    descriptor of ours, and are accepted as slots free up); each exchange has
    ``REQUEST_TIMEOUT_S`` in all, then the connection is cut; nothing is logged per connection.
    An accept that fails (EMFILE: out of descriptors) is logged once and retried every second.
    """

    def __init__(self, host: str, port: int, view: View) -> None:
        from .metrics import registry_for  # only with --healthz-port

        self.host, self.port, self.view = host, port, view
        self.registry = registry_for(view, readiness)
        self._sock: socket.socket | None = None
        self._acceptor: asyncio.Task[None] | None = None
        self._serving: set[asyncio.Task[None]] = set()
        self._accept_log = LogOnce(log, logging.WARNING)
        self._busy_warned_at: float | None = None
        self._failed_once = False
        self.cut = 0  # connections closed unanswered (idle, too slow, garbage)

    async def start(self) -> None:
        self._sock = listen_socket(self.host, self.port)
        self._acceptor = asyncio.create_task(self._accept_loop(self._sock), name="health-accept")
        log.info("serving /healthz /readyz /metrics on %s:%d", self.host, self.port)

    async def close(self) -> None:
        tasks = [t for t in (self._acceptor, *self._serving) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=3)
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def _accept_loop(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        slots = asyncio.Semaphore(MAX_CONNECTIONS)
        while True:
            if slots.locked():
                self._warn_busy()
            await slots.acquire()
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError as err:
                slots.release()
                if err.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EINTR):
                    continue  # that client gave up before we took it
                self._accept_log.error("the health server cannot accept connections (%s); retrying every second "
                                       "(raise flanneld's open files limit, LimitNOFILE= in systemd)",
                                       err.strerror or err)
                await asyncio.sleep(1.0)
                continue
            self._accept_log.ok("the health server accepts connections again")
            task = asyncio.create_task(self._serve(conn))
            self._serving.add(task)
            task.add_done_callback(lambda t: (self._serving.discard(t), slots.release()))

    def _warn_busy(self) -> None:
        now = time.monotonic()
        if self._busy_warned_at is None or now - self._busy_warned_at >= _BUSY_WARNING_S:
            self._busy_warned_at = now
            log.warning("the health server has %d connections open, its most: further ones wait (each gets %gs); "
                        "if nothing here scrapes that much, something is flooding %s:%d (said at most every %gs)",
                        MAX_CONNECTIONS, REQUEST_TIMEOUT_S, self.host, self.port, _BUSY_WARNING_S)

    async def _serve(self, conn: socket.socket) -> None:
        try:
            reader, writer = await asyncio.open_connection(sock=conn, limit=_HEAD_LIMIT)
        except OSError:
            conn.close()
            self.cut += 1
            return
        answered = False
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                await self._exchange(reader, writer)
                writer.close()
                await writer.wait_closed()
            answered = True
        except (TimeoutError, OSError, ValueError, UnicodeError):  # the client's doing: cut it, say nothing
            self.cut += 1
        except Exception:  # ours: say it (once), keep serving
            if not self._failed_once:
                self._failed_once = True
                log.exception("the health server failed to answer a request (said once)")
        finally:
            if not answered:
                writer.transport.abort()

    def respond(self, path: str) -> tuple[int, str, bytes]:
        if path == "/healthz":
            return 200, "text/plain", b"flanneld is running"
        if path == "/readyz":
            ready, why = readiness(self.view.stats)
            return 200 if ready else 503, "text/plain", why.encode()
        if path == "/metrics":
            from prometheus_client import generate_latest

            return 200, "text/plain; version=0.0.4; charset=utf-8", generate_latest(self.registry)
        if path == "/peers":
            return 200, "application/json", json.dumps(self.view.programmed(), sort_keys=True).encode()
        return 404, "text/plain", b"not found: try /healthz, /readyz, /metrics or /peers"

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        while (await reader.readline()) not in (b"\r\n", b"\n", b""):
            pass
        parts = line.decode("latin-1").split()
        method, path = (parts[0], parts[1].split("?")[0]) if len(parts) >= 2 else ("", "")
        status, ctype, body = self.respond(path) if method in ("GET", "HEAD") else (405, "text/plain", b"")
        reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}[status]
        head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n").encode()
        writer.write(head + (body if method == "GET" else b""))
        await writer.drain()
