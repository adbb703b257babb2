"""The start-up steps that differ in kube mode (``-kube-subnet-mgr``), for the Conductor: the
network config is a file (the ConfigMap's net-conf.json) and the VTEP MACs come back from our
node's ``backend-data`` and ``backend-v6-data`` annotations, so that a restart with a new device
keeps the MACs the peers know.
"""

from __future__ import annotations

import logging

from .backend import get_backend
from .core import kubenode
from .core.config import NetworkConfig, parse_config
from .core.errors import ConfigError, LocalConfigError, StoreUnavailable
from .store.kube import KubeRegistry

log = logging.getLogger("flanneld")


async def read_config(registry: KubeRegistry) -> NetworkConfig:
    """The network config from ``-net-config-path``; a missing or invalid file ends flanneld
    with one line (Go flannel exits too: the DaemonSet restarts it once the ConfigMap is right)."""
    path = registry.config_key
    data = await registry.get_config()
    if data is None:
        raise LocalConfigError(f"network config {path} not found: mount the kube-flannel-cfg ConfigMap's "
                               "net-conf.json there, or pass -net-config-path=FILE")
    try:
        config = parse_config(data)
        # as in etcd mode (Conductor.wait_for_config): a bad Backend is a config error, and what it
        # ignores (unknown keys, IPv6 it does not carry) is said here, once
        for warning in get_backend(config.backend_type).check_config(config):
            log.warning(warning)
        return config
    except ConfigError as err:
        raise LocalConfigError(f"invalid network config {path}: {err}; fix net-conf.json in the ConfigMap") from err


async def stored_macs(registry: KubeRegistry) -> tuple[str, str]:
    """The VTEP MACs (IPv4's, IPv6's) our node's annotations name ("" if none or the API server
    cannot say), as Go's GetStoredMacAddresses."""
    try:
        node = await registry.get_node()
    except StoreUnavailable as err:
        log.warning("cannot read our node's annotations for the previous VTEP MAC (%s); a new device gets a new "
                    "MAC", err)
        return "", ""
    if node is None:
        return "", ""
    mac, mac6 = kubenode.stored_mac(node, registry.prefix), kubenode.stored_mac(node, registry.prefix, v6=True)
    if mac or mac6:
        log.info("VTEP MAC from node %s's annotations: %s%s", registry.node, mac or "-",
                 f" (IPv6: {mac6})" if mac6 else "")
    return mac, mac6
