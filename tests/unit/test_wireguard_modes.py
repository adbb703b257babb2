"""The wireguard backend on a dual-stack network, one test per Mode (pure: devices, lease JSON,
each device's peer set, the kernel plan), and the converger handing each device's plan to that
device's own target."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import logging

import pytest

from pyflannel.backend.wireguard import WireguardBackend
from pyflannel.backend.wireguard_plan import select_family
from pyflannel.converger import Converger
from pyflannel.core.config import parse_config
from pyflannel.core.desired import DesiredState
from pyflannel.core.errors import ConfigError, KernelError
from pyflannel.core.host import ExternalInterface, HostFacts
from pyflannel.core.lease import Lease, LeaseAttrs, render_lease_attrs
from pyflannel.core.plan import Plan, WgPlan, target_of

K1, K2, K3, K4, OWN = (base64.b64encode(bytes([n]) * 32).decode() for n in (1, 2, 3, 4, 9))
V4, V6 = ipaddress.IPv4Address, ipaddress.IPv6Address
Net, Net6 = ipaddress.IPv4Network, ipaddress.IPv6Network
EXT = ExternalInterface("eth0", 2, 1500, V4("198.18.0.13"), V4("198.18.0.13"), V6("2001:db8::d"), V6("2001:db8::d"))


def config(mode: str | None = None, ipv6: bool = True, extra: str = ""):
    backend = '{"Type": "wireguard"' + (f', "Mode": "{mode}"' if mode else "") + extra + "}"
    v6 = ', "EnableIPv6": true, "IPv6Network": "2001:db8:42::/56"' if ipv6 else ""
    return parse_config(f'{{"Network": "10.0.0.0/16"{v6}, "Backend": {backend}}}')


def backend(mode: str | None = None, ext: ExternalInterface = EXT, extra: str = "") -> WireguardBackend:
    be = WireguardBackend(ext, config(mode, extra=extra))
    be.public_key = OWN
    be.kinds = {d.name: "tun" for d in be.devs}
    return be


def peer(i: int, key: str = "", v6data: object = "same", public: str = "", port6: int = 51821) -> Lease:
    """Host i: 10.0.i.0/24 and 2001:db8:42:i::/64, PublicIP 198.18.0.(10+i), PublicIPv6 2001:db8::(10+i)."""
    key = key or (K1, K2, K3)[(i - 1) % 3]
    data6 = {"PublicKey": key, "Port": port6} if v6data == "same" else v6data
    return Lease(Net(f"10.0.{i}.0/24"),
                 LeaseAttrs(V4(public or f"198.18.0.{10 + i}"), V6(f"2001:db8::{10 + i:x}"), "wireguard",
                            {"PublicKey": key, "Port": 51820}, data6),
                 ipv6_subnet=Net6(f"2001:db8:42:{i:x}::/64"))


def v4_only_peer(i: int) -> Lease:
    """A host of the network that runs IPv4 only (an older flanneld): no IPv6 half."""
    return Lease(Net(f"10.0.{i}.0/24"), LeaseAttrs(V4(f"198.18.0.{10 + i}"), None, "wireguard",
                                                   {"PublicKey": K4, "Port": 51820}))


OWN_LEASE = Lease(Net("10.0.3.0/24"), LeaseAttrs(V4("198.18.0.13"), V6("2001:db8::d"), "wireguard"),
                  ipv6_subnet=Net6("2001:db8:42:3::/64"))


def plans(be: WireguardBackend, *leases: Lease) -> tuple[dict[str, WgPlan], DesiredState]:
    table = {le.subnet: le for le in leases}
    out = be.plan(OWN_LEASE, be.select(table).peers, HostFacts())
    wgs = {target_of(p): p for p in out if isinstance(p, WgPlan)}
    kernel = [p for p in out if isinstance(p, DesiredState)]
    assert len(kernel) == 1 and isinstance(out[-1], DesiredState), "the devices' peers first, then the kernel"
    return wgs, kernel[0]


def rows(plan: WgPlan) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(p.public_key, p.endpoint, p.allowed_ips) for p in plan.peers]


def kernel_view(k: DesiredState) -> tuple[list[tuple[str, str]], list[tuple[str, str]], list[str]]:
    return (sorted((a.dev, str(a.address)) for a in k.addresses), sorted((str(r.dst), r.dev) for r in k.routes),
            [lk.name for lk in k.links])


def test_separate_two_devices_each_with_its_family() -> None:
    be = backend()  # "separate" is the default, as Go's
    assert [(d.name, d.port, d.target) for d in be.devs] == [("flannel-wg", 51820, "wg"),
                                                              ("flannel-wg-v6", 51821, "wg-v6")]
    assert render_lease_attrs(be.lease_attrs()) == (
        b'{"PublicIP":"198.18.0.13","PublicIPv6":"2001:db8::d","BackendType":"wireguard",'
        b'"BackendData":{"PublicKey":"' + OWN.encode() + b'","Port":51820},'
        b'"BackendV6Data":{"PublicKey":"' + OWN.encode() + b'","Port":51821}}')
    wgs, kernel = plans(be, peer(1), peer(2, v6data={"PublicKey": K2, "Port": 0}), v4_only_peer(4))
    assert (wgs["wg"].dev, wgs["wg"].listen_port, wgs["wg-v6"].dev, wgs["wg-v6"].listen_port) == (
        "flannel-wg", 51820, "flannel-wg-v6", 51821)
    assert sorted(rows(wgs["wg"])) == sorted([(K1, "198.18.0.11:51820", ("10.0.1.0/24",)),
                                              (K2, "198.18.0.12:51820", ("10.0.2.0/24",)),
                                              (K4, "198.18.0.14:51820", ("10.0.4.0/24",))])
    # the IPv4-only host has no IPv6 peer; Port 0 in BackendV6Data means our ListenPortV6, as Go
    assert sorted(rows(wgs["wg-v6"])) == [(K1, "[2001:db8::b]:51821", ("2001:db8:42:1::/64",)),
                                          (K2, "[2001:db8::c]:51821", ("2001:db8:42:2::/64",))]
    assert kernel_view(kernel) == (
        [("flannel-wg", "10.0.3.0/32"), ("flannel-wg-v6", "2001:db8:42:3::/128")],
        [("10.0.0.0/16", "flannel-wg"), ("2001:db8:42::/56", "flannel-wg-v6")],
        ["flannel-wg", "flannel-wg-v6"])
    assert kernel.network6 == Net6("2001:db8:42::/56") and all(lk.mtu == 1420 for lk in kernel.links)


def test_separate_peer_with_a_bad_ipv6_half_keeps_its_ipv4_half_with_a_note() -> None:
    be = backend()
    bad = peer(1, v6data={"PublicKey": "not-a-key", "Port": 51821})
    sel = be.select({bad.subnet: bad})
    assert list(sel.peers) == [bad.subnet] and sel.skipped == ()
    assert [why for _, why in sel.notes] == ["its BackendV6Data has no valid PublicKey: {'PublicKey': 'not-a-key', "
                                             "'Port': 51821}; using only its IPv4 part"]
    wgs, _ = plans(be, bad, peer(2, v6data=None))
    assert len(wgs["wg"].peers) == 2 and rows(wgs["wg-v6"]) == []


def test_auto_one_device_publishes_the_port_it_listens_on() -> None:
    be = backend("auto")
    assert [(d.name, d.port, d.v4, d.v6) for d in be.devs] == [("flannel-wg", 51820, True, True)]
    raw = render_lease_attrs(be.lease_attrs())
    # Go publishes ListenPortV6 (51821) here, where nothing listens
    assert raw.endswith(b'"BackendV6Data":{"PublicKey":"' + OWN.encode() + b'","Port":51820}}')
    # a peer with an RFC 1918 PublicIP and a global IPv6 one is reached over IPv6 (Go's selectMode);
    # the lab's 198.18.0.0/15 is not RFC 1918: IPv4; a ULA PublicIPv6: IPv4
    natted = peer(5, public="10.99.0.5", port6=51820)
    ula = Lease(Net("10.0.6.0/24"), LeaseAttrs(V4("192.168.1.6"), V6("fd00::6"), "wireguard",
                                              {"PublicKey": K3, "Port": 51820}, {"PublicKey": K3, "Port": 51820}),
                ipv6_subnet=Net6("2001:db8:42:6::/64"))
    wgs, kernel = plans(be, peer(1), natted, ula, v4_only_peer(4))
    assert list(wgs) == ["wg"]
    assert sorted(rows(wgs["wg"])) == sorted([
        (K1, "198.18.0.11:51820", ("10.0.1.0/24", "2001:db8:42:1::/64")),
        (K2, "[2001:db8::f]:51820", ("10.0.5.0/24", "2001:db8:42:5::/64")),
        (K3, "192.168.1.6:51820", ("10.0.6.0/24", "2001:db8:42:6::/64")),
        (K4, "198.18.0.14:51820", ("10.0.4.0/24",))])
    assert kernel_view(kernel) == (
        [("flannel-wg", "10.0.3.0/32"), ("flannel-wg", "2001:db8:42:3::/128")],
        [("10.0.0.0/16", "flannel-wg"), ("2001:db8:42::/56", "flannel-wg")], ["flannel-wg"])


def test_ipv4_and_ipv6_modes_pick_the_endpoint_family() -> None:
    v4, _ = plans(backend("ipv4"), peer(1), peer(2, public="10.99.0.2"))
    assert [e for _, e, _ in sorted(rows(v4["wg"]))] == ["198.18.0.11:51820", "10.99.0.2:51820"]
    assert all(len(a) == 2 for _, _, a in rows(v4["wg"]))
    be6 = backend("ipv6", extra=', "ListenPort": 7000')
    assert be6.lease_attrs().backend_v6_data == {"PublicKey": OWN, "Port": 7000}
    v6, kernel = plans(be6, peer(1, port6=7000), v4_only_peer(4))
    # a host without IPv6 can only be reached over IPv4, with its IPv4 subnet
    assert sorted(rows(v6["wg"])) == sorted([(K4, "198.18.0.14:51820", ("10.0.4.0/24",)),
                                             (K1, "[2001:db8::b]:7000", ("10.0.1.0/24", "2001:db8:42:1::/64"))])
    assert kernel_view(kernel)[2] == ["flannel-wg"]


def test_ipv6_mode_without_ipv6_is_one_line() -> None:
    with pytest.raises(ConfigError) as err:
        WireguardBackend.check_config(config("ipv6", ipv6=False))
    assert 'Mode "ipv6"' in str(err.value) and '"EnableIPv6": true' in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("mode", [None, "auto", "ipv4"])
def test_ipv4_only_network_is_one_device_as_before(mode: str | None) -> None:
    be = WireguardBackend(ExternalInterface("eth0", 2, 1500, V4("198.18.0.11"), V4("198.18.0.11")),
                          config(mode, ipv6=False))
    be.public_key = OWN
    assert [d.name for d in be.devs] == ["flannel-wg"]
    assert render_lease_attrs(be.lease_attrs()) == (
        b'{"PublicIP":"198.18.0.11","PublicIPv6":null,"BackendType":"wireguard",'
        b'"BackendData":{"PublicKey":"' + OWN.encode() + b'","Port":51820}}')
    own = Lease(Net("10.0.3.0/24"), LeaseAttrs(V4("198.18.0.11"), None, "wireguard"))
    out = be.plan(own, {}, HostFacts())
    assert [target_of(p) for p in out] == ["wg", "kernel"]
    assert out[-1].network6 is None  # type: ignore[union-attr]


def test_select_family_is_gos_select_mode() -> None:
    g6, ula = V6("2001:db8::2"), V6("fd12::2")
    assert select_family(V4("198.18.0.2"), None, V4("198.18.0.1"), g6) == 4  # no peer IPv6
    assert select_family(V4("198.18.0.2"), g6, V4("198.18.0.1"), g6) == 4  # public IPv4 both sides
    assert select_family(V4("10.1.0.2"), g6, V4("10.1.0.1"), g6) == 6  # private IPv4, global IPv6
    assert select_family(V4("172.16.0.2"), ula, V4("10.1.0.1"), g6) == 4  # a ULA: IPv4
    assert select_family(V4("192.168.0.2"), g6, V4("10.1.0.1"), None) == 4  # we have no IPv6
    assert select_family(V4("198.18.0.2"), g6, None, g6) == 6  # we have no IPv4 (Go: ExtAddr nil)


class DeviceTarget:
    """A recording stand-in for one WireGuard device (the real one is driven in tests/e2e)."""

    inline = True
    full_check_s = None

    def __init__(self, fail: bool = False) -> None:
        self.plans: list[Plan] = []
        self.fail = fail

    def apply(self, plan: Plan, full: bool) -> int:
        if self.fail:
            raise KernelError("wg set failed")
        self.plans.append(plan)
        return 1


def test_converger_applies_each_device_plan_to_its_own_target(caplog) -> None:
    be = backend()
    wg4, wg6, kernel = DeviceTarget(), DeviceTarget(fail=True), DeviceTarget()
    conv = Converger(be)  # type: ignore[arg-type]
    conv.targets = {"kernel": kernel, "wg": wg4, "wg-v6": wg6}
    conv.own = OWN_LEASE
    conv.mark_dirty({le.subnet: le for le in (OWN_LEASE, peer(1), peer(2))})
    with caplog.at_level(logging.WARNING):
        asyncio.run(conv.converge_once())
    assert [p.dev for p in wg4.plans] == ["flannel-wg"]  # type: ignore[union-attr]
    assert len(kernel.plans) == 1, "one failing device does not hold back the others"
    assert conv.stats.errors_per_target == {"wg-v6": 1}
    assert "wg-v6 reconcile failed" in caplog.text and caplog.text.count("reconcile failed") == 1
