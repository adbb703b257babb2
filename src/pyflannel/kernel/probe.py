"""The probes of ``flannelctl doctor`` and flanneld's start-up check: does a peer answer through
the overlay (ICMP echo to its flannel device's address), on the underlay (echo to its public IP),
and does a UDP datagram sent through the overlay arrive intact (a closed port on the peer answers
ICMP port-unreachable only after its kernel has verified the datagram's checksum, so silence while
echo passes means the checksum was wrong: the VXLAN checksum-offload fault). Plus the device's
``tx-checksum-ip-generic`` offload (ethtool's ioctl, through pyroute2), read and turned off.
Nothing here changes the kernel except ``set_tx_checksum``."""

from __future__ import annotations

import ipaddress
import socket
import subprocess

from ..core.errors import KernelError

PROBE_PORT = 33434  # traceroute's first port: nothing listens there
TX_CSUM = "tx-checksum-ip-generic"


def echo(addr: ipaddress.IPv4Address, count: int = 3, wait: float = 1.0) -> bool:
    """At least one ICMP echo reply from ``addr`` (``ping``; the replies of ``count`` tries)."""
    try:
        run = subprocess.run(["ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", f"{wait:g}", str(addr)],
                             capture_output=True, timeout=count * 0.2 + wait + 5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return run.returncode == 0


def udp_arrives(addr: ipaddress.IPv4Address, tries: int = 4, wait: float = 0.5) -> bool:
    """A UDP datagram to a closed port of ``addr`` is answered with port-unreachable (the peer's
    kernel accepted its checksum). False: no answer in ``tries`` x ``wait`` seconds."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(wait)
        try:
            sock.connect((str(addr), PROBE_PORT))
        except OSError:
            return False
        for _ in range(tries):
            try:
                sock.send(b"pyflannel checksum probe: nothing listens here")
                sock.recv(64)
                return True  # something listens after all: the datagram arrived
            except ConnectionRefusedError:
                return True
            except (TimeoutError, OSError):
                continue
    return False


def tx_checksum(dev: str) -> bool | None:
    """Whether ``dev`` offloads its checksums (``ethtool -k DEV``'s tx-checksum-ip-generic); None
    when the device or the ioctl is not there."""
    from pyroute2.ethtool import Ethtool

    try:
        with Ethtool() as eth:
            feature = eth.get_features(dev).features.get(TX_CSUM)
    except Exception:  # pyroute2 raises several kinds for a missing device
        return None
    return None if feature is None else bool(feature.enable)


def set_tx_checksum(dev: str, on: bool) -> None:
    """``ethtool -K DEV tx-checksum-ip-generic on|off``."""
    from pyroute2.ethtool import Ethtool

    try:
        with Ethtool() as eth:
            features = eth.get_features(dev)
            features.features[TX_CSUM].enable = on
            eth.set_features(dev, features)
    except Exception as err:
        raise KernelError(f"cannot turn {TX_CSUM} {'on' if on else 'off'} on {dev}: {err}; "
                          f"`ethtool -K {dev} {TX_CSUM} {'on' if on else 'off'}` does the same") from err
