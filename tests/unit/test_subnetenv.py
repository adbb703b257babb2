"""subnet.env: Go flannel's exact writer format (docs/compatibility.md#subnet-env) and a lenient
godotenv-like reader."""

from __future__ import annotations

import contextlib
import ipaddress
from ipaddress import IPv4Interface, IPv4Network, IPv6Interface, IPv6Network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyflannel.core.errors import LocalConfigError
from pyflannel.core.subnetenv import (
    SubnetEnv,
    parse_subnet_env,
    previous_subnets,
    render_subnet_env,
    subnet_env_for,
)

IPV4_ONLY = (
    b"FLANNEL_NETWORK=10.0.0.0/16\nFLANNEL_SUBNET=10.0.53.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n"
)

DUAL_STACK = (
    b"FLANNEL_NETWORK=10.42.0.0/16\n"
    b"FLANNEL_SUBNET=10.42.0.1/24\n"
    b"FLANNEL_IPV6_NETWORK=2001:cafe:42::/56\n"
    b"FLANNEL_IPV6_SUBNET=2001:cafe:42::1/64\n"
    b"FLANNEL_MTU=1450\n"
    b"FLANNEL_IPMASQ=true\n"
)


# --- render ---------------------------------------------------------------------------------------


def test_render_ipv4_only_exact_bytes():
    env = subnet_env_for(IPv4Network("10.0.0.0/16"), IPv4Network("10.0.53.0/24"), 1472, False)
    assert env.subnet == IPv4Interface("10.0.53.1/24")
    assert render_subnet_env(env).encode() == IPV4_ONLY


def test_render_dual_stack_doc_example_exact_bytes():
    env = subnet_env_for(
        IPv4Network("10.42.0.0/16"),
        IPv4Network("10.42.0.0/24"),
        1450,
        True,
        ipv6_network=IPv6Network("2001:cafe:42::/56"),
        ipv6_subnet=IPv6Network("2001:cafe:42::/64"),
    )
    assert render_subnet_env(env).encode() == DUAL_STACK


def test_render_ipv6_only_has_no_ipv4_lines():
    env = SubnetEnv(
        network=None,
        subnet=None,
        ipv6_network=IPv6Network("fd00:42::/48"),
        ipv6_subnet=IPv6Interface("fd00:42:0:5::1/64"),
        mtu=1280,
        ipmasq=False,
    )
    assert render_subnet_env(env) == (
        "FLANNEL_IPV6_NETWORK=fd00:42::/48\nFLANNEL_IPV6_SUBNET=fd00:42:0:5::1/64\nFLANNEL_MTU=1280\n"
        "FLANNEL_IPMASQ=false\n"
    )


def test_render_neither_family_still_writes_mtu_and_ipmasq():
    env = SubnetEnv(None, None, None, None, mtu=1500, ipmasq=True)
    assert render_subnet_env(env) == "FLANNEL_MTU=1500\nFLANNEL_IPMASQ=true\n"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"network": IPv4Network("10.0.0.0/16"), "subnet": None},
        {"network": None, "subnet": IPv4Interface("10.0.0.1/24")},
        {"ipv6_network": IPv6Network("fd00::/48"), "ipv6_subnet": None},
        {"mtu": "1450"},
        {"mtu": True},
        {"ipmasq": "true"},
    ],
)
def test_subnet_env_rejects_half_families_and_bad_types(kwargs):
    base = {
        "network": None,
        "subnet": None,
        "ipv6_network": None,
        "ipv6_subnet": None,
        "mtu": 1450,
        "ipmasq": False,
    }
    with pytest.raises(ValueError):
        SubnetEnv(**{**base, **kwargs})


def test_subnet_env_for_first_usable_ip():
    env = subnet_env_for(IPv4Network("10.5.0.0/16"), IPv4Network("10.5.52.0/24"), 1450, True)
    assert str(env.subnet) == "10.5.52.1/24"
    # Go's IncrementIP wraps around at the top of the address space.
    env = subnet_env_for(IPv4Network("0.0.0.0/0"), IPv4Network("255.255.255.255/32"), 1450, True)
    assert str(env.subnet) == "0.0.0.0/32"


# --- parse ----------------------------------------------------------------------------------------


def test_parse_flannel_file():
    assert parse_subnet_env(DUAL_STACK.decode()) == {
        "FLANNEL_NETWORK": "10.42.0.0/16",
        "FLANNEL_SUBNET": "10.42.0.1/24",
        "FLANNEL_IPV6_NETWORK": "2001:cafe:42::/56",
        "FLANNEL_IPV6_SUBNET": "2001:cafe:42::1/64",
        "FLANNEL_MTU": "1450",
        "FLANNEL_IPMASQ": "true",
    }


def test_parse_lenient_forms():
    text = (
        "# written by hand\r\n"
        "\n"
        "   \n"
        "export FLANNEL_NETWORK=10.0.0.0/16\n"
        "FLANNEL_SUBNET='10.0.53.1/24'\n"
        'FLANNEL_MTU="1472"  # inline comment after quotes\n'
        "FLANNEL_IPMASQ=false # inline comment\n"
        "  SPACED  =  value with spaces  \n"
        'ESCAPED="a\\"b\\\\c\\nd"\n'
        "EMPTY=\n"
        "HASH=a#b\n"
        "DUP=1\n"
        "DUP=2\n"
    )
    assert parse_subnet_env(text) == {
        "FLANNEL_NETWORK": "10.0.0.0/16",
        "FLANNEL_SUBNET": "10.0.53.1/24",
        "FLANNEL_MTU": "1472",
        "FLANNEL_IPMASQ": "false",
        "SPACED": "value with spaces",
        "ESCAPED": 'a"b\\c\nd',
        "EMPTY": "",
        "HASH": "a#b",
        "DUP": "2",
    }


@pytest.mark.parametrize(
    ("text", "lineno"),
    [
        ("FLANNEL_MTU=1450\nnot a key value line\n", 2),
        ("\n\n# c\n=value\n", 4),
        ("A=1\nBAD KEY=1\n", 2),
        ("A='unterminated\n", 1),
        ('A="unterminated\n', 1),
        ("A='x' trailing\n", 1),
        ("export\n", 1),
    ],
)
def test_parse_malformed_line_names_line_number(text, lineno):
    with pytest.raises(LocalConfigError, match=rf"/run/flannel/subnet\.env line {lineno}:"):
        parse_subnet_env(text, source="/run/flannel/subnet.env")


# --- previous_subnets -------------------------------------------------------------------------------


def test_previous_subnets_network_form():
    values = parse_subnet_env(DUAL_STACK.decode())
    assert previous_subnets(values) == (IPv4Network("10.42.0.0/24"), IPv6Network("2001:cafe:42::/64"))


def test_previous_subnets_absent():
    assert previous_subnets({}) == (None, None)
    assert previous_subnets({"FLANNEL_SUBNET": "", "FLANNEL_IPV6_SUBNET": ""}) == (None, None)


def test_previous_subnets_comma_lists_skip_invalid_and_take_first_valid():
    values = {
        "FLANNEL_SUBNET": "garbage,10.5.52.1/24,10.6.0.1/24",
        "FLANNEL_IPV6_SUBNET": "10.0.0.1/24, fd00:1:2::1/64 ,fd00:9::1/64",
    }
    assert previous_subnets(values) == (IPv4Network("10.5.52.0/24"), IPv6Network("fd00:1:2::/64"))


@pytest.mark.parametrize(
    "bad",
    [
        "10.5.52.1",  # no prefix
        "10.5.52.1/255.255.255.0",  # netmask, not a prefix length
        "10.5.52.1/33",
        "10.5.052.1/24",  # leading zero
        "fd00::1/64",  # wrong family
        "10.5.52.1/2a",
        ",,",
    ],
)
def test_previous_subnets_invalid_v4_is_none(bad):
    assert previous_subnets({"FLANNEL_SUBNET": bad}) == (None, None)


@pytest.mark.parametrize("bad", ["fe80::1%eth0/64", "fd00::1/129", "10.0.0.1/24", "fd00::1"])
def test_previous_subnets_invalid_v6_is_none(bad):
    assert previous_subnets({"FLANNEL_IPV6_SUBNET": bad}) == (None, None)


def test_round_trip_render_parse_previous_subnets():
    lease = IPv4Network("10.0.53.0/24")
    env = subnet_env_for(IPv4Network("10.0.0.0/16"), lease, 1472, False)
    assert previous_subnets(parse_subnet_env(render_subnet_env(env))) == (lease, None)


# --- properties -----------------------------------------------------------------------------------


@given(st.text())
def test_parse_arbitrary_text_returns_dict_or_local_config_error(text):
    try:
        result = parse_subnet_env(text)
    except LocalConfigError:
        return
    assert isinstance(result, dict)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in result.items())


_LINEISH = st.lists(
    st.one_of(
        st.text(alphabet="AB_=#'\" \t\\xe\n", max_size=12),
        st.sampled_from(["export ", "export A=1", "A='b'", 'A="b\\"', "# c", "A=b # c"]),
    ),
    max_size=8,
).map("\n".join)


@given(_LINEISH)
def test_parse_env_like_text_returns_dict_or_local_config_error(text):
    with contextlib.suppress(LocalConfigError):
        assert isinstance(parse_subnet_env(text), dict)


def _v4_net(max_prefix: int):
    return st.builds(
        lambda addr, plen: IPv4Network((addr, plen), strict=False),
        st.integers(0, 2**32 - 1),
        st.integers(0, max_prefix),
    )


def _v6_net(max_prefix: int):
    return st.builds(
        lambda addr, plen: IPv6Network((addr, plen), strict=False),
        st.integers(0, 2**128 - 1),
        st.integers(0, max_prefix),
    )


@given(
    network=st.none() | _v4_net(32),
    lease=_v4_net(31),
    ipv6=st.none() | st.tuples(_v6_net(128), _v6_net(127)),
    mtu=st.integers(0, 65535),
    ipmasq=st.booleans(),
)
def test_render_parse_round_trip(network, lease, ipv6, mtu, ipmasq):
    ipv6_network, ipv6_lease = ipv6 if ipv6 is not None else (None, None)
    env = subnet_env_for(
        network,
        None if network is None else lease,
        mtu,
        ipmasq,
        ipv6_network=ipv6_network,
        ipv6_subnet=ipv6_lease,
    )
    text = render_subnet_env(env)
    assert text.endswith("\n") and "\n\n" not in text
    values = parse_subnet_env(text)

    expected: dict[str, str] = {}
    if network is not None:
        expected["FLANNEL_NETWORK"] = str(network)
        expected["FLANNEL_SUBNET"] = f"{lease.network_address + 1}/{lease.prefixlen}"
    if ipv6_network is not None:
        expected["FLANNEL_IPV6_NETWORK"] = str(ipv6_network)
        first6 = ipaddress.IPv6Address((int(ipv6_lease.network_address) + 1) % 2**128)
        expected["FLANNEL_IPV6_SUBNET"] = f"{first6}/{ipv6_lease.prefixlen}"
    expected["FLANNEL_MTU"] = str(mtu)
    expected["FLANNEL_IPMASQ"] = "true" if ipmasq else "false"
    assert values == expected
    assert list(values) == list(expected)  # line order

    # For prefixes up to /31 (/127) the first usable address stays inside the lease, so a restart
    # reads back exactly the lease it had.
    assert previous_subnets(values) == (None if network is None else lease, ipv6_lease)
