"""Pure functions on raw IPv4 packets for the udp backend's packet pump.

Why it is shaped like this:

- The pump touches every packet, so these are plain module-level functions over any buffer
  (``bytes``, ``bytearray``, ``memoryview``) with no object per packet. Field reads use
  precompiled ``struct.Struct.unpack_from`` (measured ~3x faster than ``int.from_bytes`` on a
  slice, which allocates), and the TTL fix-up edits three bytes in place.
- ``is_valid_ipv4`` is the single guard: the hot-path functions (``ipv4_src``, ``ipv4_dst``,
  ``decrement_ttl``) assume the caller has checked the packet with it and do no bounds checks of
  their own. ``icmp_net_unreachable`` runs only on the error path, so it validates for itself and
  never raises on garbage.
- ``decrement_ttl`` reproduces flannel's C proxy (``proxy_amd64.c: decrement_ttl``) bit for bit as
  it behaves on amd64: ``check += htons(0x100)`` on a little-endian ``uint16`` is "add 0x0100 to
  the network-order checksum with end-around carry", except that its carry test turns 0xFEFF into
  0x0000 (not 0xFFFF). That is also what a full recomputation gives, because a computed checksum
  is never 0xFFFF. Unlike the C (which forwards a TTL 0 packet with TTL 255) it drops TTL 0 and 1.
- ``icmp_net_unreachable`` builds the same packet as flannel's ``send_net_unreachable`` (TTL 8,
  id 0, no DF, ICMP type 3 code 0, quoting the offender's header + 8 bytes), and like flannel
  sends none about ICMP packets or non-first fragments. It also follows RFC 1122 3.2.2 where the
  C does not: none when the offender's source is not one unicast host (0/8, 127/8, multicast,
  255.255.255.255) or its destination is multicast or limited broadcast; a header of 60 bytes
  (IHL 15, which flannel's off-by-one rejects) is quoted; an offender whose payload is shorter
  than 8 bytes is quoted as far as it goes instead of with stale buffer bytes.
"""

from __future__ import annotations

import struct
from typing import TypeAlias

__all__ = [
    "checksum",
    "decrement_ttl",
    "icmp_net_unreachable",
    "ipv4_dst",
    "ipv4_src",
    "is_valid_ipv4",
]

Buffer: TypeAlias = bytes | bytearray | memoryview

_U32 = struct.Struct("!I")
_unpack_u32 = _U32.unpack_from
# version/IHL, TOS, total length, id, flags/fragment offset, TTL, protocol, checksum, src, dst
_IPV4_HDR = struct.Struct("!BBHHHBBHII")
# type, code, checksum, unused (RFC 792: zero for Destination Unreachable)
_ICMP_HDR = struct.Struct("!BBHI")

IPPROTO_ICMP = 1
ICMP_DEST_UNREACH = 3
# Informational ICMP (echo, timestamp, info, address mask) may be answered with an error; flannel's
# C proxy answers no ICMP at all, so a ping to a subnet nobody leases just times out there.
_ICMP_QUERY_TYPES = frozenset({0, 8, 13, 14, 15, 16, 17, 18})
ICMP_NET_UNREACH = 0
ICMP_ERROR_TTL = 8  # flannel's choice for the ICMP it injects into the TUN

_MULTICAST_MASK = 0xF0000000
_MULTICAST_NET = 0xE0000000
_BROADCAST = 0xFFFFFFFF


def ipv4_dst(pkt: Buffer) -> int:
    """Destination address (bytes 16..19) as a host-order int. Requires a validated packet."""
    return _unpack_u32(pkt, 16)[0]


def ipv4_src(pkt: Buffer) -> int:
    """Source address (bytes 12..15) as a host-order int. Requires a validated packet."""
    return _unpack_u32(pkt, 12)[0]


def is_valid_ipv4(pkt: Buffer, n: int) -> bool:
    """True when the first ``n`` bytes of ``pkt`` can be an IPv4 packet.

    Checks version 4, IHL >= 5, ``n >= 20`` and ``n >= IHL * 4`` (and that ``pkt`` really holds
    ``n`` bytes). Like flannel it does not compare the total-length field with ``n``.
    """
    if n < 20 or len(pkt) < n:
        return False
    b = pkt[0]
    return b >> 4 == 4 and (b & 0xF) >= 5 and n >= (b & 0xF) << 2


def decrement_ttl(buf: bytearray | memoryview, off: int = 0) -> bool:
    """Decrement the TTL of the IPv4 header at ``buf[off:]`` in place, patching its checksum.

    Returns False, leaving the packet untouched, when the TTL is 0 or 1 (it would reach 0): the
    caller drops the packet. The checksum update is RFC 1624's incremental one (the 16-bit word
    holding the TTL drops by 0x0100, so the checksum rises by 0x0100 with end-around carry),
    exactly as flannel's C computes it on amd64. ``buf`` must be writable and hold the header.
    """
    i = off + 8
    ttl = buf[i]
    if ttl <= 1:
        return False
    buf[i] = ttl - 1
    c = (buf[off + 10] << 8 | buf[off + 11]) + 0x100
    if c > 0xFFFF:
        c -= 0xFFFF  # end-around carry: drop bit 16, add 1
    elif c == 0xFFFF:
        c = 0  # flannel's carry test (check >= htons(0xFEFF) on little-endian) yields 0 here
    buf[off + 10] = c >> 8
    buf[off + 11] = c & 0xFF
    return True


def checksum(data: Buffer) -> int:
    """Internet checksum (RFC 1071) of ``data``; an odd length is padded with a zero byte.

    The one Python copy (the compiled pump's is ``backend/_csum.h``). A buffer that already carries
    a correct checksum sums to 0. Computed with one big-int reduction: 2**16 is 1 modulo 0xFFFF,
    so the one's-complement sum of the 16-bit words is the whole buffer read as an integer, modulo
    0xFFFF (with 0xFFFF standing for a non-zero 0).
    """
    raw = bytes(data)
    if len(raw) & 1:
        raw += b"\x00"
    v = int.from_bytes(raw, "big")
    if v == 0:
        return 0xFFFF
    s = v % 0xFFFF
    return 0xFFFF - s if s else 0


def _unicast_host(addr: int) -> bool:
    """False for addresses that do not name one host (RFC 1122 3.2.2 / 3.2.1.3)."""
    top = addr >> 24
    return top != 0 and top != 127 and addr & _MULTICAST_MASK != _MULTICAST_NET and addr != _BROADCAST


def icmp_net_unreachable(offender: Buffer, src_ip: int, n: int | None = None) -> bytes | None:
    """ICMP Destination Unreachable / Net Unreachable about ``offender``, or None.

    ``offender`` is the packet that found no route (its first ``n`` bytes, default all of it);
    ``src_ip`` is our flannel0 address (the lease subnet's network address) as a host-order int.
    The result is a complete IPv4 packet from ``src_ip`` to the offender's source, TTL 8, whose
    ICMP payload is the offender's IP header and the first 8 bytes after it. None when the
    offender is not a valid IPv4 packet, is an ICMP error (flannel: any ICMP), is a non-first
    fragment, or has a source/destination that must not be answered (RFC 1122).
    """
    if n is None:
        n = len(offender)
    if not is_valid_ipv4(offender, n):
        return None
    _, _, _, _, frag, _, proto, _, osrc, odst = _IPV4_HDR.unpack_from(offender, 0)
    if frag & 0x1FFF:
        return None
    ihl = (offender[0] & 0xF) << 2
    if proto == IPPROTO_ICMP and (n <= ihl or offender[ihl] not in _ICMP_QUERY_TYPES):
        return None  # never an ICMP error about an ICMP error (RFC 1122 3.2.2)
    if not _unicast_host(osrc) or odst == _BROADCAST or odst & _MULTICAST_MASK == _MULTICAST_NET:
        return None
    quote = bytes(offender[: min(n, ihl + 8)])
    icmp = bytearray(_ICMP_HDR.pack(ICMP_DEST_UNREACH, ICMP_NET_UNREACH, 0, 0))
    icmp += quote
    icmp[2:4] = checksum(icmp).to_bytes(2, "big")
    total = 20 + len(icmp)
    ip = bytearray(_IPV4_HDR.pack(0x45, 0, total, 0, 0, ICMP_ERROR_TTL, IPPROTO_ICMP, 0, src_ip, osrc))
    ip[10:12] = checksum(ip).to_bytes(2, "big")
    return bytes(ip + icmp)
