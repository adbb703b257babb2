"""flanneld's start-up preflight: the cheap checks of ``flannelctl doctor`` (ip_forward,
br_netfilter where a bridge exists, the FORWARD chain) run once and each problem is a warning with
its fix; none stops flanneld (Go's hard exit on br_netfilter broke rootless and Windows users).
On vxlan, once peers are programmed and answer echo, the checksum probe runs once against up to
three of them: when ping passes through the device but UDP does not arrive intact at any,
flanneld turns the device's ``tx-checksum-ip-generic`` off (its own device only) and says so, then
probes again."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable, Mapping

from .core.config import NetworkConfig
from .core.doctor import OK
from .core.errors import KernelError
from .core.lease import Lease
from .kernel import hostcheck, netlink, probe

log = logging.getLogger(__name__)

Peers = Callable[[], Mapping[ipaddress.IPv4Network, Lease]]
PROBED = 3


def host_checks(config: NetworkConfig) -> None:
    """Warn, with the fix, for each cheap check that is not ok."""
    assert config.network is not None
    try:
        names = {link.name for link in netlink.links()}
    except KernelError:
        names = set()
    brnf = hostcheck.br_netfilter([n for n in hostcheck.BRIDGES if n in names])
    for check in (hostcheck.ip_forward(), brnf, hostcheck.forward(config.network, config.enable_nftables)):
        if check is not None and check.level != OK:
            log.warning("preflight: %s: %s; fix: %s", check.name, check.text, check.fix)


def _probe_all(peers: list[Lease]) -> tuple[int, int]:
    """(peers answering echo through the overlay, of those how many got UDP through intact)."""
    echoed = [le for le in peers if probe.echo(le.subnet.network_address)]
    return len(echoed), sum(probe.udp_arrives(le.subnet.network_address) for le in echoed)


def checksum(dev: str, peers: list[Lease]) -> bool:
    """The vxlan checksum probe, and the fix when it fails. False: no peer answered echo yet
    (just started, or the peers are not up): nothing judged, to be tried again."""
    echoed, intact = _probe_all(peers)
    if echoed == 0:
        return False
    if intact == 0:  # once more before acting: a peer that has just come up may not answer yet
        time.sleep(2.0)
        echoed, intact = _probe_all(peers)
        if echoed == 0:
            return False
    if intact > 0:
        log.info("checksum probe: UDP through %s arrives intact at %d of %d peer(s)", dev, intact, echoed)
        return True
    if probe.tx_checksum(dev) is False:
        log.error("checksum probe: ping passes through %s but UDP does not arrive intact at %d peer(s), with %s "
                  "already off: the underlay corrupts it (try `ethtool -K <nic> tx-udp_tnl-csum-segmentation off` "
                  "on the underlay NIC); see `flannelctl doctor`", dev, echoed, probe.TX_CSUM)
        return True
    try:
        probe.set_tx_checksum(dev, False)
    except KernelError as err:
        log.error("checksum probe: ping passes through %s but UDP does not arrive intact; %s", dev, err)
        return True
    log.warning("checksum probe: ping passes through %s but UDP does not arrive intact at %d peer(s): the known vxlan "
                "checksum-offload fault; turned %s off on %s (this device only; `ethtool -K %s %s on` undoes it)",
                dev, echoed, probe.TX_CSUM, dev, dev, probe.TX_CSUM)
    echoed, intact = _probe_all(peers)
    if echoed and not intact:
        log.error("checksum probe: still no UDP intact through %s with %s off: the underlay corrupts it (try "
                  "`ethtool -K <nic> tx-udp_tnl-csum-segmentation off` on the underlay NIC)", dev, probe.TX_CSUM)
    else:
        log.info("checksum probe: UDP through %s arrives intact now", dev)
    return True


async def run(config: NetworkConfig, dev: str | None, own: ipaddress.IPv4Network, peers: Peers,
              wait_s: float = 300.0) -> None:
    """Never raises: a preflight that fails is a warning, flanneld runs on."""
    try:
        await _run(config, dev, own, peers, wait_s)
    except Exception as err:  # a check must never stop flanneld
        log.warning("preflight stopped early: %s (flanneld runs on; `flannelctl doctor` checks the same)", err)


async def _run(config: NetworkConfig, dev: str | None, own: ipaddress.IPv4Network, peers: Peers,
               wait_s: float) -> None:
    await asyncio.to_thread(host_checks, config)
    if config.backend_type != "vxlan" or dev is None or config.backend_option("DirectRouting", False):
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while loop.time() < deadline:  # the first peers, routed and answering echo
        chosen = [le for sn, le in sorted(peers().items()) if sn != own][:PROBED]
        routed = bool(chosen) and await asyncio.to_thread(_routed, dev, chosen)
        if routed and await asyncio.to_thread(checksum, dev, chosen):
            return
        await asyncio.sleep(2.0)
    log.info("checksum probe on %s: no peer answered echo within %gs; not probed (`flannelctl doctor` probes on "
             "demand)", dev, wait_s)


def _routed(dev: str, peers: list[Lease]) -> bool:
    try:
        link = netlink.link_by_name(dev)
        return link is not None and all(netlink.route_get(le.subnet.network_address)[0] == link.index
                                        for le in peers)
    except KernelError:
        return False
