"""Opening the TUN device (flannel0): IFF_TUN | IFF_NO_PI, non-persistent, so it vanishes with us."""

from __future__ import annotations

import fcntl
import os
import struct

from ..core.errors import LocalConfigError

TUNSETIFF = 0x400454CA
TUNSETTXFILTER = 0x400454D1
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


def open_tun(name: str = "flannel%d") -> tuple[int, str]:
    """Open a TUN device; returns (fd, the name the kernel gave it). The fd is non-blocking."""
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        raise LocalConfigError(f"cannot open /dev/net/tun: {err.strerror} (load the tun module, run as root)") from err
    try:
        ifr = fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError as err:
        os.close(fd)
        raise LocalConfigError(f"cannot create TUN device {name}: {err.strerror}") from err
    return fd, ifr[:16].rstrip(b"\0").decode()
