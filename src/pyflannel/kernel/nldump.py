"""Lean netlink dumps for the full kernel check: routes of the main table, neighbours and FDB
entries, decoded with ``struct`` into plain tuples; and ``decode_event``, the same for the kernel
monitor's events (a few fields of a link, route or neighbour message).

The full check runs every 10 s and reads every route, neighbour and FDB entry of the host;
pyroute2 decodes each message into a rich object (~0.1 ms each), so with 1000 peers (3000 entries)
the check alone cost several percent of a core. Here only the fixed headers and the three or four
attributes we compare are read (a few µs each), and entries of other devices or tables are
skipped without decoding their attributes. Changes go out as ``nlsend``'s lean requests; a dump
that fails raises ``OSError``, which ``netlink.guard`` turns into a ``KernelError``.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

from .nlwire import (
    AF_BRIDGE,
    IFLA_IFNAME,
    NDA_DST,
    NDA_LLADDR,
    NLM_F_DUMP,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    RTA_DST,
    RTA_GATEWAY,
    RTA_OIF,
    RTA_TABLE,
    RTM_DELLINK,
    RTM_DELNEIGH,
    RTM_DELROUTE,
    RTM_GETNEIGH,
    RTM_GETROUTE,
    RTM_NEWLINK,
    RTM_NEWNEIGH,
    RTM_NEWROUTE,
)
from .nlwire import ATTR as _ATTR
from .nlwire import HDR as _HDR
from .nlwire import IFINFO as _IFINFO
from .nlwire import NDMSG as _NDMSG
from .nlwire import RTMSG as _RTMSG

# (dst, dst_len, protocol, oif, gateway or None, rtm_flags); addresses as host-order ints
RouteRow = tuple[int, int, int, int, int | None, int]
# (ip, lladdr, state) and (lladdr, dst ip or None, state)
NeighRow = tuple[int, str, int]
FdbRow = tuple[str, int | None, int]
FdbRow6 = tuple[str, tuple[int, int] | None, int]  # dst as (IP version, address)


def _messages(msg_type: int, body: bytes) -> Iterator[tuple[int, memoryview]]:
    """Send one dump request; yield (type, payload) of every answer until NLMSG_DONE."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.bind((0, 0))
        sock.send(_HDR.pack(_HDR.size + len(body), msg_type, NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + body)
        while True:
            data = memoryview(sock.recv(1 << 20))
            off = 0
            while off + _HDR.size <= len(data):
                length, mtype, _flags, _seq, _pid = _HDR.unpack_from(data, off)
                if length < _HDR.size:
                    return
                if mtype == NLMSG_DONE:
                    return
                if mtype == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", data, off + _HDR.size)[0]
                    if code:
                        raise OSError(code, f"netlink dump refused (errno {code})")
                    return
                yield mtype, data[off + _HDR.size:off + length]
                off += (length + 3) & ~3


def _attrs(payload: memoryview, start: int) -> dict[int, memoryview]:
    out: dict[int, memoryview] = {}
    off = start
    while off + 4 <= len(payload):
        alen, atype = _ATTR.unpack_from(payload, off)
        if alen < 4:
            break
        out[atype & 0x3FFF] = payload[off + 4:off + alen]
        off += (alen + 3) & ~3
    return out


def _ip4(raw: memoryview | None) -> int | None:
    return int.from_bytes(raw, "big") if raw is not None and len(raw) == 4 else None


def _ip(raw: memoryview | None) -> int | None:
    """An IPv4 or IPv6 address as an int (the caller knows the family)."""
    return int.from_bytes(raw, "big") if raw is not None and len(raw) in (4, 16) else None


def _mac(raw: memoryview | None) -> str:
    return ":".join(f"{b:02x}" for b in raw) if raw is not None else ""


_EVENTS = {RTM_NEWLINK: "RTM_NEWLINK", RTM_DELLINK: "RTM_DELLINK", RTM_NEWROUTE: "RTM_NEWROUTE",
           RTM_DELROUTE: "RTM_DELROUTE", RTM_NEWNEIGH: "RTM_NEWNEIGH", RTM_DELNEIGH: "RTM_DELNEIGH"}


def _addr_text(raw: memoryview | None) -> str | None:
    if raw is None or len(raw) not in (4, 16):
        return None
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, bytes(raw))


def decode_event(msg: bytes) -> dict[str, object]:
    """One link, route or neighbour message (header included) as the few fields the kernel
    monitor reads, named as pyroute2 names them (``event``, ``ifname``; ``family``, ``dst``,
    ``dst_len``, ``table``, ``proto``; ``ifindex``, ``state``, ``lladdr``, ``NDA_DST``); {} for
    anything else."""
    if len(msg) < _HDR.size:
        return {}
    mtype = _HDR.unpack_from(msg, 0)[1]
    p = memoryview(msg)[_HDR.size:]
    event = _EVENTS.get(mtype)
    if event is None:
        return {}
    if mtype in (RTM_NEWLINK, RTM_DELLINK) and len(p) >= _IFINFO.size:
        name = _attrs(p, _IFINFO.size).get(IFLA_IFNAME)
        return {"event": event,
                "ifname": bytes(name).split(b"\0", 1)[0].decode(errors="replace") if name is not None else None}
    if mtype in (RTM_NEWROUTE, RTM_DELROUTE) and len(p) >= _RTMSG.size:
        fam, dst_len, _src_len, _tos, table, proto, _scope, _rtype, _flags = _RTMSG.unpack_from(p, 0)
        a = _attrs(p, _RTMSG.size)
        if RTA_TABLE in a and len(a[RTA_TABLE]) == 4:
            table = struct.unpack_from("=I", a[RTA_TABLE])[0]
        return {"event": event, "family": fam, "dst_len": dst_len, "table": table, "proto": proto,
                "dst": _addr_text(a.get(RTA_DST))}
    if mtype in (RTM_NEWNEIGH, RTM_DELNEIGH) and len(p) >= _NDMSG.size:
        fam, _p1, _p2, idx, state, _flags, _type = _NDMSG.unpack_from(p, 0)
        a = _attrs(p, _NDMSG.size)
        dst = _addr_text(a.get(NDA_DST))
        return {"event": event, "family": fam, "ifindex": idx, "state": state, "dst": dst, "NDA_DST": dst,
                "lladdr": _mac(a.get(NDA_LLADDR)) or None}
    return {"event": event}


def dump_routes(table: int = 254, family: int = socket.AF_INET) -> list[RouteRow]:
    """Every route of ``family`` in ``table`` (unicast or not) as ``RouteRow``."""
    out: list[RouteRow] = []
    for mtype, p in _messages(RTM_GETROUTE, _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)):
        if mtype != RTM_NEWROUTE:
            continue
        fam, dst_len, _src_len, _tos, rtm_table, proto, _scope, _rtype, flags = _RTMSG.unpack_from(p, 0)
        if fam != family:
            continue
        a = _attrs(p, _RTMSG.size)
        if rtm_table != table and (RTA_TABLE not in a or struct.unpack_from("=I", a[RTA_TABLE])[0] != table):
            continue
        oif = a.get(RTA_OIF)
        out.append((_ip(a.get(RTA_DST)) or 0, dst_len, proto, struct.unpack_from("=i", oif)[0] if oif else 0,
                    _ip(a.get(RTA_GATEWAY)), flags))
    return out


def _neigh_dump(family: int, ifindex: int) -> Iterator[tuple[int, dict[int, memoryview]]]:
    for mtype, p in _messages(RTM_GETNEIGH, _NDMSG.pack(family, 0, 0, 0, 0, 0, 0)):
        if mtype != RTM_NEWNEIGH:
            continue
        fam, _p1, _p2, idx, state, _flags, _type = _NDMSG.unpack_from(p, 0)
        if fam == family and idx == ifindex:
            yield state, _attrs(p, _NDMSG.size)


def dump_neighbours(ifindex: int, family: int = socket.AF_INET) -> list[NeighRow]:
    """The neighbour entries of ``family`` on one device."""
    return [(_ip(a.get(NDA_DST)) or 0, _mac(a.get(NDA_LLADDR)), state)
            for state, a in _neigh_dump(family, ifindex)]


def dump_fdb(ifindex: int) -> list[FdbRow6]:
    """The FDB entries of one device (a vxlan device's remote MACs); dst as (version, int)."""
    out: list[FdbRow6] = []
    for state, a in _neigh_dump(AF_BRIDGE, ifindex):
        raw = a.get(NDA_DST)
        dst = None if raw is None or len(raw) not in (4, 16) else (4 if len(raw) == 4 else 6, _ip(raw) or 0)
        out.append((_mac(a.get(NDA_LLADDR)), dst, state))
    return out
