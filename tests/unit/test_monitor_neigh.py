"""The kernel monitor's reading of a deleted neighbour: a permanent IPv4 neighbour deleted by hand
(`ip neigh del`) is reported FAILED, not PERMANENT, and must still call for a full run at once
(the chaos soak found hand-deleted neighbours healing only at the 10 s check: 0.5-10.5 s)."""

from __future__ import annotations

import ipaddress
import socket
import struct

from pyflannel.kernel.monitor import AF_BRIDGE, NUD_FAILED, NUD_PERMANENT, RTM_DELNEIGH, KernelMonitor
from pyflannel.kernel.nldump import decode_event

NUD_STALE = 0x04


def delneigh(family: int, ifindex: int, state: int, dst: bytes) -> bytes:
    attr = struct.pack("=HH", 4 + len(dst), 1) + dst  # NDA_DST
    body = struct.pack("=BBHiHBB", family, 0, 0, ifindex, state, 0, 1) + attr
    return struct.pack("=IHHII", 16 + len(body), RTM_DELNEIGH, 0, 0, 0) + body


def monitor() -> KernelMonitor:
    m = KernelMonitor(lambda why, key: None, owned_devs=("flannel.1",))
    m._owned_index = {7: "flannel.1"}
    return m


def why(m: KernelMonitor, data: bytes) -> tuple[str, tuple[object, ...]]:
    chunks = m.worth_decoding(data)
    if not chunks:
        return "", ()
    return m.reason(decode_event(chunks[0]))  # as the monitor's thread does


def test_a_permanent_neighbour_deleted_by_hand_arrives_failed_and_is_seen() -> None:
    dst = socket.inet_aton("10.0.5.0")
    assert why(monitor(), delneigh(socket.AF_INET, 7, NUD_FAILED, dst)) == (
        "neighbour entry deleted on flannel.1", ("neigh", "flannel.1", ipaddress.IPv4Address("10.0.5.0")))
    assert why(monitor(), delneigh(socket.AF_INET, 7, NUD_PERMANENT, dst))[0] == "neighbour entry deleted on flannel.1"


def test_other_devices_and_the_kernels_own_stale_entries_are_not() -> None:
    dst = socket.inet_aton("10.0.5.0")
    assert why(monitor(), delneigh(socket.AF_INET, 9, NUD_FAILED, dst)) == ("", ())  # not our device
    assert why(monitor(), delneigh(socket.AF_INET, 7, NUD_STALE, dst)) == ("", ())


def test_an_fdb_entry_counts_only_when_permanent() -> None:
    mac = bytes(6)
    assert why(monitor(), delneigh(AF_BRIDGE, 7, NUD_FAILED, mac)) == ("", ())
