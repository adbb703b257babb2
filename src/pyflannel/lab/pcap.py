"""Decode one captured flannel datagram, as the article shows it: outer UDP/8285 on the underlay
carrying the container's own IPv4 packet (an ICMP echo). Pure: bytes in, text lines out."""

from __future__ import annotations

import ipaddress
import struct

_ICMP_TYPES = {0: "echo reply", 3: "destination unreachable", 8: "echo request", 11: "time exceeded"}
_PROTOS = {1: "ICMP", 6: "TCP", 17: "UDP"}


class DecodeError(ValueError):
    """The bytes are not a pcap file holding an Ethernet/IPv4 packet."""


def all_packets(pcap: bytes) -> tuple[int, list[bytes]]:
    """(link type, every frame) of a classic pcap file (a cut-off last record is left out)."""
    linktype, _ = first_packet(pcap)
    endian = "<" if pcap[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    frames, off = [], 24
    while off + 16 <= len(pcap):
        incl_len = struct.unpack_from(endian + "I", pcap, off + 8)[0]
        if off + 16 + incl_len > len(pcap):
            break
        frames.append(pcap[off + 16:off + 16 + incl_len])
        off += 16 + incl_len
    return linktype, frames


def first_packet(pcap: bytes) -> tuple[int, bytes]:
    """(link type, frame) of the first record of a classic pcap file."""
    if len(pcap) < 24:
        raise DecodeError("pcap file too short")
    magic = pcap[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise DecodeError("not a pcap file")
    linktype = struct.unpack_from(endian + "I", pcap, 20)[0]
    if len(pcap) < 40:
        raise DecodeError("pcap file holds no packet")
    incl_len = struct.unpack_from(endian + "I", pcap, 32)[0]
    return linktype, pcap[40:40 + incl_len]


def mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def _ip(b: bytes, off: int) -> tuple[str, str, int, int, int, int]:
    if len(b) < off + 20 or b[off] >> 4 != 4:
        raise DecodeError("not an IPv4 packet")
    ihl = (b[off] & 0x0F) * 4
    total, ttl, proto = struct.unpack_from("!H", b, off + 2)[0], b[off + 8], b[off + 9]
    src = str(ipaddress.IPv4Address(b[off + 12:off + 16]))
    dst = str(ipaddress.IPv4Address(b[off + 16:off + 20]))
    return src, dst, proto, ttl, total, off + ihl


def describe_flannel_udp(frame: bytes, linktype: int = 1) -> list[str]:
    """Lines describing an (Ethernet) frame holding IPv4/UDP carrying an inner IPv4 packet, either
    directly (flannel's udp backend) or in a VXLAN header and an inner Ethernet frame."""
    off = 0
    lines = []
    if linktype == 1:
        if len(frame) < 14 or frame[12:14] != b"\x08\x00":
            raise DecodeError("not an Ethernet/IPv4 frame")
        lines.append(f"Ethernet   {mac(frame[6:12])} -> {mac(frame[0:6])}")
        off = 14
    src, dst, proto, ttl, total, off = _ip(frame, off)
    lines.append(f"Outer IPv4 {src} -> {dst}  proto {_PROTOS.get(proto, proto)}  ttl {ttl}  length {total}")
    if proto != 17 or len(frame) < off + 8:
        raise DecodeError("outer packet is not UDP")
    sport, dport, ulen = struct.unpack_from("!HHH", frame, off)
    off += 8
    if len(frame) >= off + 22 and frame[off] & 0x08 and frame[off + 20:off + 22] == b"\x08\x00":
        vni = int.from_bytes(frame[off + 4:off + 7], "big")
        lines.append(f"UDP        port {sport} -> {dport}  length {ulen}  (payload: VXLAN)")
        lines.append(f"VXLAN      vni {vni}  inner Ethernet {mac(frame[off + 14:off + 20])} -> "
                     f"{mac(frame[off + 8:off + 14])}")
        off += 22
    else:
        lines.append(f"UDP        port {sport} -> {dport}  length {ulen}  (payload: the container's packet, "
                     "no flannel header)")
    src, dst, proto, ttl, total, off = _ip(frame, off)
    lines.append(f"Inner IPv4 {src} -> {dst}  proto {_PROTOS.get(proto, proto)}  ttl {ttl}  length {total}")
    if proto == 1 and len(frame) >= off + 8:
        itype, code = frame[off], frame[off + 1]
        ident, seq = struct.unpack_from("!HH", frame, off + 4)
        lines.append(f"ICMP       {_ICMP_TYPES.get(itype, f'type {itype}')} code {code}  id {ident}  seq {seq}")
    return lines
