"""What the aws-vpc and gce integration tests share: a lease, and the daemon's sequence for one
host of a cloud backend."""

from __future__ import annotations

from ipaddress import IPv4Address as A
from ipaddress import IPv4Network as N

from pyflannel.backend.base_cloud import CloudBackend
from pyflannel.core.lease import Lease, LeaseAttrs, render_lease_attrs


def lease(subnet: str, ip: str) -> Lease:
    return Lease(N(subnet), LeaseAttrs(A(ip)))


async def join(be: CloudBackend, own: Lease, peers: list[Lease]) -> None:
    """The daemon's sequence for one host."""
    await be.prepare()
    assert render_lease_attrs(be.lease_attrs()) == f'{{"PublicIP":"{own.attrs.public_ip}","PublicIPv6":null}}'.encode()
    await be.setup(own)
    await be.apply_peers({le.subnet: le for le in peers})
