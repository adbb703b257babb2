"""What the aws-vpc and gce integration tests share: a lease, and one host of a cloud backend
driven as the daemon drives it (prepare, the converger started with our lease, then each lease
event as a peer table followed by one converge run)."""

from __future__ import annotations

from ipaddress import IPv4Address as A
from ipaddress import IPv4Network as N

from pyflannel.backend.base_cloud import CloudBackend
from pyflannel.converger import Converger
from pyflannel.core.lease import Lease, LeaseAttrs, render_lease_attrs


def lease(subnet: str, ip: str) -> Lease:
    return Lease(N(subnet), LeaseAttrs(A(ip)))


class CloudHost:
    def __init__(self, be: CloudBackend, own: Lease) -> None:
        self.be, self.own = be, own
        self.conv = Converger(be)  # type: ignore[arg-type]

    async def start(self) -> None:
        """prepare (metadata, checks), the lease's attributes, then our route (the converger's start)."""
        attrs = await self.be.prepare(None)
        assert render_lease_attrs(attrs) == f'{{"PublicIP":"{self.own.attrs.public_ip}","PublicIPv6":null}}'.encode()
        await self.conv.start(self.own, await self.be.start(self.own))

    async def peers(self, peers: list[Lease]) -> None:
        """A lease event: the table now holds ``peers`` (and us); one converge run."""
        self.conv.mark_dirty({self.own.subnet: self.own, **{le.subnet: le for le in peers}})
        await self.conv.converge_once()

    async def timer(self) -> None:
        """The full-check timer's pass."""
        await self.conv.full_check()


async def join(be: CloudBackend, own: Lease, peers: list[Lease]) -> CloudHost:
    """The daemon's sequence for one host: start, then the first lease snapshot."""
    host = CloudHost(be, own)
    await host.start()
    await host.peers(peers)
    return host
