"""The lab's capture decoder, and sd_notify against a real unix datagram socket."""

from __future__ import annotations

import socket
import struct

import pytest

from pyflannel.core.packet import checksum
from pyflannel.lab.pcap import DecodeError, describe_flannel_udp, first_packet
from pyflannel.systemd import sd_notify


def _ipv4(src: str, dst: str, proto: int, payload: bytes, ttl: int = 64) -> bytes:
    hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, ttl, proto, 0,
                                socket.inet_aton(src), socket.inet_aton(dst)))
    hdr[10:12] = checksum(hdr).to_bytes(2, "big")
    return bytes(hdr) + payload


def test_decodes_the_articles_capture() -> None:
    inner = _ipv4("10.0.53.2", "10.0.80.2", 1, bytes([8, 0, 0, 0, 0x12, 0x34, 0, 1]) + bytes(56), ttl=62)
    udp = struct.pack("!HHHH", 8285, 8285, 8 + len(inner), 0) + inner
    frame = bytes(6) + bytes.fromhex("020000000001") + b"\x08\x00" + _ipv4("198.18.0.11", "198.18.0.12", 17, udp)
    pcap = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1) + struct.pack("<IIII", 0, 0, len(frame),
                                                                                       len(frame)) + frame
    linktype, got = first_packet(pcap)
    text = "\n".join(describe_flannel_udp(got, linktype))
    assert "Outer IPv4 198.18.0.11 -> 198.18.0.12  proto UDP" in text
    assert "port 8285 -> 8285" in text
    assert "Inner IPv4 10.0.53.2 -> 10.0.80.2  proto ICMP  ttl 62" in text
    assert "echo request code 0  id 4660  seq 1" in text


@pytest.mark.parametrize("data", [b"", b"garbage" * 10, bytes(24)])
def test_decoder_rejects_garbage(data: bytes) -> None:
    with pytest.raises(DecodeError):
        first_packet(data)


def test_sd_notify_sends_ready(tmp_path) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        assert sd_notify("READY=1", {"NOTIFY_SOCKET": path})
        assert sock.recv(100) == b"READY=1"
    assert not sd_notify("READY=1", {})
