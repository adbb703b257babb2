"""Opening the TUN device (flannel0): IFF_TUN | IFF_NO_PI, non-persistent, so it vanishes with us.

``open_tun_offload`` opens it for the compiled udp pump with TUN offloads: IFF_VNET_HDR (every read
and write starts with a 10-byte ``struct virtio_net_hdr``) and TUNSETOFFLOAD CSUM|TSO4, so the
kernel hands over 64 KiB TCP super-packets and packets with a partial checksum, and takes
coalesced ones. It falls back to the plain device when the kernel refuses any of it.
"""

from __future__ import annotations

import fcntl
import os
import struct

from ..core.errors import LocalConfigError

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
VNET_HDR_LEN = 10  # sizeof(struct virtio_net_hdr)


def _open(name: str, flags: int) -> tuple[int, str]:
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        raise LocalConfigError(f"cannot open /dev/net/tun: {err.strerror} (load the tun module, run as root)") from err
    try:
        ifr = fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), flags))
    except OSError as err:
        os.close(fd)
        raise LocalConfigError(f"cannot create TUN device {name}: {err.strerror}") from err
    return fd, ifr[:16].rstrip(b"\0").decode()


def open_tun(name: str = "flannel%d") -> tuple[int, str]:
    """Open a TUN device; returns (fd, the name the kernel gave it). The fd is non-blocking."""
    return _open(name, IFF_TUN | IFF_NO_PI)


def open_tun_offload(name: str = "flannel%d") -> tuple[int, str, str | None]:
    """Open a TUN device with virtio_net_hdr and TSO4/checksum offloads; returns (fd, name, None),
    or, when the kernel refuses them, the plain device and why: (fd, name, reason)."""
    try:
        fd, got = _open(name, IFF_TUN | IFF_NO_PI | IFF_VNET_HDR)
    except LocalConfigError as err:
        fd, got = open_tun(name)
        return fd, got, f"IFF_VNET_HDR refused: {err}"
    try:
        fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_LEN))
        fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4)
    except OSError as err:
        os.close(fd)  # non-persistent: the device goes with the fd; open it again, plain
        fd, got = open_tun(got)
        return fd, got, f"TUNSETOFFLOAD refused: {err.strerror}"
    return fd, got, None
