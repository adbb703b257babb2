"""Lean netlink requests for the reconciler: a route, neighbour or FDB entry added, replaced or
deleted, encoded with ``struct`` and sent on a socket kept open; the kernel's answer is read at once.

Why: these are the messages every lease event sends (usually one), and a cold start or a burst
sends thousands. Through pyroute2 each cost ~0.5 ms of CPU (its message objects and its own event
loop per call); encoded here, ~20 µs (docs/performance.md#lean-requests). The bytes are the ones
pyroute2 sent for the same calls (header fields, attribute order, the FDB deletion's state
NOARP|PERMANENT): ``tests/unit/test_nlsend.py`` compares them with pyroute2's own encoding.

rtnetlink handles a request in the sender's system call, so its answer (an ACK, or an error) is
already queued when ``send`` returns: reading it does not block (a ``select`` of at most
``ACK_WAIT_S`` guards the impossible case). An error comes out as ``OSError(errno)``, which
``netlink.guard`` turns into the one-line ``KernelError`` naming the object, the errno and the fix,
exactly as for pyroute2's ``NetlinkError``. Used by one thread at a time (the converger's lock).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import select
import socket
import struct

from .nlwire import (
    AF_BRIDGE,
    NDA_DST,
    NDA_LLADDR,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
    NLMSG_ERROR,
    NTF_SELF,
    NUD_NOARP,
    NUD_PERMANENT,
    RT_SCOPE_UNIVERSE,
    RT_TABLE_MAIN,
    RTA_DST,
    RTA_GATEWAY,
    RTA_OIF,
    RTM_DELNEIGH,
    RTM_DELROUTE,
    RTM_NEWNEIGH,
    RTM_NEWROUTE,
    RTN_UNICAST,
    RTN_UNSPEC,
)
from .nlwire import ATTR as _ATTR
from .nlwire import HDR as _HDR
from .nlwire import NDMSG as _NDMSG
from .nlwire import RTMSG as _RTMSG

SOL_NETLINK, NETLINK_CAP_ACK = 270, 10
ACK_WAIT_S = 5.0
_U32 = struct.Struct("=I")
_ERR = struct.Struct("=i")

# flags of a new entry: "add" fails when it exists (EEXIST), "replace" adds or overwrites
NEW_FLAGS = {"add": NLM_F_CREATE | NLM_F_EXCL, "replace": NLM_F_CREATE | NLM_F_REPLACE}

IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNet = ipaddress.IPv4Network | ipaddress.IPv6Network


def _attr(kind: int, payload: bytes) -> bytes:
    n = _ATTR.size + len(payload)
    return _ATTR.pack(n, kind) + payload + b"\0" * (-n & 3)


def _family(version: int) -> int:
    return socket.AF_INET6 if version == 6 else socket.AF_INET


def _mac(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def route_msg(op: str, dst: IPNet, oif: int, gateway: IPAddr | None = None, flags: int = 0,
              proto: int = 0) -> tuple[int, int, bytes]:
    """(type, flags, body) of ``ip route add|replace|del DST [via GW] dev OIF proto PROTO``."""
    fam = _family(dst.version)
    if op == "del":
        head = _RTMSG.pack(fam, dst.prefixlen, 0, 0, RT_TABLE_MAIN, proto, RT_SCOPE_UNIVERSE, RTN_UNSPEC, 0)
        return RTM_DELROUTE, 0, head + _attr(RTA_DST, dst.network_address.packed) + _attr(RTA_OIF, _U32.pack(oif))
    head = _RTMSG.pack(fam, dst.prefixlen, 0, 0, RT_TABLE_MAIN, proto, RT_SCOPE_UNIVERSE, RTN_UNICAST, flags)
    body = head + _attr(RTA_DST, dst.network_address.packed) + _attr(RTA_OIF, _U32.pack(oif))
    if gateway is not None:
        body += _attr(RTA_GATEWAY, gateway.packed)
    return RTM_NEWROUTE, NEW_FLAGS[op], body


def neigh_msg(op: str, ip: IPAddr, mac: str, ifindex: int) -> tuple[int, int, bytes]:
    """``ip neigh replace|del IP lladdr MAC dev IFINDEX nud permanent``."""
    body = (_NDMSG.pack(_family(ip.version), 0, 0, ifindex, NUD_PERMANENT, 0, 0)
            + _attr(NDA_DST, ip.packed) + _attr(NDA_LLADDR, _mac(mac)))
    return (RTM_DELNEIGH, 0, body) if op == "del" else (RTM_NEWNEIGH, NEW_FLAGS[op], body)


def fdb_msg(op: str, mac: str, dst: IPAddr, ifindex: int) -> tuple[int, int, bytes]:
    """``bridge fdb replace|del MAC dev IFINDEX dst DST self permanent``."""
    state = NUD_NOARP | NUD_PERMANENT if op == "del" else NUD_PERMANENT
    body = _NDMSG.pack(AF_BRIDGE, 0, 0, ifindex, state, NTF_SELF, 0) + _attr(NDA_LLADDR, _mac(mac)) + _attr(
        NDA_DST, dst.packed)
    return (RTM_DELNEIGH, 0, body) if op == "del" else (RTM_NEWNEIGH, NEW_FLAGS[op], body)


class Requests:
    """One NETLINK_ROUTE socket in the namespace it was opened in; ``send`` one request, get its
    answer. Opened lazily; an ``OSError`` (open, send, or the kernel's refusal) goes to the caller."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._seq = 0

    def _socket(self) -> socket.socket:
        sock = self._sock
        if sock is None:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
            try:
                sock.bind((0, 0))
                # an ACK without the request echoed back: what is read stays small
                sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            except OSError:
                sock.close()
                raise
            self._sock = sock
        return sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def send(self, msg: tuple[int, int, bytes]) -> None:
        """Send one request and wait for its ACK; the kernel's error as ``OSError``."""
        mtype, flags, body = msg
        sock = self._socket()
        self._seq = seq = (self._seq + 1) & 0xFFFFFFFF
        sock.send(_HDR.pack(_HDR.size + len(body), mtype, NLM_F_REQUEST | NLM_F_ACK | flags, seq, 0) + body)
        while True:
            try:
                data = sock.recv(65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                if not select.select([sock], [], [], ACK_WAIT_S)[0]:
                    raise OSError(errno.ETIMEDOUT, os.strerror(errno.ETIMEDOUT)) from None
                continue
            off = 0
            while off + _HDR.size <= len(data):
                length, kind, _flags, got, _pid = _HDR.unpack_from(data, off)
                if length < _HDR.size:
                    break
                if kind == NLMSG_ERROR and got == seq:
                    code = -_ERR.unpack_from(data, off + _HDR.size)[0]
                    if code:
                        raise OSError(code, os.strerror(code))
                    return
                off += (length + 3) & ~3  # an answer to an earlier, abandoned request: skipped


__all__ = ["Requests", "fdb_msg", "neigh_msg", "route_msg"]
