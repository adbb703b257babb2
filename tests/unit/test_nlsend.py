"""The reconciler's lean netlink requests are byte for byte what pyroute2 sent for the same calls.

The field values pyroute2's ``IPRoute`` chose for each call (read off its requests with strace:
table main, scope universe, type unicast for a new route and unspec for a deletion, RTA_OIF even
when 0, state NOARP|PERMANENT for an FDB deletion, the attribute order) are encoded here with
pyroute2's own message classes and compared with ``nlsend``'s bytes; no kernel needed."""

from __future__ import annotations

import errno
import ipaddress
import socket

import pytest
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from pyflannel.kernel import nlsend
from pyflannel.kernel.netlink import KernelError, describe, guard, is_gone

ip = ipaddress.ip_address
net = ipaddress.ip_network
REQ, ACK, REPLACE, EXCL, CREATE = 0x1, 0x4, 0x100, 0x200, 0x400


def ours(msg: tuple[int, int, bytes], seq: int = 7) -> bytes:
    mtype, flags, body = msg
    return nlsend._HDR.pack(16 + len(body), mtype, REQ | ACK | flags, seq, 0) + body


def theirs(cls: type, mtype: int, flags: int, fields: dict[str, int], attrs: list[tuple[str, object]],
           seq: int = 7) -> bytes:
    msg = cls()
    for k, v in fields.items():
        msg[k] = v
    msg["attrs"] = attrs
    msg["header"]["type"] = mtype
    msg["header"]["flags"] = REQ | ACK | flags
    msg["header"]["sequence_number"] = seq
    msg["header"]["pid"] = 0
    msg.encode()
    return bytes(msg.data)


def route_fields(family: int, dst_len: int, rtype: int, flags: int = 0) -> dict[str, int]:
    return {"family": family, "dst_len": dst_len, "table": 254, "proto": 151, "scope": 0, "type": rtype,
            "flags": flags}


@pytest.mark.parametrize(("op", "flags"), [("replace", CREATE | REPLACE), ("add", CREATE | EXCL)])
def test_new_route_with_gateway_and_onlink(op: str, flags: int) -> None:
    got = ours(nlsend.route_msg(op, net("10.0.201.0/24"), 3, ip("10.0.201.0"), 4, 151))
    want = theirs(rtmsg, 24, flags, route_fields(socket.AF_INET, 24, 1, 4),
                  [("RTA_DST", "10.0.201.0"), ("RTA_OIF", 3), ("RTA_GATEWAY", "10.0.201.0")])
    assert got == want


def test_new_route_without_gateway_and_ipv6() -> None:
    assert ours(nlsend.route_msg("replace", net("10.0.0.0/16"), 5, None, 0, 151)) == theirs(
        rtmsg, 24, CREATE | REPLACE, route_fields(socket.AF_INET, 16, 1), [("RTA_DST", "10.0.0.0"), ("RTA_OIF", 5)])
    assert ours(nlsend.route_msg("replace", net("fd00:1::/64"), 5, ip("fd00::9"), 0, 151)) == theirs(
        rtmsg, 24, CREATE | REPLACE, route_fields(socket.AF_INET6, 64, 1),
        [("RTA_DST", "fd00:1::"), ("RTA_OIF", 5), ("RTA_GATEWAY", "fd00::9")])


@pytest.mark.parametrize("oif", [0, 9])
def test_route_deletion(oif: int) -> None:
    assert ours(nlsend.route_msg("del", net("10.0.7.0/24"), oif, proto=151)) == theirs(
        rtmsg, 25, 0, route_fields(socket.AF_INET, 24, 0), [("RTA_DST", "10.0.7.0"), ("RTA_OIF", oif)])


@pytest.mark.parametrize(("addr", "family"), [("10.0.7.0", socket.AF_INET), ("fd00:7::", socket.AF_INET6)])
def test_neighbour_replace_and_delete(addr: str, family: int) -> None:
    fields = {"family": family, "ifindex": 4, "state": 0x80, "flags": 0}
    attrs: list[tuple[str, object]] = [("NDA_DST", addr), ("NDA_LLADDR", "02:bb:00:00:00:01")]
    assert ours(nlsend.neigh_msg("replace", ip(addr), "02:bb:00:00:00:01", 4)) == theirs(
        ndmsg, 28, CREATE | REPLACE, fields, attrs)
    assert ours(nlsend.neigh_msg("del", ip(addr), "02:bb:00:00:00:01", 4)) == theirs(ndmsg, 29, 0, fields, attrs)


@pytest.mark.parametrize("dst", ["198.18.0.77", "fd00::77"])
def test_fdb_replace_and_delete(dst: str) -> None:
    attrs: list[tuple[str, object]] = [("NDA_LLADDR", "02:bb:00:00:00:01"), ("NDA_DST", dst)]
    assert ours(nlsend.fdb_msg("replace", "02:bb:00:00:00:01", ip(dst), 4)) == theirs(
        ndmsg, 28, CREATE | REPLACE, {"family": 7, "ifindex": 4, "state": 0x80, "flags": 2}, attrs)
    assert ours(nlsend.fdb_msg("del", "02:bb:00:00:00:01", ip(dst), 4)) == theirs(
        ndmsg, 29, 0, {"family": 7, "ifindex": 4, "state": 0xC0, "flags": 2}, attrs)


def test_a_refusal_is_the_same_one_line_error_as_pyroute2s() -> None:
    """The kernel's errno comes out as an OSError, which guard words exactly as it words
    pyroute2's NetlinkError of the same code; a deletion of something gone is still 'gone'."""
    from pyroute2.netlink.exceptions import NetlinkError

    what = "add route 10.0.5.0/24 via 198.18.0.9 dev eth0"
    with pytest.raises(KernelError) as lean, guard(what):
        raise OSError(errno.EEXIST, "File exists")
    assert str(lean.value) == describe(what, NetlinkError(errno.EEXIST)) == (
        f"{what} failed: File exists (EEXIST); something else holds that name or entry: remove it, or pick other "
        "settings")
    with pytest.raises(KernelError) as gone, guard("delete route 10.0.5.0/24"):
        raise OSError(errno.ESRCH, "No such process")
    assert is_gone(gone.value)
