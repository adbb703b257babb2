"""Subnet keys and lease values, byte for byte as Go flannel writes them
(docs/compatibility.md#etcd-keys, #lease-json)."""

from __future__ import annotations

import ipaddress
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyflannel.core.errors import StoreDataError
from pyflannel.core.lease import (
    Lease,
    LeaseAttrs,
    parse_lease_attrs,
    parse_subnet_key,
    public_ip_problem,
    render_lease_attrs,
    render_subnet_key,
)

N4, N6 = ipaddress.IPv4Network, ipaddress.IPv6Network
A4, A6 = ipaddress.IPv4Address, ipaddress.IPv6Address

# --- subnet keys -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subnet", "v6", "key"),
    [
        (N4("10.5.52.0/24"), None, "10.5.52.0-24"),
        (N4("10.0.53.0/24"), None, "10.0.53.0-24"),
        (N4("192.168.0.128/25"), None, "192.168.0.128-25"),
        (N4("10.0.0.4/30"), None, "10.0.0.4-30"),
        (N4("10.12.13.0/24"), N6("fd00:12:13::/56"), "10.12.13.0-24&fd00:12:13::-56"),
        (N4("10.42.1.0/24"), N6("2001:cafe:42:1::/64"), "10.42.1.0-24&2001:cafe:42:1::-64"),
    ],
)
def test_subnet_key_render_and_parse(subnet, v6, key):
    assert render_subnet_key(subnet, v6) == key
    assert parse_subnet_key(key) == (subnet, v6)


def test_v6_part_is_compressed_lower_case():
    assert render_subnet_key(N4("10.0.1.0/24"), N6("FD00:0000:0012::/64")) == "10.0.1.0-24&fd00:0:12::-64"


@pytest.mark.parametrize(
    ("full", "subnet", "v6"),
    [
        ("/coreos.com/network/subnets/10.5.52.0-24", N4("10.5.52.0/24"), None),
        ("/atomic.io/network/subnets/10.0.7.0-24", N4("10.0.7.0/24"), None),
        ("/coreos.com/network/subnets/10.12.13.0-24&fd00:12:13::-56", N4("10.12.13.0/24"), N6("fd00:12:13::/56")),
        ("subnets/10.0.0.0-31", N4("10.0.0.0/31"), None),
    ],
)
def test_unanchored_regex_matches_the_tail_of_a_full_key(full, subnet, v6):
    assert parse_subnet_key(full) == (subnet, v6)


def test_lease_key_property():
    attrs = LeaseAttrs(A4("1.2.3.4"))
    assert Lease(N4("10.0.3.0/24"), attrs).key == "10.0.3.0-24"
    assert Lease(N4("10.0.3.0/24"), attrs, N6("fd00:3::/64")).key == "10.0.3.0-24&fd00:3::-64"
    assert Lease(N4("10.0.3.0/24"), attrs).is_reservation
    assert not Lease(N4("10.0.3.0/24"), attrs, lease_id=7).is_reservation


@pytest.mark.parametrize(
    "key",
    [
        "",
        "config",
        "10.0.0.0",
        "10.0.0.0/24",
        "10.0.0.0-",
        "10.0.0.0-24-",
        "10.0.0.0-24/x",
        "10.0.0-24",
        "10.0.0.0-32",  # 5-bit prefix: >31 rejected
        "10.0.0.0-33",
        "10.0.0.0-99999999999999999999",
        "256.0.0.0-24",
        "10.5a52b0-24",  # the unescaped dots match anything, the address parse then refuses it
        "x/1110.5.52.0-24",  # the tail matches, but 1110 is no octet
        "10.0.0.1-24",  # host bits set
        "10.0.0.0-24&fd00::-128",  # 7-bit v6 prefix: >127 rejected
        "10.0.0.0-24&FD00::-64",  # upper-case hex is outside [a-f\d:] (docs/compatibility.md#etcd-keys)
        "10.0.0.0-24&fd00::zz-64",
        "10.0.0.0-24&:::::-64",
        "10.0.0.0-24&fd00::-",
        "-24",
    ],
)
def test_invalid_keys_raise_store_data_error(key):
    with pytest.raises(StoreDataError):
        parse_subnet_key(key)


@pytest.mark.parametrize("key", ["10.0.0.0-24\n", "10.0.0.0-\u0662\u0664"])
def test_keys_go_rejects_are_rejected(key):
    with pytest.raises(StoreDataError):
        parse_subnet_key(key)


@pytest.mark.parametrize("plen", range(0, 32))
def test_every_v4_prefix_up_to_31_round_trips(plen):
    subnet = N4(("10.0.0.0" if plen >= 8 else "0.0.0.0", plen))
    assert parse_subnet_key(render_subnet_key(subnet)) == (subnet, None)


v4_nets = st.builds(
    lambda addr, plen: N4((addr, plen), strict=False),
    st.integers(0, 2**32 - 1),
    st.integers(0, 31),
)
v6_nets = st.builds(
    lambda addr, plen: N6((addr, plen), strict=False),
    st.integers(0, 2**128 - 1),
    st.integers(0, 127),
)


@given(v4_nets, st.none() | v6_nets)
def test_subnet_key_round_trip(subnet, v6):
    key = render_subnet_key(subnet, v6)
    assert parse_subnet_key(key) == (subnet, v6)
    assert parse_subnet_key("/coreos.com/network/subnets/" + key) == (subnet, v6)


@given(st.text())
def test_parse_subnet_key_of_any_text_raises_only_store_data_error(text):
    try:
        subnet, v6 = parse_subnet_key(text)
    except StoreDataError:
        return
    assert isinstance(subnet, N4)
    assert v6 is None or isinstance(v6, N6)


# --- lease values ------------------------------------------------------------------------------


def test_udp_value_has_no_backend_type():
    assert render_lease_attrs(LeaseAttrs(A4("198.18.0.11"))) == b'{"PublicIP":"198.18.0.11","PublicIPv6":null}'


def test_host_gw_value():
    attrs = LeaseAttrs(A4("198.18.0.12"), backend_type="host-gw")
    assert render_lease_attrs(attrs) == b'{"PublicIP":"198.18.0.12","PublicIPv6":null,"BackendType":"host-gw"}'


VXLAN = (
    b'{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan",'
    b'"BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}'
)


def test_vxlan_value_exactly_as_flannel_writes_it():
    data = {"VNI": 1, "VtepMAC": "c6:d2:32:6f:8f:44"}
    attrs = LeaseAttrs(A4("192.168.64.3"), backend_type="vxlan", backend_data=data)
    assert render_lease_attrs(attrs) == VXLAN


def test_vxlan_value_parses():
    attrs = parse_lease_attrs(VXLAN)
    assert attrs == LeaseAttrs(
        A4("192.168.64.3"), None, "vxlan", {"VNI": 1, "VtepMAC": "c6:d2:32:6f:8f:44"}, None
    )
    assert render_lease_attrs(attrs) == VXLAN


def test_dual_stack_value_field_order():
    attrs = LeaseAttrs(
        A4("192.168.64.3"),
        A6("fc00::10"),
        "vxlan",
        {"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:ff"},
        {"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:00"},
    )
    assert render_lease_attrs(attrs) == (
        b'{"PublicIP":"192.168.64.3","PublicIPv6":"fc00::10","BackendType":"vxlan",'
        b'"BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"},'
        b'"BackendV6Data":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:00"}}'
    )


def test_unset_public_ip_and_compressed_v6():
    expected = b'{"PublicIP":"0.0.0.0","PublicIPv6":"fc00::10"}'
    assert render_lease_attrs(LeaseAttrs(A4(0), A6("FC00:0:0:0::0010"))) == expected  # IPv6-only host


def test_parse_accepts_str_and_bytes():
    assert parse_lease_attrs('{"PublicIP":"198.18.0.11","PublicIPv6":null}') == LeaseAttrs(A4("198.18.0.11"))
    assert parse_lease_attrs(b'{"PublicIP":"198.18.0.11","PublicIPv6":null}') == LeaseAttrs(A4("198.18.0.11"))


@pytest.mark.parametrize(
    "text",
    [
        '{"publicip":"10.1.2.3","publicipv6":"fc00::1","backendtype":"vxlan","backenddata":{"VNI":1}}',
        '{"PUBLICIP":"10.1.2.3","PUBLICIPV6":"fc00::1","BACKENDTYPE":"vxlan","BACKENDDATA":{"VNI":1}}',
        '{"publicIP":"10.1.2.3","PublicIpV6":"fc00::1","backendType":"vxlan","BackendDATA":{"VNI":1}}',
    ],
)
def test_parse_matches_keys_case_insensitively(text):
    assert parse_lease_attrs(text) == LeaseAttrs(A4("10.1.2.3"), A6("fc00::1"), "vxlan", {"VNI": 1})


def test_parse_defaults_and_unknown_keys():
    with pytest.raises(StoreDataError, match="unspecified"):  # a missing PublicIP points nowhere
        parse_lease_attrs("{}")
    assert parse_lease_attrs('{"PublicIPv6":"2001:db8::1"}') == LeaseAttrs(A4("0.0.0.0"), A6("2001:db8::1"))
    assert parse_lease_attrs('{"PublicIP":"1.2.3.4","Extra":[1,2],"BackendType":null}') == LeaseAttrs(A4("1.2.3.4"))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage",
        b"{",
        b'{"PublicIP":"1.2.3.4"',
        b"null",
        b"[]",
        b'"x"',
        b"42",
        b"\xff\xfe\x00",
        b'{"PublicIP":"not an ip"}',
        b'{"PublicIP":"1.2.3.4/24"}',
        b'{"PublicIP":"1.2.3"}',
        b'{"PublicIP":"fc00::1"}',
        b'{"PublicIP":""}',
        b'{"PublicIP":[1]}',
        b'{"PublicIP":{}}',
        b'{"PublicIP":1.5}',
        b'{"PublicIP":"0.0.0.0","PublicIPv6":"1.2.3.4"}',
        b'{"PublicIP":"0.0.0.0","PublicIPv6":"not v6"}',
        b'{"PublicIP":"0.0.0.0","PublicIPv6":[]}',
        b'{"PublicIP":"1.2.3.4","BackendType":1}',
        b'{"PublicIP":"1.2.3.4","BackendType":{"Type":"vxlan"}}',
        b'{"PublicIP":"1.2.3.4","BackendType":true}',
        b'{"PublicIP":"1.2.3.4","BackendData":' + b"1" * 5000 + b"}",
    ],
)
def test_garbage_raises_store_data_error(data):
    with pytest.raises(StoreDataError):
        parse_lease_attrs(data)


@pytest.mark.parametrize("data", [b"[" * 3000, b'{"PublicIP":"1.2.3.4","BackendData":' + b"[" * 3000])
def test_deeply_nested_garbage_raises_store_data_error(data):
    with pytest.raises(StoreDataError):
        parse_lease_attrs(data)


@pytest.mark.parametrize("v6", [b'"1.2.3.4"', b'"not v6"', b"[]", b"5", b'"ff02::1"'])
def test_bad_public_ipv6_beside_a_good_public_ip_keeps_the_ipv4_half(v6):
    attrs = parse_lease_attrs(b'{"PublicIP":"1.2.3.4","PublicIPv6":' + v6 + b"}")
    assert attrs.public_ip == A4("1.2.3.4") and attrs.public_ipv6 is None and "PublicIPv6" in attrs.ipv6_problem


@pytest.mark.parametrize("data", [b'{"PublicIP":1}', b'{"PublicIP":true}'])
def test_non_string_public_ip_is_garbage(data):
    with pytest.raises(StoreDataError):
        parse_lease_attrs(data)


def test_nan_is_garbage():
    with pytest.raises(StoreDataError):
        parse_lease_attrs(b'{"PublicIP":"1.2.3.4","BackendData":{"x":NaN}}')


def test_duplicate_case_variant_keys_last_wins_as_in_go():
    assert parse_lease_attrs(b'{"PublicIP":"1.1.1.1","publicip":"2.2.2.2"}').public_ip == A4("2.2.2.2")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
def _possible(ip):  # an address a host can have as its public IP
    return public_ip_problem(ip) is None


attrs_strategy = st.builds(
    LeaseAttrs,
    public_ip=st.builds(A4, st.integers(0, 2**32 - 1)).filter(_possible),
    public_ipv6=st.none() | st.builds(A6, st.integers(0, 2**128 - 1)).filter(_possible),
    backend_type=st.sampled_from(["", "udp", "vxlan", "host-gw", "wireguard"]) | st.text(max_size=12),
    backend_data=st.none() | st.dictionaries(st.text(max_size=8), json_values, max_size=4),
    backend_v6_data=st.none() | st.dictionaries(st.text(max_size=8), json_values, max_size=4),
)


@given(attrs_strategy)
def test_render_parse_round_trip(attrs):
    data = render_lease_attrs(attrs)
    assert isinstance(data, bytes)
    json.loads(data)  # valid JSON
    assert data.startswith(b'{"PublicIP":"' + str(attrs.public_ip).encode() + b'","PublicIPv6":')
    parsed = parse_lease_attrs(data)
    assert parsed == attrs
    assert render_lease_attrs(parsed) == data


@given(st.binary())
def test_parse_of_arbitrary_bytes_raises_only_store_data_error(data):
    try:
        attrs = parse_lease_attrs(data)
    except StoreDataError:
        return
    assert isinstance(attrs, LeaseAttrs)


@given(st.text())
def test_parse_of_arbitrary_text_raises_only_store_data_error(text):
    try:
        attrs = parse_lease_attrs(text)
    except StoreDataError:
        return
    assert isinstance(attrs, LeaseAttrs)


@given(st.dictionaries(st.sampled_from(["PublicIP", "publicip", "PublicIPv6", "BackendType", "BackendData", "x"]),
                       json_values, max_size=5))
def test_parse_of_arbitrary_json_objects_raises_only_store_data_error(obj):
    try:
        attrs = parse_lease_attrs(json.dumps(obj))
    except StoreDataError:
        return
    assert isinstance(attrs, LeaseAttrs)
    assert isinstance(attrs.backend_type, str)


@pytest.mark.parametrize("ip,why", [
    ("0.0.0.0", "unspecified"), ("224.0.0.1", "multicast"), ("239.1.2.3", "multicast"),
    ("255.255.255.255", "broadcast"), ("127.0.0.1", "loopback"), ("169.254.1.2", "link-local"),
])
def test_impossible_public_ips_are_neither_read_nor_written(ip, why):
    with pytest.raises(StoreDataError, match=why):
        parse_lease_attrs(f'{{"PublicIP":"{ip}","PublicIPv6":null}}')
    with pytest.raises(StoreDataError, match=why):
        render_lease_attrs(LeaseAttrs(A4(ip)))


@pytest.mark.parametrize("ip6", ["::", "ff02::1", "::1", "fe80::1"])
def test_impossible_public_ipv6(ip6):
    with pytest.raises(StoreDataError, match="PublicIPv6"):
        parse_lease_attrs(f'{{"PublicIP":"0.0.0.0","PublicIPv6":"{ip6}"}}')
    # beside a good PublicIP only the IPv6 half is dropped (the lease screen warns once)
    attrs = parse_lease_attrs(f'{{"PublicIP":"198.18.0.1","PublicIPv6":"{ip6}"}}')
    assert attrs.public_ipv6 is None and "PublicIPv6" in attrs.ipv6_problem
    with pytest.raises(StoreDataError, match="PublicIPv6"):
        render_lease_attrs(LeaseAttrs(A4("198.18.0.1"), A6(ip6)))


def test_ipv6_only_lease_keeps_an_unset_public_ip_as_go_writes_it():
    expected = b'{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8::10"}'
    assert parse_lease_attrs(expected) == LeaseAttrs(A4(0), A6("2001:db8::10"))
    assert render_lease_attrs(LeaseAttrs(A4(0), A6("2001:DB8:0:0::0010"))) == expected


@pytest.mark.parametrize("text,why", [
    ("0.0.0.0", "is unspecified"), ("224.0.0.1", "is a multicast address"), ("239.1.2.3", "is a multicast address"),
    ("255.255.255.255", "is the broadcast address"), ("127.0.0.1", "is a loopback address"),
    ("169.254.9.9", "is a link-local address"), ("ff02::1", "is a multicast address"), ("::1", "is a loopback address"),
    ("fe80::1", "is a link-local address"), ("::", "is unspecified"),
])
def test_a_public_ip_no_host_can_have_is_never_read_or_written(text, why):
    """Issue 13 (2): such a lease would point routes, FDB entries or tunnels at nothing."""
    ip = ipaddress.ip_address(text)
    assert why in (public_ip_problem(ip) or "")
    if ip.version == 4:
        with pytest.raises(StoreDataError, match=why):
            parse_lease_attrs(json.dumps({"PublicIP": text}))
        with pytest.raises(StoreDataError, match=why):
            render_lease_attrs(LeaseAttrs(ip))
    else:  # a dual-stack lease keeps its IPv4 half; the IPv6 half is dropped, saying why
        attrs = parse_lease_attrs(json.dumps({"PublicIP": "198.18.0.2", "PublicIPv6": text}))
        assert attrs.public_ipv6 is None and why in attrs.ipv6_problem
        with pytest.raises(StoreDataError, match=why):  # an IPv6-only lease with it is bad
            parse_lease_attrs(json.dumps({"PublicIPv6": text}))


def test_a_public_ip_a_host_can_have_passes():
    for text in ("198.18.0.2", "10.1.2.3", "203.0.113.9", "2001:db8::2"):
        assert public_ip_problem(ipaddress.ip_address(text)) is None
