"""The compiled udp pump (``pyflannel._fastpump``) behind ``UdpPump``'s Python API, and the choice.

``UdpFastPump`` has the same constructor and methods as ``udp_pump.UdpPump`` (``set_tables``,
``start``, ``stop``, ``alive``, ``stats``, ``tables``), so the backend and the tests use either.
The packet loop runs in C threads that never take the GIL (see ``_fastpump.c``); Python keeps the
control: ``set_tables`` turns the immutable ``Tables`` into plain int tuples and the C side swaps
in a complete new table; ``stats`` reads the C counters into the same keys as the Python pump.

``choose_pump`` picks the implementation: the compiled one when it imports, else pure Python;
``PYFLANNEL_PUMP=python`` or ``=c`` forces one (``c`` fails loudly when the module is missing).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from collections import Counter
from collections.abc import Mapping
from typing import Any

from ..core.errors import LocalConfigError
from .udp_pump import Tables, UdpPump

log = logging.getLogger(__name__)

ENV_VAR = "PYFLANNEL_PUMP"

try:
    from .. import _fastpump
except ImportError as err:  # no compiler at install time, or an unsupported platform
    _fastpump = None  # type: ignore[assignment]
    IMPORT_ERROR: str | None = str(err)
else:
    IMPORT_ERROR = None


def available() -> bool:
    return _fastpump is not None


def _ip_int(ip: Any) -> int:
    return int(ipaddress.IPv4Address(ip))


def flatten(tables: Tables) -> tuple[list[tuple[int, int, int, int]], list[tuple[int, int, int]]]:
    """``Tables`` as the C pump takes them: routes ``(net, prefixlen, peer_ip, port)`` and sources
    ``(peer_ip, net, mask)``, every address a host-order int."""
    routes = [(int(net.network_address), net.prefixlen, _ip_int(peer[0]), int(peer[1])) for net, peer in tables.routes]
    peers: Mapping[int, tuple[tuple[int, int], ...]] = tables.sources._peers  # immutable; read, never changed
    sources = [(ip, net, mask) for ip, nets in peers.items() for net, mask in nets]
    return routes, sources


class UdpFastPump:
    """Drop-in for ``UdpPump`` with the per-packet loop in C.

    Options (tests and the benchmark use them; the backend takes the defaults): ``gso``/``gro``
    send runs of equal-size packets to one peer as one UDP_SEGMENT message and receive coalesced
    trains (the wire still carries one datagram per packet); ``split`` runs one thread per
    direction; ``spin_us`` polls that long before sleeping (latency for CPU).
    """

    implementation = "compiled"

    def __init__(self, tun_fd: int, sock: socket.socket, local_ip: int, mtu: int, *, gso: bool | None = None,
                 gro: bool | None = None, split: bool | None = None, spin_us: int | None = None) -> None:
        if _fastpump is None:
            raise RuntimeError(f"the compiled udp pump is not available: {IMPORT_ERROR}")
        self.tun_fd = tun_fd
        self.sock = sock
        self.local_ip = local_ip
        self.mtu = mtu
        self.tables = Tables()
        opts = _env_options()
        self._pump = _fastpump.Pump(
            tun_fd, sock.fileno(), local_ip, mtu,
            gso=opts.get("gso", True) if gso is None else gso,
            gro=opts.get("gro", True) if gro is None else gro,
            split=opts.get("split", True) if split is None else split,
            spin_us=int(opts.get("spin_us", 0)) if spin_us is None else spin_us,
        )
        self._reported = False

    def set_tables(self, tables: Tables) -> None:
        routes, sources = flatten(tables)
        self._pump.set_tables(routes, sources)
        self.tables = tables

    def start(self) -> None:
        self._pump.start()

    def alive(self) -> bool:
        ok = bool(self._pump.alive())
        if not ok and not self._reported:
            err = self._pump.error()
            if err:
                self._reported = True
                log.error("udp pump crashed: %s", err)
        return ok

    def stop(self) -> None:
        self._pump.stop()

    def error(self) -> str | None:
        return self._pump.error()

    def features(self) -> dict[str, Any]:
        """GSO/GRO in use, workers, and call counters (how well the batching works)."""
        return dict(self._pump.features())

    @property
    def stats(self) -> Counter[str]:
        """The same keys as ``UdpPump.stats``; like a Counter, counters still at zero are absent."""
        return Counter({k: v for k, v in self._pump.counters().items() if v})


def _env_options() -> dict[str, Any]:
    """Tuning from ``PYFLANNEL_PUMP_OPTS`` ("gso=0,gro=1,split=1,spin_us=50"), for benchmarks."""
    out: dict[str, Any] = {}
    for item in os.environ.get("PYFLANNEL_PUMP_OPTS", "").split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            continue
        if key in ("gso", "gro", "split"):
            out[key] = value.strip().lower() not in ("0", "false", "no", "off")
        elif key == "spin_us" and value.strip().isdigit():
            out[key] = int(value)
        else:
            log.warning("ignoring PYFLANNEL_PUMP_OPTS item %r", item)
    return out


def choose_pump(env: Mapping[str, str] | None = None) -> tuple[type[UdpPump] | type[UdpFastPump], str]:
    """(pump class, what to log): compiled when available, else pure Python; ``PYFLANNEL_PUMP``
    (``c``/``compiled``, ``python``/``py``, or ``auto``) forces one."""
    want = (os.environ if env is None else env).get(ENV_VAR, "auto").strip().lower() or "auto"
    if want in ("python", "py", "pure"):
        return UdpPump, f"pure python ({ENV_VAR}={want})"
    if want in ("c", "compiled", "fast"):
        if _fastpump is None:
            raise LocalConfigError(f"{ENV_VAR}={want} but the compiled udp pump is not available ({IMPORT_ERROR}); "
                                   "reinstall pyflannel where a C compiler and the Python headers are present, "
                                   f"or unset {ENV_VAR}")
        return UdpFastPump, f"compiled ({ENV_VAR}={want})"
    if want != "auto":
        raise LocalConfigError(f"{ENV_VAR}={want!r} is not one of auto, c, python")
    if _fastpump is None:
        return UdpPump, f"pure python (compiled pump not available: {IMPORT_ERROR})"
    return UdpFastPump, "compiled"
