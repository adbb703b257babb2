"""Tests for pyflannel.core.packet: TTL/checksum arithmetic, ICMP generation, validation guards."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyflannel.core.packet import (
    checksum,
    decrement_ttl,
    icmp_net_unreachable,
    ipv4_dst,
    ipv4_src,
    is_valid_ipv4,
)

HDR = struct.Struct("!BBHHHBBHII")
SRC = 0x0A003502  # 10.0.53.2
DST = 0x0A005002  # 10.0.80.2
TUN = 0x0A003500  # 10.0.53.0, our flannel0 address


def ref_checksum(data: bytes) -> int:
    """Textbook RFC 1071 loop, independent of the implementation under test."""
    if len(data) % 2:
        data += b"\x00"
    s = 0
    for i in range(0, len(data), 2):
        s += data[i] << 8 | data[i + 1]
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def make_packet(
    *,
    ttl: int = 64,
    proto: int = 17,
    src: int = SRC,
    dst: int = DST,
    options: bytes = b"",
    payload: bytes = b"ABCDEFGHIJKL",
    frag: int = 0,
    tos: int = 0,
    ident: int = 0x1234,
) -> bytearray:
    assert len(options) % 4 == 0 and len(options) <= 40
    ihl = 5 + len(options) // 4
    total = ihl * 4 + len(payload)
    hdr = bytearray(HDR.pack(0x40 | ihl, tos, total, ident, frag, ttl, proto, 0, src, dst) + options)
    hdr[10:12] = ref_checksum(bytes(hdr)).to_bytes(2, "big")
    return hdr + payload


u32 = st.integers(0, 0xFFFFFFFF)
options_st = st.integers(0, 10).flatmap(lambda k: st.binary(min_size=4 * k, max_size=4 * k))
unicast_src = u32.filter(lambda a: a >> 24 not in (0, 127) and a >> 28 != 0xE and a != 0xFFFFFFFF)
unicast_dst = u32.filter(lambda a: a >> 28 != 0xE and a != 0xFFFFFFFF)


# --- checksum -------------------------------------------------------------------------------


@given(st.binary(max_size=200))
def test_checksum_matches_reference(data: bytes) -> None:
    assert checksum(data) == ref_checksum(data)
    assert checksum(bytearray(data)) == checksum(memoryview(data)) == ref_checksum(data)


@pytest.mark.parametrize("data", [b"", b"\x00\x00", b"\xff\xff", b"\x00\x01\xff\xfe", b"\x01"])
def test_checksum_edges(data: bytes) -> None:
    assert checksum(data) == ref_checksum(data)


def test_checksum_of_valid_header_is_zero() -> None:
    assert checksum(make_packet()[:20]) == 0


# --- addresses and validation ---------------------------------------------------------------


def test_addresses_host_order() -> None:
    pkt = make_packet()
    assert ipv4_src(pkt) == SRC
    assert ipv4_dst(pkt) == DST
    assert ipv4_dst(memoryview(pkt)) == DST
    assert ipv4_src(bytes(pkt)) == SRC


def test_is_valid_ipv4_cases() -> None:
    pkt = make_packet(options=b"\x01" * 8)
    assert is_valid_ipv4(pkt, len(pkt))
    assert is_valid_ipv4(pkt, 28)  # header with options just fits
    assert not is_valid_ipv4(pkt, 27)  # IHL 7 needs 28 bytes
    assert not is_valid_ipv4(pkt, 19)
    assert not is_valid_ipv4(pkt, len(pkt) + 1)  # claims more than the buffer holds
    assert not is_valid_ipv4(b"", 0)
    v6 = bytearray(pkt)
    v6[0] = 0x60
    assert not is_valid_ipv4(v6, len(v6))
    short_ihl = bytearray(pkt)
    short_ihl[0] = 0x44
    assert not is_valid_ipv4(short_ihl, len(short_ihl))


@given(st.binary(max_size=80), st.integers(-5, 100))
def test_garbage_never_raises(data: bytes, n: int) -> None:
    if not is_valid_ipv4(data, n):
        assert icmp_net_unreachable(data, TUN, n if n >= 0 else 0) is None
        return
    ipv4_src(data)
    ipv4_dst(data)
    decrement_ttl(bytearray(data))
    icmp_net_unreachable(data, TUN, n)
    icmp_net_unreachable(data[:n], TUN)


# --- TTL decrement --------------------------------------------------------------------------


@given(
    ttl=st.integers(2, 255),
    proto=st.integers(0, 255),
    src=u32,
    dst=u32,
    tos=st.integers(0, 255),
    ident=st.integers(0, 0xFFFF),
    frag=st.integers(0, 0xFFFF),
    options=options_st,
    payload=st.binary(max_size=32),
    prefix=st.binary(max_size=12),
)
def test_decrement_ttl_matches_full_recompute(
    ttl: int,
    proto: int,
    src: int,
    dst: int,
    tos: int,
    ident: int,
    frag: int,
    options: bytes,
    payload: bytes,
    prefix: bytes,
) -> None:
    pkt = make_packet(
        ttl=ttl,
        proto=proto,
        src=src,
        dst=dst,
        tos=tos,
        ident=ident,
        frag=frag,
        options=options,
        payload=payload,
    )
    buf = bytearray(prefix) + pkt
    off = len(prefix)
    assert decrement_ttl(buf, off)
    ihl4 = (pkt[0] & 0xF) * 4
    hdr = buf[off : off + ihl4]
    assert hdr[8] == ttl - 1
    expected = bytearray(hdr)
    expected[10:12] = b"\x00\x00"
    assert int.from_bytes(hdr[10:12], "big") == ref_checksum(bytes(expected))
    assert checksum(hdr) == 0
    # nothing but TTL and checksum changed
    assert buf[:off] == prefix
    assert buf[off : off + 8] == pkt[:8] and buf[off + 9 : off + 10] == pkt[9:10]
    assert buf[off + 12 :] == pkt[12:]


def _flannel_amd64(check_net: int) -> int:
    """proxy_amd64.c decrement_ttl's checksum update as it runs on a little-endian CPU."""
    h = int.from_bytes(check_net.to_bytes(2, "big"), "little")  # iph->check as a host uint16
    htons_0x100 = 0x0001
    carry = 1 if h >= 0xFFFE else 0  # if (iph->check >= htons(0xFFFFu - 0x100)) adds an extra 1
    h = (h + htons_0x100 + carry) & 0xFFFF
    return int.from_bytes(h.to_bytes(2, "little"), "big")


def test_decrement_ttl_bit_exact_with_flannel_for_every_checksum() -> None:
    buf = bytearray(make_packet())
    for c in range(0x10000):
        buf[8] = 64
        buf[10:12] = c.to_bytes(2, "big")
        assert decrement_ttl(buf)
        assert int.from_bytes(buf[10:12], "big") == _flannel_amd64(c), hex(c)


def test_decrement_ttl_checksum_wrap_cases() -> None:
    # Find headers whose checksums sit at the carry boundary and check them against recomputation.
    seen = set()
    for ident in range(0x10000):
        pkt = make_packet(ident=ident)
        c = int.from_bytes(pkt[10:12], "big")
        if c >= 0xFE00:
            assert decrement_ttl(pkt)
            assert checksum(pkt[:20]) == 0
            seen.add(c >> 8)
    assert {0xFE, 0xFF} <= seen


@pytest.mark.parametrize("ttl", [0, 1])
def test_decrement_ttl_drops_at_zero(ttl: int) -> None:
    pkt = make_packet(ttl=ttl)
    before = bytes(pkt)
    assert decrement_ttl(pkt) is False
    assert pkt == before


def test_decrement_ttl_on_memoryview() -> None:
    buf = bytearray(100) + make_packet(ttl=2)
    mv = memoryview(buf)
    assert decrement_ttl(mv, 100)
    assert buf[108] == 1 and checksum(buf[100:120]) == 0
    assert not decrement_ttl(mv, 100)


# --- ICMP net unreachable -------------------------------------------------------------------


def _check_icmp(out: bytes, offender: bytes | bytearray, n: int) -> None:
    v_ihl, tos, total, ident, frag, ttl, proto, _, src, dst = HDR.unpack_from(out)
    assert v_ihl == 0x45 and tos == 0 and ident == 0 and frag == 0
    assert total == len(out)
    assert ttl == 8 and proto == 1
    assert src == TUN and dst == ipv4_src(offender)
    assert ref_checksum(out[:20]) == 0
    icmp = out[20:]
    assert icmp[0] == 3 and icmp[1] == 0  # destination unreachable / net unreachable
    assert icmp[4:8] == b"\x00\x00\x00\x00"
    assert ref_checksum(icmp) == 0
    ihl4 = (offender[0] & 0xF) * 4
    assert icmp[8:] == bytes(offender[: min(n, ihl4 + 8)])


@given(
    proto=st.integers(0, 255).filter(lambda p: p != 1),
    src=unicast_src,
    dst=unicast_dst,
    options=options_st,
    payload=st.binary(min_size=8, max_size=64),
    flags=st.sampled_from([0, 0x2000, 0x4000]),  # none, MF, DF: offset 0 is a first fragment
)
def test_icmp_unreachable_fields(
    proto: int, src: int, dst: int, options: bytes, payload: bytes, flags: int
) -> None:
    pkt = make_packet(proto=proto, src=src, dst=dst, options=options, payload=payload, frag=flags)
    out = icmp_net_unreachable(pkt, TUN)
    assert out is not None
    _check_icmp(out, pkt, len(pkt))
    assert len(out) == 20 + 8 + 20 + len(options) + 8


def test_icmp_unreachable_concrete_bytes() -> None:
    pkt = make_packet(proto=6, payload=bytes(range(20)))
    out = icmp_net_unreachable(memoryview(pkt), TUN)
    assert out is not None
    assert out[:2] == b"\x45\x00" and out[8:10] == b"\x08\x01"
    assert out[12:16] == bytes([10, 0, 53, 0]) and out[16:20] == bytes([10, 0, 53, 2])
    assert out[20:22] == b"\x03\x00"
    assert out[28:] == bytes(pkt[:28])


def test_icmp_unreachable_respects_n_and_short_payload() -> None:
    pkt = make_packet(proto=17, payload=b"0123456789")
    buf = pkt + b"\xee" * 50  # receive buffer longer than the packet
    out = icmp_net_unreachable(buf, TUN, len(pkt))
    assert out is not None and out[28:] == bytes(pkt[:28])
    short = make_packet(proto=17, payload=b"abc")
    out = icmp_net_unreachable(short, TUN)
    assert out is not None
    _check_icmp(out, short, len(short))
    assert out[48:] == b"abc"


@pytest.mark.parametrize("icmp_type", [3, 4, 5, 11, 12])
def test_no_icmp_about_icmp_errors(icmp_type: int) -> None:
    pkt = make_packet(proto=1, payload=bytes([icmp_type, 0]) + b"\x00" * 6)
    assert icmp_net_unreachable(pkt, TUN) is None


@pytest.mark.parametrize("icmp_type", [0, 8, 13])
def test_icmp_queries_get_an_unreachable(icmp_type: int) -> None:
    pkt = make_packet(proto=1, payload=bytes([icmp_type, 0]) + b"\x00" * 6)
    out = icmp_net_unreachable(pkt, TUN)
    assert out is not None
    _check_icmp(out, pkt, len(pkt))


@pytest.mark.parametrize("frag", [1, 0x1FFF, 0x2001, 0x4000 | 185, 0x20B9])
def test_no_icmp_for_non_first_fragments(frag: int) -> None:
    assert icmp_net_unreachable(make_packet(frag=frag), TUN) is None


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        (0, DST),
        (0x7F000001, DST),
        (0xE0000001, DST),
        (0xFFFFFFFF, DST),
        (SRC, 0xFFFFFFFF),
        (SRC, 0xEFFFFFFA),
    ],
)
def test_no_icmp_for_non_unicast(src: int, dst: int) -> None:
    assert icmp_net_unreachable(make_packet(src=src, dst=dst), TUN) is None


def test_no_icmp_for_invalid_offender() -> None:
    pkt = make_packet()
    assert icmp_net_unreachable(pkt[:19], TUN) is None
    assert icmp_net_unreachable(pkt, TUN, 10) is None
    bad = bytearray(pkt)
    bad[0] = 0x4F  # IHL 15 = 60 bytes, more than we have
    assert icmp_net_unreachable(bad, TUN) is None


def test_icmp_for_max_header() -> None:
    pkt = make_packet(options=bytes(range(40)), payload=b"12345678")
    out = icmp_net_unreachable(pkt, TUN)
    assert out is not None
    _check_icmp(out, pkt, len(pkt))
    assert len(out) == 20 + 8 + 60 + 8
