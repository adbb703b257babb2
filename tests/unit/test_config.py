"""Network config parsing and validation, against flannel's ParseConfig/CheckNetworkConfig
(docs/compatibility.md#network-config)."""

from __future__ import annotations

import contextlib
import ipaddress
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyflannel.core.config import NetworkConfig, parse_config
from pyflannel.core.errors import ConfigError

V4, V6 = ipaddress.IPv4Address, ipaddress.IPv6Address


def cfg(**fields: Any) -> NetworkConfig:
    return parse_config(json.dumps(fields))


def fails(text: str | bytes, start: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    message = str(info.value)
    assert message.startswith(start), message
    return message


# --- flannel's examples ------------------------------------------------------------------------


def test_flannel_unit_test_defaults_lowercase_key() -> None:
    c = parse_config('{"network":"10.3.0.0/16"}')
    assert c.network == ipaddress.IPv4Network("10.3.0.0/16")
    assert (c.subnet_len, c.subnet_min, c.subnet_max) == (24, V4("10.3.1.0"), V4("10.3.255.0"))
    assert c.enable_ipv4 and not c.enable_ipv6 and not c.enable_nftables
    assert c.subnets_ipv4() == 255


def test_article_example_defaults_to_udp() -> None:
    c = parse_config('{"Network": "10.0.0.0/16"}')
    assert c.backend_type == "udp" and dict(c.backend) == {}
    assert (c.subnet_len, c.subnet_min, c.subnet_max) == (24, V4("10.0.1.0"), V4("10.0.255.0"))


def test_documentation_udp_example() -> None:
    c = parse_config(
        '{"Network":"10.0.0.0/8","SubnetLen":20,"SubnetMin":"10.10.0.0","SubnetMax":"10.99.0.0",'
        ' "Backend":{"Type":"udp","Port":7890}}'
    )
    assert (c.subnet_len, c.subnet_min, c.subnet_max) == (20, V4("10.10.0.0"), V4("10.99.0.0"))
    assert c.backend_type == "udp" and c.backend_option("Port", 8285) == 7890
    assert c.subnets_ipv4() == (0x0A630000 - 0x0A0A0000) // 4096 + 1


def test_ipv6_example() -> None:
    c = cfg(Network="10.42.0.0/16", IPv6Network="fc00::/48", EnableIPv6=True, Backend={"Type": "vxlan"})
    assert c.ipv6_network == ipaddress.IPv6Network("fc00::/48")
    assert (c.ipv6_subnet_len, c.ipv6_subnet_min, c.ipv6_subnet_max) == (
        64,
        V6("fc00:0:0:1::"),
        V6("fc00:0:0:ffff::"),
    )
    assert c.subnet_len == 24 and c.backend_type == "vxlan"


def test_ipv6_only() -> None:
    c = cfg(EnableIPv4=False, EnableIPv6=True, IPv6Network="2001:cafe:42::/56")
    assert c.network is None and c.subnet_min is None and c.subnets_ipv4() == 0
    assert c.ipv6_subnet_len == 64 and c.ipv6_subnet_min == V6("2001:cafe:42:1::")
    assert c.ipv6_subnet_max == V6("2001:cafe:42:ff::")


# --- IPv4 defaults and rules -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("network", "length"), [("10.0.0.0/8", 24), ("10.0.0.0/22", 24), ("10.0.0.0/23", 25), ("10.0.0.0/28", 30)]
)
def test_default_subnet_len(network: str, length: int) -> None:
    assert cfg(Network=network).subnet_len == length


def test_slash_28_is_the_smallest_network() -> None:
    c = cfg(Network="10.0.0.0/28")
    assert (c.subnet_min, c.subnet_max, c.subnets_ipv4()) == (V4("10.0.0.4"), V4("10.0.0.12"), 3)
    message = fails('{"Network":"10.0.0.0/29"}', "network is too small. Minimum useful network prefix is /28")
    assert "10.0.0.0/29" in message and "fix:" in message


def test_host_bits_are_dropped_like_net_parsecidr() -> None:
    assert cfg(Network="10.0.0.1/16").network == ipaddress.IPv4Network("10.0.0.0/16")


@pytest.mark.parametrize("network", [None, "0.0.0.0/0", "10.1.2.3/0"])
def test_network_missing_or_empty(network: str | None) -> None:
    text = "{}" if network is None else json.dumps({"Network": network})
    fails(text, "please define a correct Network parameter in the flannel config")


def test_subnet_len_must_be_less_than_31() -> None:
    message = fails('{"Network":"10.0.0.0/8","SubnetLen":31}', "SubnetLen must be less than /31")
    assert "31" in message.partition("(")[2]
    assert cfg(Network="10.0.0.0/8", SubnetLen=30).subnet_len == 30


@pytest.mark.parametrize(("network", "length"), [("10.0.0.0/16", 17), ("10.0.0.0/16", 16), ("10.0.0.0/16", 8)])
def test_four_subnets(network: str, length: int) -> None:
    text = json.dumps({"Network": network, "SubnetLen": length})
    message = fails(text, "network must be able to accommodate at least four subnets")
    assert "SubnetLen 18" in message
    assert cfg(Network=network, SubnetLen=18).subnets_ipv4() == 3


def test_explicit_zero_subnet_len_means_default() -> None:
    assert cfg(Network="10.0.0.0/16", SubnetLen=0).subnet_len == 24


@pytest.mark.parametrize("which", ["SubnetMin", "SubnetMax"])
def test_range_and_boundary(which: str) -> None:
    fails(
        json.dumps({"Network": "10.3.0.0/16", which: "10.4.1.0"}),
        f"{which} is not in the range of the Network",
    )
    message = fails(
        json.dumps({"Network": "10.3.0.0/16", which: "10.3.1.5"}),
        f"{which} is not on a SubnetLen boundary: 10.3.1.5",
    )
    assert "10.3.1.0" in message


def test_zero_subnet_min_means_unset() -> None:
    c = cfg(Network="10.3.0.0/16", SubnetMin="0.0.0.0", SubnetMax="0.0.0.0")
    assert (c.subnet_min, c.subnet_max) == (V4("10.3.1.0"), V4("10.3.255.0"))


def test_min_above_max_is_accepted_like_flannel() -> None:
    c = cfg(Network="10.3.0.0/16", SubnetMin="10.3.9.0", SubnetMax="10.3.2.0")
    assert c.subnets_ipv4() == 0


def test_ipv4_disabled_skips_ipv4_checks() -> None:
    c = cfg(EnableIPv4=False, EnableIPv6=True, IPv6Network="fc00::/48", Network="10.0.0.0/30", SubnetLen=99)
    assert c.network == ipaddress.IPv4Network("10.0.0.0/30") and c.subnet_len == 99


def test_no_stack() -> None:
    fails('{"EnableIPv4": false}', "none defined stack")


# --- IPv6 rules --------------------------------------------------------------------------------


def v6(**fields: Any) -> str:
    return json.dumps({"EnableIPv4": False, "EnableIPv6": True, **fields})


@pytest.mark.parametrize(
    ("network", "length"), [("fc00::/16", 64), ("fc00::/62", 64), ("fc00::/63", 65), ("fc00::/124", 126)]
)
def test_ipv6_default_subnet_len(network: str, length: int) -> None:
    assert parse_config(v6(IPv6Network=network)).ipv6_subnet_len == length


def test_ipv6_rules() -> None:
    fails(v6(), "please define a correct IPv6Network parameter in the flannel config")
    fails(v6(IPv6Network="::/0"), "please define a correct IPv6Network parameter in the flannel config")
    fails(v6(IPv6Network="fc00::/125"), "IPv6Network is too small. Minimum useful network prefix is /124")
    fails(v6(IPv6Network="fc00::/48", IPv6SubnetLen=127), "SubnetLen must be less than /127")
    fails(v6(IPv6Network="fc00::/48", IPv6SubnetLen=49), "network must be able to accommodate at least four")
    net = "fc00::/48"
    fails(v6(IPv6Network=net, IPv6SubnetMin="fc01::"), "IPv6SubnetMin is not in the range of the IPv6Network")
    fails(v6(IPv6Network=net, IPv6SubnetMax="fc01::"), "IPv6SubnetMax is not in the range of the IPv6Network")
    fails(v6(IPv6Network=net, IPv6SubnetMin="fc00::1"), "IPv6SubnetMin is not on a SubnetLen boundary: fc00::1")
    fails(v6(IPv6Network=net, IPv6SubnetMax="fc00::1"), "IPv6SubnetMax is not on a SubnetLen boundary: fc00::1")


def test_ipv6_explicit_values_and_null_pointer_fields() -> None:
    c = parse_config(v6(IPv6Network="fc00::/48", IPv6SubnetLen=80, IPv6SubnetMin="fc00::2:0:0:0", IPv6SubnetMax=None))
    assert (c.ipv6_subnet_len, c.ipv6_subnet_min) == (80, V6("fc00::2:0:0:0"))
    assert c.ipv6_subnet_max == V6("fc00:0:0:ffff:ffff::")
    assert parse_config(v6(IPv6Network="fc00::/48", IPv6SubnetMin="::")).ipv6_subnet_min == V6("fc00:0:0:1::")


# --- Go encoding/json behaviour ----------------------------------------------------------------


def test_keys_are_case_insensitive_and_last_wins() -> None:
    c = parse_config('{"NETWORK":"10.1.0.0/16","subnetlen":26,"enableipv6":true,"ipv6network":"fc00::/48"}')
    assert c.subnet_len == 26 and c.ipv6_subnet_len == 64
    c = parse_config('{"Network":"10.1.0.0/16","network":"10.2.0.0/16"}')
    assert c.network == ipaddress.IPv4Network("10.2.0.0/16")
    assert parse_config('{"Network":"10.1.0.0/16","\u017fubnetLen":26}').subnet_len == 26  # Go folds long s


def test_every_occurrence_is_decoded_like_go() -> None:
    fails('{"Network":"10.1.0.0/16","subnetlen":"x","SubnetLen":24}', "SubnetLen must be")


def test_unknown_keys_ignored_and_null_keeps_defaults() -> None:
    c = parse_config('{"Network":"10.1.0.0/16","Comment":[1,{}],"EnableIPv4":null,"SubnetLen":null}')
    assert c.enable_ipv4 and c.subnet_len == 24


def test_enable_nftables() -> None:
    assert cfg(Network="10.1.0.0/16", enableNFTables=True).enable_nftables


# --- Backend (docs/compatibility.md#backend-options) -------------------------------------------


@pytest.mark.parametrize(
    ("backend", "expected"),
    [
        ({"Type": "VXLAN"}, "vxlan"),
        ({}, ""),
        ({"type": "Host-GW"}, "host-gw"),
        ({"Type": None}, ""),
        (None, ""),
    ],
)
def test_backend_type(backend: Any, expected: str) -> None:
    assert cfg(Network="10.1.0.0/16", Backend=backend).backend_type == expected


def test_unknown_backend_type_is_not_checked_here() -> None:
    assert cfg(Network="10.1.0.0/16", Backend={"Type": "Nonsense"}).backend_type == "nonsense"


def test_backend_option_is_case_insensitive() -> None:
    c = cfg(Network="10.1.0.0/16", Backend={"Type": "vxlan", "vni": 4, "directRouting": True, "MTU": None})
    assert c.backend_option("VNI") == 4 and c.backend_option("DirectRouting") is True
    assert c.backend_option("Port", 0) == 0 and c.backend_option("mtu", 1500) == 1500
    assert c.backend["vni"] == 4


@pytest.mark.parametrize("backend", ['"udp"', "[]", "7", "true"])
def test_backend_not_an_object(backend: str) -> None:
    text = '{"Network":"10.1.0.0/16","Backend":' + backend + "}"
    assert "Backend" in fails(text, "error decoding Backend property of config: ")


def test_backend_type_not_a_string() -> None:
    fails('{"Network":"10.1.0.0/16","Backend":{"Type":1}}', "error decoding Backend property of config: ")


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "{", "nope", '{"Network": NaN}', '{"a": Infinity}', "\ufeff{}", "1" * 5000])
def test_invalid_json(text: str) -> None:
    fails(text, "invalid JSON in network config: ")


def test_bytes_input_and_bad_utf8() -> None:
    assert parse_config(b'{"Network":"10.3.0.0/16"}').subnet_len == 24
    fails(b'{"Network":"10.3.0.0/16\xff"}', "invalid JSON in network config: ")


@pytest.mark.parametrize("text", ["[]", "null", '"x"', "3"])
def test_top_level_not_an_object(text: str) -> None:
    fails(text, "network config must be a JSON object")


@pytest.mark.parametrize(
    "value",
    ["fc00::/48", "10.0.0.0", "10.0.0.0/33", "10.0.0.0/255.255.0.0", "010.0.0.0/8", "", 10, None, [1]],
)
def test_network_not_an_ipv4_cidr(value: Any) -> None:
    message = fails(json.dumps({"Network": value}), "Network must be an IPv4 CIDR")
    got = "a JSON array" if isinstance(value, list) else json.dumps(value)
    assert f"(got {got}, fix: " in message


@pytest.mark.parametrize("value", ["10.0.0", "fc00::1", "10.3.1.0/24", 167772160, None])
def test_subnet_min_not_an_address(value: Any) -> None:
    fails(json.dumps({"Network": "10.0.0.0/8", "SubnetMin": value}), "SubnetMin must be an IPv4 address")


@pytest.mark.parametrize("value", [-1, 24.0, "24", True, 2**64, 1e2])
def test_subnet_len_not_a_uint(value: Any) -> None:
    fails(
        json.dumps({"Network": "10.0.0.0/8", "SubnetLen": value}),
        "SubnetLen must be a non-negative whole number",
    )


@pytest.mark.parametrize("key", ["EnableIPv4", "EnableIPv6", "EnableNFTables"])
@pytest.mark.parametrize("value", ["true", 1, 0, [], {}])
def test_bools_must_be_bools(key: str, value: Any) -> None:
    fails(json.dumps({"Network": "10.0.0.0/8", key: value}), f"{key} must be true or false")


@pytest.mark.parametrize("depth", [50, 900, 990, 3000])
def test_deep_nesting_never_crashes(depth: int) -> None:
    text = '{"Network":"10.0.0.0/8","Backend":{"x":' + "[" * depth + "]" * depth + "}}"
    with contextlib.suppress(ConfigError):
        assert parse_config(text).backend_type == ""


def test_effective_json() -> None:
    assert parse_config('{"Network":"10.3.0.0/16"}').to_effective_json() == {
        "Network": "10.3.0.0/16",
        "SubnetLen": 24,
        "SubnetMin": "10.3.1.0",
        "SubnetMax": "10.3.255.0",
        "EnableIPv4": True,
        "EnableIPv6": False,
        "EnableNFTables": False,
        "IPv6SubnetLen": 0,
        "BackendType": "udp",
        "Backend": {},
    }


def test_config_is_frozen_and_hashable() -> None:
    c = cfg(Network="10.3.0.0/16", Backend={"Type": "vxlan"})
    with pytest.raises(AttributeError):
        c.subnet_len = 3  # type: ignore[misc]
    assert hash(c) == hash(cfg(Network="10.3.0.0/16", Backend={"Type": "vxlan"}))


# --- properties --------------------------------------------------------------------------------

FIELD_NAMES = [
    "Network", "SubnetLen", "SubnetMin", "SubnetMax", "EnableIPv4", "EnableIPv6", "EnableNFTables",
    "IPv6Network", "IPv6SubnetLen", "IPv6SubnetMin", "IPv6SubnetMax", "Backend", "Type", "Port",
]  # fmt: skip
keys = st.one_of(
    st.sampled_from(FIELD_NAMES).flatmap(
        lambda k: st.lists(st.booleans(), min_size=len(k), max_size=len(k)).map(
            lambda ups: "".join(c.upper() if up else c.lower() for c, up in zip(k, ups, strict=True))
        )
    ),
    st.text(max_size=8),
)
ip_text = st.one_of(
    st.ip_addresses().map(str),
    st.builds(lambda a, n: f"{a}/{n}", st.ip_addresses(), st.integers(0, 130)),
)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12), ip_text, st.integers(0, 130),
)  # fmt: skip
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5),
    max_leaves=20,
)


def parses_or_config_error(text: str | bytes) -> None:
    try:
        assert isinstance(parse_config(text), NetworkConfig)
    except ConfigError as err:
        assert str(err)


@given(st.text())
def test_any_text_parses_or_raises_config_error(text: str) -> None:
    parses_or_config_error(text)


@given(st.binary())
def test_any_bytes_parse_or_raise_config_error(data: bytes) -> None:
    parses_or_config_error(data)


@given(json_values)
def test_any_json_value_parses_or_raises_config_error(value: Any) -> None:
    parses_or_config_error(json.dumps(value))


@given(st.dictionaries(keys, json_values, max_size=8), st.dictionaries(keys, json_values, max_size=4))
def test_any_config_object_parses_or_raises_config_error(top: dict[str, Any], backend: dict[str, Any]) -> None:
    parses_or_config_error(json.dumps({**top, "Backend": backend}))
    parses_or_config_error(json.dumps({"Network": "10.0.0.0/16", **top}))


@given(st.ip_addresses(v=4), st.integers(8, 28))
def test_ipv4_defaults_are_sane(address: ipaddress.IPv4Address, prefix: int) -> None:
    net = ipaddress.IPv4Network(f"{address}/{prefix}", strict=False)
    c = cfg(Network=f"{address}/{prefix}")
    assert c.network == net
    assert c.subnet_len == (24 if prefix <= 22 else prefix + 2)
    assert c.subnet_min is not None and c.subnet_max is not None
    assert c.subnet_min in net and c.subnet_max in net and c.subnet_min < c.subnet_max
    size = 2 ** (32 - c.subnet_len)
    assert int(c.subnet_min) % size == 0 and int(c.subnet_max) % size == 0
    assert c.subnets_ipv4() == 2 ** (c.subnet_len - prefix) - 1


@given(st.ip_addresses(v=6), st.integers(1, 124))
def test_ipv6_defaults_are_sane(address: ipaddress.IPv6Address, prefix: int) -> None:
    net = ipaddress.IPv6Network(f"{address}/{prefix}", strict=False)
    c = parse_config(v6(IPv6Network=f"{address}/{prefix}"))
    assert c.ipv6_subnet_min is not None and c.ipv6_subnet_max is not None
    assert c.ipv6_subnet_min in net and c.ipv6_subnet_max in net and c.ipv6_subnet_min < c.ipv6_subnet_max
    size = 2 ** (128 - c.ipv6_subnet_len)
    assert int(c.ipv6_subnet_min) % size == 0 and int(c.ipv6_subnet_max) % size == 0


@given(st.ip_addresses(v=4), st.integers(1, 28), st.integers(0, 30), st.sampled_from(["udp", "vxlan"]))
def test_effective_json_reparses_to_the_same_config(
    address: ipaddress.IPv4Address, prefix: int, length: int, backend: str
) -> None:
    try:
        c = cfg(Network=f"{address}/{prefix}", SubnetLen=length, Backend={"Type": backend})
    except ConfigError:
        return
    assert parse_config(json.dumps(c.to_effective_json())) == c  # what `config validate --json` prints


def test_config_changes_name_each_changed_field():
    from pyflannel.core.config import config_changes

    old = parse_config('{"Network": "10.0.0.0/16"}')
    assert config_changes(old, parse_config('{"network": "10.0.0.0/16", "Backend": {"Type": "udp"}}')) == []
    got = config_changes(old, parse_config('{"Network": "10.1.0.0/16", "Backend": {"Type": "vxlan"}}'))
    assert got[0] == 'Network "10.0.0.0/16" -> "10.1.0.0/16"'
    assert 'BackendType "udp" -> "vxlan"' in got
