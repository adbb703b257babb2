"""IPv6 in the pure core, against Go flannel's exact strings (docs/compatibility.md#ipv6): the
config checks, the dual-stack and IPv6-only subnet keys, the lease JSON, the allocation range and
subnet.env."""

from __future__ import annotations

import ipaddress
import random

import pytest

from pyflannel.core.allocate import NO_IPV4, free_count, is_compatible_v6, lease_fits, pick_subnet_v6
from pyflannel.core.config import parse_config
from pyflannel.core.errors import AllocationError, ConfigError
from pyflannel.core.lease import LeaseAttrs, parse_lease_attrs, parse_subnet_key, render_lease_attrs, render_subnet_key
from pyflannel.core.subnetenv import previous_run, render_subnet_env, salvage_subnet_env, subnet_env_for

N4, N6 = ipaddress.IPv4Network, ipaddress.IPv6Network
A4, A6 = ipaddress.IPv4Address, ipaddress.IPv6Address
DUAL = '{"Network":"10.42.0.0/16","IPv6Network":"2001:cafe:42::/56","EnableIPv6":true,"Backend":{"Type":"vxlan"}}'


def test_dual_stack_defaults_as_go():
    c = parse_config('{"Network":"10.3.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48"}')
    got = (c.ipv6_subnet_len, str(c.ipv6_subnet_min), str(c.ipv6_subnet_max))
    assert got == (64, "fc00:0:0:1::", "fc00:0:0:ffff::")
    c = parse_config(DUAL)
    assert (c.ipv6_subnet_len, str(c.ipv6_subnet_min), str(c.ipv6_subnet_max)) == (64, "2001:cafe:42:1::",
                                                                                   "2001:cafe:42:ff::")


@pytest.mark.parametrize("extra, message", [
    ('"IPv6SubnetLen":127', "SubnetLen must be less than /127"),
    ('"IPv6SubnetLen":49', "network must be able to accommodate at least four subnets"),
    ('"IPv6Network":"fc00::/125"', "IPv6Network is too small. Minimum useful network prefix is /124"),
    ('"IPv6SubnetMin":"fc01::"', "IPv6SubnetMin is not in the range of the IPv6Network"),
    ('"IPv6SubnetMax":"fc00:0:0:1::8"', "IPv6SubnetMax is not on a SubnetLen boundary: fc00:0:0:1::8"),
])
def test_bad_ipv6_config_names_cause_and_fix(extra, message):
    text = '{"Network":"10.3.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48",' + extra + "}"
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert message in str(info.value) and "fix:" in str(info.value)


def test_ipv6_enabled_without_network():
    with pytest.raises(ConfigError, match="please define a correct IPv6Network parameter"):
        parse_config('{"Network":"10.3.0.0/16","EnableIPv6":true}')


def test_dual_stack_key_is_gos_compressed_lower_case_form():
    assert render_subnet_key(N4("10.12.13.0/24"), N6("fd00:12:13::/56")) == "10.12.13.0-24&fd00:12:13::-56"
    assert render_subnet_key(N4("10.42.7.0/24"), N6("2001:CAFE:42:7:0:0:0:0/64")) == "10.42.7.0-24&2001:cafe:42:7::-64"
    # RFC 5952 as Go's net.IP.String: a single zero group stays, the longest run is compressed
    assert render_subnet_key(N4("10.0.1.0/24"), N6("fd00:0:1:0:0:0:0:0/64")) == "10.0.1.0-24&fd00:0:1::-64"


def test_ipv6_only_key_as_go_writes_it():
    key = render_subnet_key(NO_IPV4, N6("fc00:0:0:5::/64"))
    assert key == "0.0.0.0-0&fc00:0:0:5::-64"
    assert parse_subnet_key("/coreos.com/network/subnets/" + key) == (NO_IPV4, N6("fc00:0:0:5::/64"))


def test_dual_stack_key_round_trip():
    assert parse_subnet_key("/x/subnets/10.12.13.0-24&fd00:12:13::-56") == (N4("10.12.13.0/24"), N6("fd00:12:13::/56"))


def test_dual_stack_lease_json_byte_for_byte():
    attrs = LeaseAttrs(A4("192.168.64.3"), A6("fc00::10"), "vxlan", {"VNI": 1, "VtepMAC": "c6:d2:32:6f:8f:44"},
                       {"VNI": 1, "VtepMAC": "7a:1b:2c:3d:4e:5f"})
    want = (b'{"PublicIP":"192.168.64.3","PublicIPv6":"fc00::10","BackendType":"vxlan",'
            b'"BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"},"BackendV6Data":{"VNI":1,"VtepMAC":"7a:1b:2c:3d:4e:5f"}}')
    assert render_lease_attrs(attrs) == want
    assert parse_lease_attrs(want) == attrs
    hostgw = LeaseAttrs(A4("198.18.0.11"), A6("2001:db8::11"), "host-gw")
    want = b'{"PublicIP":"198.18.0.11","PublicIPv6":"2001:db8::11","BackendType":"host-gw"}'
    assert render_lease_attrs(hostgw) == want


def test_ipv6_only_lease_json():
    attrs = LeaseAttrs(A4("0.0.0.0"), A6("2001:db8::11"), "host-gw")
    assert render_lease_attrs(attrs) == b'{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8::11","BackendType":"host-gw"}'


def test_ipv6_allocation_inside_min_max():
    c = parse_config('{"Network":"10.3.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/56",'
                     '"IPv6SubnetMin":"fc00:0:0:10::","IPv6SubnetMax":"fc00:0:0:13::"}')
    taken = [N6("fc00:0:0:10::/64"), N6("fc00:0:0:12::/64")]
    seen = {pick_subnet_v6(c, taken, random.Random(i)) for i in range(50)}
    assert seen == {N6("fc00:0:0:11::/64"), N6("fc00:0:0:13::/64")}
    assert free_count(c, taken, v6=True) == 2
    with pytest.raises(AllocationError, match=r"out of subnets.*IPv6SubnetMin"):
        pick_subnet_v6(c, [*taken, N6("fc00:0:0:11::/64"), N6("fc00:0:0:13::/64")], random.Random(0))


def test_huge_ipv6_range_is_probed_not_enumerated():
    c = parse_config('{"Network":"10.3.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/32"}')
    sn = pick_subnet_v6(c, [], random.Random(1))
    assert sn.prefixlen == 64 and sn.subnet_of(N6("fc00::/32")) and sn.network_address >= c.ipv6_subnet_min


def test_lease_fits_both_halves():
    dual, v4 = parse_config(DUAL), parse_config('{"Network":"10.42.0.0/16"}')
    assert lease_fits(dual, N4("10.42.5.0/24"), N6("2001:cafe:42:5::/64"))
    assert not lease_fits(dual, N4("10.42.5.0/24"), None)  # an IPv4-only lease of ours: replaced
    assert not lease_fits(dual, N4("10.42.5.0/24"), N6("2001:cafe:42::/64"))  # below IPv6SubnetMin
    assert not lease_fits(dual, N4("10.42.5.0/24"), N6("2001:cafe:42:5::/72"))
    assert not lease_fits(v4, N4("10.42.5.0/24"), N6("2001:cafe:42:5::/64"))  # IPv6 turned off
    assert is_compatible_v6(v4, None)


def test_dual_stack_subnet_env_as_the_docs():
    c = parse_config(DUAL)
    env = subnet_env_for(c.network, N4("10.42.0.0/24"), 1450, True, c.ipv6_network, N6("2001:cafe:42::/64"))
    assert render_subnet_env(env) == (
        "FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.0.1/24\n"
        "FLANNEL_IPV6_NETWORK=2001:cafe:42::/56\nFLANNEL_IPV6_SUBNET=2001:cafe:42::1/64\n"
        "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")


def test_previous_run_remembers_the_ipv6_subnet():
    text = (b"FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.9.1/24\nFLANNEL_IPV6_NETWORK=2001:cafe:42::/56\n"
            b"FLANNEL_IPV6_SUBNET=2001:cafe:42:9::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
    prev = previous_run(salvage_subnet_env(text), 24)
    assert (prev.subnet, prev.ipv6_subnet) == (N4("10.42.9.0/24"), N6("2001:cafe:42:9::/64"))
    cut = previous_run(salvage_subnet_env(text[:text.index(b"FLANNEL_MTU")].rstrip(b"\n")), 24)
    assert cut.ipv6_subnet is None  # a cut-off last line names nothing


def test_previous_run_remembers_the_ipv6_network_to_recycle_its_rules():
    text = (b"FLANNEL_IPV6_NETWORK=2001:cafe:42::/56\nFLANNEL_IPV6_SUBNET=2001:cafe:42:9::1/64\n"
            b"FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
    prev = previous_run(salvage_subnet_env(text), 24)  # IPv6-only: no IPv4 lines
    assert (prev.network, prev.ipv6_network, prev.ipv6_subnet) == (None, N6("2001:cafe:42::/56"),
                                                                   N6("2001:cafe:42:9::/64"))
    cut = previous_run(salvage_subnet_env(text[:text.index(b"\nFLANNEL_IPV6_SUBNET")]), 24)
    assert cut.ipv6_network is None  # a cut-off last line names nothing
    bad = previous_run(salvage_subnet_env(b"FLANNEL_IPV6_NETWORK=10.0.0.0/16\n"), 24)
    assert bad.ipv6_network is None and bad.network is None


def _lease(key: str, value: bytes):
    from pyflannel.core.lease import Lease
    sn, sn6 = parse_subnet_key(key)
    return Lease(sn, parse_lease_attrs(value), sn6)


def test_malformed_ipv6_half_keeps_the_ipv4_half_and_warns():
    from pyflannel.core.events import Snapshot
    from pyflannel.core.leasecheck import screen
    c = parse_config(DUAL)
    good = _lease("10.42.1.0-24&2001:cafe:42:1::-64", b'{"PublicIP":"198.18.0.11","PublicIPv6":"2001:db8::11"}')
    bad_ip = _lease("10.42.2.0-24&2001:cafe:42:2::-64", b'{"PublicIP":"198.18.0.12","PublicIPv6":"2001:db8::zz"}')
    outside = _lease("10.42.3.0-24&fd00:1::-64", b'{"PublicIP":"198.18.0.13","PublicIPv6":"2001:db8::13"}')
    wrong_len = _lease("10.42.4.0-24&2001:cafe:42:4::-72", b'{"PublicIP":"198.18.0.14","PublicIPv6":"2001:db8::14"}')
    warnings: list[str] = []
    ev = screen(Snapshot((good, bad_ip, outside, wrong_len), 7), c, "/p/subnets/", warnings)
    assert not ev.bad
    by = {le.subnet: le for le in ev.leases}
    assert by[N4("10.42.1.0/24")] is good
    for sn in ("10.42.2.0/24", "10.42.3.0/24", "10.42.4.0/24"):
        assert by[N4(sn)].ipv6_subnet is None and by[N4(sn)].attrs.public_ipv6 is None
    assert len(warnings) == 3 and all("using only its IPv4 part" in w for w in warnings)
    assert "2001:db8::zz" in warnings[0] and "outside the IPv6 network" in warnings[1] and "/64" in warnings[2]


def test_ipv6_only_lease_with_a_bad_public_ipv6_is_bad():
    from pyflannel.core.errors import StoreDataError
    with pytest.raises(StoreDataError, match="PublicIPv6"):
        parse_lease_attrs(b'{"PublicIP":"0.0.0.0","PublicIPv6":"nope"}')
