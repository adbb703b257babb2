"""Netlink events that say someone else changed our kernel state, so that it is put right at once
instead of at the next timer tick: a thread blocked on one socket subscribed to link, IPv4 route
and neighbour events. It calls back (with a short reason) when

- a watched device (one we own, or the one our routes leave by) is deleted or changed;
- one of our routes (``RTPROT_FLANNEL``, main table, inside the network) is deleted: IPv4 sends
  no event for routes flushed with a downed device, hence the link events;
- a route of someone else appears inside the network (we must stop claiming that dst);
- a permanent neighbour or FDB entry on a device we own is deleted.

Our own additions never call back; our own deletions do (a peer went away), which costs one
full reconcile unless the caller recognises the entry's key as one it deleted itself. The
callback (``on_event(reason, key)``) runs in the monitor thread and must be thread-safe.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import select
import socket
import struct
import threading
from collections.abc import Callable, Iterable

from .netlink import RTPROT_FLANNEL, session
from .nldump import decode_event
from .nlwire import (
    AF_BRIDGE,
    NUD_FAILED,
    NUD_PERMANENT,
    RT_TABLE_MAIN,
    RTM_DELLINK,
    RTM_DELNEIGH,
    RTM_DELROUTE,
    RTM_NEWLINK,
    RTM_NEWROUTE,
)

log = logging.getLogger(__name__)

RTMGRP_LINK, RTMGRP_NEIGH, RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_ROUTE = 0x1, 0x4, 0x40, 0x400
MAIN_TABLE = RT_TABLE_MAIN


def _was_ours(family: int, state: int) -> bool:
    """A deleted neighbour or FDB entry that may have been one of ours (permanent). A permanent
    IPv4/IPv6 neighbour deleted by hand is reported FAILED, not PERMANENT (the kernel marks it
    failed before it removes it): a full run tells ours from the kernel's own failed entries."""
    return bool(state & NUD_PERMANENT) or (family != AF_BRIDGE and bool(state & NUD_FAILED))


class KernelMonitor:
    def __init__(self, on_event: Callable[[str, tuple[object, ...]], None], *, links: Iterable[str] = (),
                 network: ipaddress.IPv4Network | None = None, owned_devs: Iterable[str] = (),
                 network6: ipaddress.IPv6Network | None = None) -> None:
        self.on_event = on_event
        self.links = frozenset(links)
        self.network = network
        self.network6 = network6  # dual stack: our IPv6 routes lie inside this one
        self.owned_devs = frozenset(owned_devs)
        self._owned_index: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="kernel-monitor", daemon=True)
        self._thread.start()
        ready.wait(5)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=3)

    def _run(self, ready: threading.Event) -> None:
        """A plain netlink socket, the few fields needed decoded with ``struct``
        (``nldump.decode_event``; pyroute2's full decode cost ~0.2 ms per message). Not pyroute2's
        IPRoute: its sync wrapper reads the socket on its own, so a select() on its fd misses
        events."""
        groups = RTMGRP_LINK | (RTMGRP_IPV4_ROUTE if self.network is not None else 0)
        groups |= RTMGRP_IPV6_ROUTE if self.network6 is not None else 0
        groups |= RTMGRP_NEIGH if self.owned_devs else 0
        try:
            with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
                sock.bind((0, groups))
                self._refresh_index()
                ready.set()
                while not self._stop.is_set():
                    r, _, _ = select.select([sock], [], [], 0.5)
                    if not r:
                        continue
                    try:
                        data = sock.recv(1 << 20)
                    except OSError as err:
                        if err.errno != errno.ENOBUFS:
                            raise
                        self.on_event("netlink events were lost (ENOBUFS)", ("lost",))
                        continue
                    for chunk in self.worth_decoding(data):
                        msg = decode_event(chunk)
                        why, key = self.reason(msg)
                        if why:
                            if msg.get("event") in ("RTM_NEWLINK", "RTM_DELLINK"):
                                self._refresh_index()
                            self.on_event(why, key)
        except Exception as err:  # the timer-driven resync still heals; just say so
            log.warning("kernel monitor stopped: %s (the periodic resync keeps running)", err)
        finally:
            ready.set()

    def worth_decoding(self, data: bytes) -> list[bytes]:
        """The messages in one datagram that may matter, picked by their fixed headers, so that
        only a handful are decoded instead of every one (a cold start adds thousands of entries,
        each echoed to us: our own additions carry our protocol and are skipped unread)."""
        out, off = [], 0
        while off + 16 <= len(data):
            length, mtype = struct.unpack_from("=IH", data, off)
            if length < 16:
                break
            body = off + 16
            keep = False
            if mtype in (RTM_NEWLINK, RTM_DELLINK):
                keep = True
            elif mtype in (RTM_NEWROUTE, RTM_DELROUTE) and length >= 28:
                table, proto = data[body + 4], data[body + 5]
                # someone else's route appearing, or one of ours going
                keep = table == MAIN_TABLE and (proto == RTPROT_FLANNEL) == (mtype == RTM_DELROUTE)
            elif mtype == RTM_DELNEIGH and length >= 28:
                ifindex, state = struct.unpack_from("=iH", data, body + 4)
                keep = ifindex in self._owned_index and _was_ours(data[body], state)
            if keep:
                out.append(data[off:off + length])
            off += (length + 3) & ~3
        return out

    def _refresh_index(self) -> None:
        """ifindex -> name of our devices, asked on a socket of its own: a request on the
        subscribed socket could swallow the events that arrive while it waits for its answer."""
        if not self.owned_devs:
            return
        found = {}
        with session("look up our devices") as ipr:
            for name in self.owned_devs:
                idx = ipr.link_lookup(ifname=name)
                if idx:
                    found[idx[0]] = name
        self._owned_index = found

    def reason(self, msg: object) -> tuple[str, tuple[object, ...]]:
        """Why ``msg`` calls for a full reconcile ("" when it does not), and the key of the entry
        it is about, as ``Reconciler.expected_gone`` spells it (pure given the device index)."""
        get = msg.get  # type: ignore[attr-defined]
        event = get("event", "")
        if event in ("RTM_NEWLINK", "RTM_DELLINK"):
            name = get("ifname")
            return (f"{event} {name}" if name in self.links or name in self.owned_devs else ""), ("link", name)
        if event in ("RTM_NEWROUTE", "RTM_DELROUTE") and self.network is not None:
            return self._route_reason(event, msg)
        if event == "RTM_DELNEIGH":
            dev = self._owned_index.get(get("ifindex", -1))
            if dev and _was_ours(get("family"), get("state", 0)):
                if get("family") == AF_BRIDGE:
                    dst = get("NDA_DST")
                    return (f"fdb entry deleted on {dev}",
                            ("fdb", dev, get("lladdr"), ipaddress.ip_address(dst) if dst else None))
                return f"neighbour entry deleted on {dev}", ("neigh", dev, ipaddress.ip_address(get("dst")))
        return "", ()

    def _route_reason(self, event: str, msg: object) -> tuple[str, tuple[object, ...]]:
        get = msg.get  # type: ignore[attr-defined]
        if get("table") != MAIN_TABLE:
            return "", ()
        dst: ipaddress.IPv4Network | ipaddress.IPv6Network
        if get("family") == socket.AF_INET6 and self.network6 is not None:
            dst = ipaddress.IPv6Network(f"{get('dst') or '::'}/{get('dst_len')}")
            network: ipaddress.IPv4Network | ipaddress.IPv6Network = self.network6
        elif get("family") == socket.AF_INET and self.network is not None:
            dst = ipaddress.IPv4Network(f"{get('dst') or '0.0.0.0'}/{get('dst_len')}")
            network = self.network
        else:
            return "", ()
        if not dst.subnet_of(network):  # type: ignore[arg-type]
            return "", ()
        ours = get("proto") == RTPROT_FLANNEL
        if event == "RTM_DELROUTE" and ours:
            return f"our route to {dst} was deleted", ("route", dst)
        if event == "RTM_NEWROUTE" and not ours:
            return f"a route to {dst} of someone else appeared", ("foreign", dst)
        return "", ()
