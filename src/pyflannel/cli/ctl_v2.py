"""``flannelctl config migrate-v2``: copy a network config (and any leases) written to etcd's v2
store, which flanneld does not read, into the v3 store, which it does. The v2 keys are left as
they are; nothing in v3 is overwritten (a different v3 config is refused without ``--force``, a
lease already in v3 is kept)."""

from __future__ import annotations

from ..backend import get_backend
from ..core.config import parse_config
from ..core.errors import ConfigError, FlannelError, StoreDataError
from ..core.lease import parse_lease_attrs, parse_subnet_key
from ..store.etcd import EtcdRegistry
from ..store.etcd_v2 import v2_config, v2_leases


async def migrate_v2(registry: EtcdRegistry, force: bool = False) -> int:
    key = registry.config_key
    data = await v2_config(registry.options, key)
    if data is None:
        raise FlannelError(f"no network config at {key} in etcd's v2 store on {registry.endpoints} (or its v2 API "
                           "is off): nothing to migrate; see `flannelctl config get` for the v3 store")
    try:
        cfg = parse_config(data)
        get_backend(cfg.backend_type).check_config(cfg)
    except ConfigError as err:
        raise FlannelError(f"the v2 config at {key} is invalid, not copied: {err}; fix it, or write a good one "
                           "with `flannelctl config set FILE`") from err
    current = await registry.get_config()
    if current is not None and current != data and not force:
        raise FlannelError(f"{key} in the v3 store already holds a different config: not overwritten (compare "
                           "`flannelctl config get`; --force to replace it with the v2 one)")
    if current != data:
        await registry.put_config(data)
    copied, kept, skipped = 0, 0, []
    for node in await v2_leases(registry.options, registry.subnets_prefix):
        try:
            subnet, _ = parse_subnet_key(node.key.rsplit("/", 1)[-1])
            attrs = parse_lease_attrs(node.value)
        except StoreDataError as err:
            skipped.append(f"{node.key} ({err})")
            continue
        if node.ttl is not None and node.ttl <= 0:
            continue
        if await registry.create_lease(subnet, attrs, node.ttl) is None:
            kept += 1
        else:
            copied += 1
    print(f"copied {key} from etcd's v2 store to v3: network {cfg.network}, backend {cfg.backend_type}"
          + ("" if current != data else " (v3 already held the same config)")
          + f"; leases: {copied} copied with their remaining TTL, {kept} already in v3 kept")
    for what in skipped:
        print(f"skipped {what}")
    print("the v2 keys are left as they were (delete them with ETCDCTL_API=2 etcdctl rm once no v2 reader is left)")
    return 0
