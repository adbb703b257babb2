"""The kernel monitor's lean event decode reads what pyroute2's full decode read (the fields
``KernelMonitor.reason`` asks for), and the monitor's verdicts on decoded messages are unchanged.
Messages are encoded with pyroute2's own classes; no kernel needed."""

from __future__ import annotations

import ipaddress

import pytest
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.marshal import MarshalRtnl
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from pyflannel.kernel.monitor import KernelMonitor
from pyflannel.kernel.nldump import decode_event


def enc(cls: type, mtype: int, fields: dict[str, int], attrs: list[tuple[str, object]]) -> bytes:
    msg = cls()
    for k, v in fields.items():
        msg[k] = v
    msg["attrs"] = attrs
    msg["header"]["type"] = mtype
    msg.encode()
    return bytes(msg.data)


ROUTE_DEL_OURS = enc(rtmsg, 25, {"family": 2, "dst_len": 24, "table": 254, "proto": 151, "type": 1},
                     [("RTA_DST", "10.0.5.0"), ("RTA_OIF", 3), ("RTA_TABLE", 254)])
ROUTE_NEW_FOREIGN6 = enc(rtmsg, 24, {"family": 10, "dst_len": 64, "table": 254, "proto": 3, "type": 1},
                         [("RTA_DST", "fd00:5::"), ("RTA_OIF", 3)])
ROUTE_OTHER_TABLE = enc(rtmsg, 24, {"family": 2, "dst_len": 24, "table": 252, "proto": 3, "type": 1},
                        [("RTA_DST", "10.0.6.0"), ("RTA_TABLE", 1000)])
DEFAULT_ROUTE = enc(rtmsg, 24, {"family": 2, "dst_len": 0, "table": 254, "proto": 3}, [("RTA_OIF", 3)])
LINK_DEL = enc(ifinfmsg, 17, {"family": 0, "index": 7}, [("IFLA_IFNAME", "flannel.1")])
NEIGH_DEL = enc(ndmsg, 29, {"family": 2, "ifindex": 4, "state": 0x80},
                [("NDA_DST", "10.0.5.0"), ("NDA_LLADDR", "02:bb:00:00:00:01")])
NEIGH6_DEL = enc(ndmsg, 29, {"family": 10, "ifindex": 4, "state": 0x80},
                 [("NDA_DST", "fd00:5::"), ("NDA_LLADDR", "02:bb:00:00:00:01")])
FDB_DEL = enc(ndmsg, 29, {"family": 7, "ifindex": 4, "state": 0x80, "flags": 2},
              [("NDA_LLADDR", "02:bb:00:00:00:01"), ("NDA_DST", "198.18.0.7")])
ALL = [ROUTE_DEL_OURS, ROUTE_NEW_FOREIGN6, ROUTE_OTHER_TABLE, DEFAULT_ROUTE, LINK_DEL, NEIGH_DEL, NEIGH6_DEL,
       FDB_DEL]


@pytest.mark.parametrize("raw", ALL, ids=["route-del", "route6-new", "other-table", "default", "link-del", "neigh-del",
                                         "neigh6-del", "fdb-del"])
def test_every_field_the_monitor_reads_is_pyroute2s(raw: bytes) -> None:
    full = next(iter(MarshalRtnl().parse(raw)))
    lean = decode_event(raw)
    assert lean, "the message was recognised"
    for key, value in lean.items():
        assert value == full.get(key), key


def test_the_monitors_verdicts() -> None:
    mon = KernelMonitor(lambda why, key: None, links=("eth0",), network=ipaddress.IPv4Network("10.0.0.0/16"),
                        owned_devs=("flannel.1",), network6=ipaddress.IPv6Network("fd00::/16"))
    mon._owned_index = {4: "flannel.1"}
    verdicts = [mon.reason(decode_event(raw)) for raw in ALL]
    assert verdicts == [
        ("our route to 10.0.5.0/24 was deleted", ("route", ipaddress.IPv4Network("10.0.5.0/24"))),
        ("a route to fd00:5::/64 of someone else appeared", ("foreign", ipaddress.IPv6Network("fd00:5::/64"))),
        ("", ()),  # another table
        ("", ()),  # the default route is outside the network
        ("RTM_DELLINK flannel.1", ("link", "flannel.1")),
        ("neighbour entry deleted on flannel.1", ("neigh", "flannel.1", ipaddress.IPv4Address("10.0.5.0"))),
        ("neighbour entry deleted on flannel.1", ("neigh", "flannel.1", ipaddress.IPv6Address("fd00:5::"))),
        ("fdb entry deleted on flannel.1",
         ("fdb", "flannel.1", "02:bb:00:00:00:01", ipaddress.IPv4Address("198.18.0.7"))),
    ]
    assert decode_event(b"\0" * 8) == {} and decode_event(enc(rtmsg, 26, {"family": 2}, [])) == {}
