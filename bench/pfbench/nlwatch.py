"""Netlink route/neighbour/FDB events from many lab namespaces, in this one process.

Why: timing convergence by polling ``ip route`` in 100 namespaces would cost more CPU than the
flanneld processes being measured, and blur the times. Instead one ``NETLINK_ROUTE`` socket per
namespace is opened inside it (``setns`` for the moment of ``socket()``; a socket stays in the
namespace it was created in), subscribed to the IPv4 route and neighbour groups, and every message
is stamped with ``time.monotonic()`` as it is read (CLOCK_MONOTONIC is one clock for the whole
machine, so stamps compare with those of the process that wrote to etcd). The caller runs the
loop (``poll``) so that it can also wait on its own pipes in the same ``select``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import os
import selectors
import socket
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass

CLONE_NEWNET = 0x40000000
RTMGRP_NEIGH = 0x4
RTMGRP_IPV4_ROUTE = 0x40
RTM_NEWROUTE, RTM_DELROUTE, RTM_NEWNEIGH, RTM_DELNEIGH = 24, 25, 28, 29
NLMSG_ERROR, NLMSG_DONE = 2, 3
SO_RCVBUFFORCE = 33
AF_BRIDGE = 7
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class Event:
    ns: str
    when: float  # time.monotonic() at reception
    kind: str  # "route" | "neigh" | "fdb"
    added: bool
    dst: str  # route: "10.0.5.0/24"; neigh: "10.0.5.0"; fdb: the remote VTEP IP ("" when none)
    mac: str = ""  # neigh/fdb: the link-layer address


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def open_in_ns(ns: str, groups: int, rcvbuf: int = 32 << 20) -> socket.socket:
    """A netlink route socket living in namespace ``ns`` (the calling thread returns to its own)."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        finally:
            _setns(own)
    finally:
        os.close(own)
        os.close(target)
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
    sock.bind((0, groups))
    sock.setblocking(False)
    return sock


def _attrs(data: bytes, offset: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        out[kind & 0x3FFF] = data[offset + 4:offset + length]
        offset += (length + 3) & ~3
    return out


def _mac(raw: bytes | None) -> str:
    return ":".join(f"{b:02x}" for b in raw) if raw else ""


def parse(ns: str, when: float, buf: bytes) -> list[Event]:
    """Decode the route and neighbour messages in one datagram; everything else is skipped."""
    events, off = [], 0
    while off + 16 <= len(buf):
        length, mtype = struct.unpack_from("=IH", buf, off)
        if length < 16:
            break
        body = buf[off + 16:off + length]
        off += (length + 3) & ~3
        if mtype in (RTM_NEWROUTE, RTM_DELROUTE) and len(body) >= 12:
            family, dst_len = body[0], body[1]
            if family != socket.AF_INET:
                continue
            raw = _attrs(body, 12).get(1, b"\0\0\0\0")
            dst = f"{ipaddress.IPv4Address(raw[:4])}/{dst_len}"
            events.append(Event(ns, when, "route", mtype == RTM_NEWROUTE, dst))
        elif mtype in (RTM_NEWNEIGH, RTM_DELNEIGH) and len(body) >= 12:
            family = body[0]
            attrs = _attrs(body, 12)
            raw = attrs.get(1, b"")
            ip = str(ipaddress.IPv4Address(raw)) if len(raw) == 4 else ""
            kind = "fdb" if family == AF_BRIDGE else "neigh" if family == socket.AF_INET else ""
            if kind:
                events.append(Event(ns, when, kind, mtype == RTM_NEWNEIGH, ip, _mac(attrs.get(2))))
    return events


class Watcher:
    """Sockets in many namespaces behind one selector; ``poll`` returns the events read."""

    def __init__(self, namespaces: Iterable[str], groups: int = RTMGRP_IPV4_ROUTE) -> None:
        self.selector = selectors.DefaultSelector()
        self.socks: list[socket.socket] = []
        self.overflows = 0  # ENOBUFS: the kernel dropped events; the caller must re-check by dump
        try:
            for ns in namespaces:
                sock = open_in_ns(ns, groups)
                self.socks.append(sock)
                self.selector.register(sock, selectors.EVENT_READ, ns)
        except BaseException:
            self.close()
            raise

    def register(self, fileobj: object, data: object) -> None:
        """Wait on one more file (a pipe of ours) in the same select; it is reported as data."""
        self.selector.register(fileobj, selectors.EVENT_READ, data)  # type: ignore[arg-type]

    def poll(self, timeout: float) -> tuple[list[Event], list[object]]:
        """Events from every ready socket, and the data of ready registered files."""
        events: list[Event] = []
        others: list[object] = []
        for key, _ in self.selector.select(timeout):
            if not isinstance(key.fileobj, socket.socket) or key.fileobj not in self.socks:
                others.append(key.data)
                continue
            when = time.monotonic()
            while True:
                try:
                    buf = key.fileobj.recv(1 << 20)
                except BlockingIOError:
                    break
                except OSError as err:
                    if err.errno == errno.ENOBUFS:
                        self.overflows += 1
                        continue
                    raise
                events += parse(str(key.data), when, buf)
        return events, others

    def close(self) -> None:
        for sock in self.socks:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(sock)
            sock.close()
        self.socks = []
        self.selector.close()

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
