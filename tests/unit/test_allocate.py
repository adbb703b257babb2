"""Subnet choice (docs/compatibility.md#lease-acquisition): free, inside SubnetMin..SubnetMax, aligned, random."""

from __future__ import annotations

import ipaddress
import json
import random
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyflannel.core.allocate import candidate_count, free_count, is_compatible, pick_subnet
from pyflannel.core.config import NetworkConfig, parse_config
from pyflannel.core.errors import AllocationError

N4 = ipaddress.IPv4Network


def cfg(**fields: Any) -> NetworkConfig:
    return parse_config(json.dumps(fields))


HUNG = 60.0  # seconds: far above any busy machine's time (~0.3 s idle), so only a hang fails


def within(seconds: float, fn, *args):
    """``fn(*args)``, failing the test if it has not returned by the deadline (a hung search fails
    there instead of hanging the suite; speed itself is measured in bench/, never here)."""
    pool = ThreadPoolExecutor(1)
    try:
        return pool.submit(fn, *args).result(timeout=seconds)
    except FutureTimeout:
        raise AssertionError(f"{getattr(fn, '__name__', fn)} did not return within {seconds:g}s") from None
    finally:
        pool.shutdown(wait=False)


def check_pick(config: NetworkConfig, taken: list[N4], got: N4) -> None:
    assert config.subnet_min is not None and config.subnet_max is not None
    assert got.prefixlen == config.subnet_len
    assert config.subnet_min <= got.network_address <= config.subnet_max
    assert int(got.network_address) % (1 << (32 - config.subnet_len)) == 0
    assert got.subnet_of(config.network)
    for t in taken:
        assert not got.overlaps(t), f"picked {got}, which overlaps taken {t}"


# --- basics ------------------------------------------------------------------------------------


def test_default_config_candidates_and_first_subnet_skipped():
    c = cfg(Network="10.3.0.0/16")
    assert candidate_count(c) == 255
    assert free_count(c, []) == 255
    rng = random.Random(7)
    seen = {pick_subnet(c, [], rng) for _ in range(2000)}
    assert N4("10.3.0.0/24") not in seen  # SubnetMin defaults to Network + one subnet
    assert N4("10.3.1.0/24") in seen and N4("10.3.255.0/24") in seen
    for sn in seen:
        check_pick(c, [], sn)


def test_pick_is_random_over_all_free_candidates():
    c = cfg(Network="10.0.0.0/24", SubnetLen=26)  # candidates .64 .128 .192
    rng = random.Random(1)
    seen = {pick_subnet(c, [], rng) for _ in range(200)}
    assert seen == {N4("10.0.0.64/26"), N4("10.0.0.128/26"), N4("10.0.0.192/26")}
    seen = {pick_subnet(c, [N4("10.0.0.128/26")], rng) for _ in range(200)}
    assert seen == {N4("10.0.0.64/26"), N4("10.0.0.192/26")}


def test_only_one_free_is_found():
    c = cfg(Network="10.0.0.0/16")
    taken = [N4(f"10.0.{i}.0/24") for i in range(256) if i != 200]
    assert free_count(c, taken) == 1
    assert pick_subnet(c, taken, random.Random(3)) == N4("10.0.200.0/24")


def test_taken_subnets_of_other_sizes_block_what_they_overlap():
    c = cfg(Network="10.0.0.0/16")
    taken = [
        N4("10.0.0.0/17"),  # a supernet covering 10.0.0.0 .. 10.0.127.255
        N4("10.0.128.0/18"),  # 10.0.128 .. 10.0.191
        N4("10.0.200.64/26"),  # inside one /24 candidate
        N4("10.0.201.7/32"),  # a single address
        N4("172.16.0.0/12"),  # outside the network: irrelevant
    ]
    assert free_count(c, taken) == 255 - 127 - 64 - 2
    rng = random.Random(5)
    for _ in range(300):
        check_pick(c, taken, pick_subnet(c, taken, rng))


def test_custom_subnet_min_max_respected():
    c = cfg(Network="10.0.0.0/8", SubnetLen=20, SubnetMin="10.10.0.0", SubnetMax="10.99.0.0")
    rng = random.Random(11)
    for _ in range(500):
        sn = pick_subnet(c, [], rng)
        assert ipaddress.IPv4Address("10.10.0.0") <= sn.network_address <= ipaddress.IPv4Address("10.99.0.0")
        assert sn.prefixlen == 20


# --- exhaustion --------------------------------------------------------------------------------


def test_exhausted_network_names_network_and_count():
    c = cfg(Network="10.10.0.0/28", SubnetLen=30)
    assert candidate_count(c) == 3
    taken = [N4("10.10.0.4/30"), N4("10.10.0.8/30"), N4("10.10.0.12/30")]
    assert free_count(c, taken) == 0
    with pytest.raises(AllocationError) as info:
        pick_subnet(c, taken, random.Random(0))
    msg = str(info.value)
    assert "10.10.0.0/28" in msg
    assert "3 subnets" in msg
    assert "out of subnets" in msg


def test_exhausted_by_a_supernet():
    c = cfg(Network="10.0.0.0/16")
    with pytest.raises(AllocationError, match=r"10\.0\.0\.0/16.*255"):
        pick_subnet(c, [N4("10.0.0.0/8")], random.Random(0))


def test_exhaustion_message_when_min_above_max_is_not_negative():
    c = cfg(Network="10.0.0.0/16", SubnetMin="10.0.200.0", SubnetMax="10.0.100.0")
    with pytest.raises(AllocationError) as info:
        pick_subnet(c, [], random.Random(0))
    assert "-99" not in str(info.value)


def test_no_ipv4_network_configured():
    c = cfg(EnableIPv4=False, EnableIPv6=True, IPv6Network="fc00::/48")
    with pytest.raises(AllocationError, match="no IPv4 network"):
        pick_subnet(c, [], random.Random(0))
    assert not is_compatible(c, N4("10.0.1.0/24"))


# --- is_compatible / free_count ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("subnet", "ok"),
    [
        ("10.0.1.0/24", True),  # SubnetMin
        ("10.0.255.0/24", True),  # SubnetMax
        ("10.0.77.0/24", True),
        ("10.0.0.0/24", False),  # below SubnetMin (the network's first subnet)
        ("10.0.1.0/25", False),  # wrong length
        ("10.0.2.0/23", False),
        ("10.1.0.0/24", False),  # outside the network
        ("9.255.255.0/24", False),
    ],
)
def test_is_compatible_default_range(subnet, ok):
    assert is_compatible(cfg(Network="10.0.0.0/16"), N4(subnet)) is ok


@pytest.mark.parametrize(
    ("subnet", "ok"),
    [("10.0.10.0/24", True), ("10.0.20.0/24", True), ("10.0.9.0/24", False), ("10.0.21.0/24", False)],
)
def test_is_compatible_custom_range(subnet, ok):
    c = cfg(Network="10.0.0.0/16", SubnetMin="10.0.10.0", SubnetMax="10.0.20.0")
    assert is_compatible(c, N4(subnet)) is ok


def test_free_count_cases():
    c = cfg(Network="10.0.0.0/16")
    assert free_count(c, []) == 255
    assert free_count(c, [N4("10.0.5.0/24")]) == 254
    assert free_count(c, [N4("10.0.5.0/24"), N4("10.0.5.0/24")]) == 254  # duplicates count once
    assert free_count(c, [N4("10.0.0.0/20")]) == 255 - 15  # 10.0.0.0/24 is no candidate anyway
    assert free_count(c, [N4("10.0.6.128/25")]) == 254
    assert free_count(c, [N4("10.1.0.0/16"), N4("192.168.0.0/16")]) == 255
    assert free_count(c, [N4("0.0.0.0/0")]) == 0


# --- properties --------------------------------------------------------------------------------


@st.composite
def config_and_taken(draw: st.DrawFn) -> tuple[NetworkConfig, list[N4]]:
    prefix = draw(st.integers(8, 28))
    addr = draw(st.integers(0, 2**32 - 1))
    network = N4((addr, prefix), strict=False)
    fields: dict[str, Any] = {"Network": str(network)}
    if draw(st.booleans()) or prefix > 28:
        fields["SubnetLen"] = draw(st.integers(prefix + 2, 30))
    config = cfg(**fields)
    n_taken = draw(st.integers(0, 12))
    taken = []
    base, span = int(network.network_address), network.num_addresses
    for _ in range(n_taken):
        plen = draw(st.integers(max(0, prefix - 2), 32))
        inside = draw(st.integers(0, 9)) > 0
        a = base + draw(st.integers(0, span - 1)) if inside else draw(st.integers(0, 2**32 - 1))
        taken.append(N4((a, plen), strict=False))
    if draw(st.booleans()):
        # also take some real candidates, of the right size
        size = 1 << (32 - config.subnet_len)
        assert config.subnet_min is not None
        for i in draw(st.lists(st.integers(0, candidate_count(config) - 1), max_size=8)):
            taken.append(N4((int(config.subnet_min) + i * size, config.subnet_len)))
    return config, taken


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config_and_taken(), st.integers(0, 2**32))
def test_pick_subnet_never_returns_a_taken_or_misplaced_subnet(ct, seed):
    config, taken = ct
    try:
        got = pick_subnet(config, taken, random.Random(seed))
    except AllocationError as err:
        assert free_count(config, taken) == 0
        assert str(config.network) in str(err)
        assert str(candidate_count(config)) in str(err)
        return
    check_pick(config, taken, got)


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 4), st.lists(st.integers(0, 20), max_size=40), st.integers(0, 2**32))
def test_small_networks_fill_up_exactly(extra, taken_idx, seed):
    # a /26 split into /(26+extra): every free candidate is found, and only free ones
    config = cfg(Network="10.9.8.0/26", SubnetLen=26 + extra)
    n = candidate_count(config)
    size = 1 << (32 - config.subnet_len)
    assert config.subnet_min is not None
    taken = [N4((int(config.subnet_min) + (i % n) * size, config.subnet_len)) for i in taken_idx]
    rng = random.Random(seed)
    free = free_count(config, taken)
    assert free == n - len(set(taken))
    for _ in range(free):
        sn = pick_subnet(config, taken, rng)
        check_pick(config, taken, sn)
        taken.append(sn)
    assert free_count(config, taken) == 0
    with pytest.raises(AllocationError):
        pick_subnet(config, taken, rng)


# --- large networks ----------------------------------------------------------------------------


def test_large_network_is_quick():
    c = cfg(Network="10.0.0.0/8", SubnetLen=28)
    assert candidate_count(c) > 65536
    rng = random.Random(42)
    taken = [N4("10.0.0.0/9"), N4("10.128.0.0/10"), N4("10.192.0.0/11")]
    picks = within(HUNG, lambda: [pick_subnet(c, taken, rng) for _ in range(200)])
    assert len(picks) == 200
    for sn in picks:
        check_pick(c, taken, sn)


def test_large_network_nearly_full_finds_the_last_free_block():
    c = cfg(Network="10.0.0.0/8", SubnetLen=28)
    # everything except 10.255.255.0/24 (whose 16 /28s are the only free candidates)
    taken = [N4((0x0A000000, 9))]
    base, plen = 0x0A800000, 10
    while plen <= 24:
        taken.append(N4((base, plen)))
        base += 1 << (32 - plen)
        plen += 1
    assert N4("10.255.255.0/24") not in taken
    sn = within(HUNG, pick_subnet, c, taken, random.Random(9))
    assert sn.subnet_of(N4("10.255.255.0/24"))
    check_pick(c, taken, sn)


def test_large_network_exhausted_is_reported_without_a_hang():
    c = cfg(Network="10.0.0.0/8", SubnetLen=28)
    with pytest.raises(AllocationError) as info:
        within(HUNG, pick_subnet, c, [N4("10.0.0.0/8")], random.Random(0))
    assert "10.0.0.0/8" in str(info.value)
    assert str(candidate_count(c)) in str(info.value)
