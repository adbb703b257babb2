"""The lab cluster: an underlay switch, a real etcd, N hosts running flanneld, Docker emulated.

Layout for lab ``NAME`` (default ``pfl``), all inside network namespaces:

    NAME-ul    the underlay: bridge br0, 198.18.0.1/24 (the hosts' default gateway)
    NAME-etcd  etcd at 198.18.0.2:2379
    NAME-hI    host I at 198.18.0.(10+I): flanneld with the article's flags, docker0 configured
               from its own mk-docker-opts output (--bip, --mtu); the hosts in ``go_hosts`` run
               Go flannel's flanneld (lab/goflannel.py) with the same flags instead of ours, and
               those in ``host_command`` the command given there (a packaged flanneld in a chroot)
    NAME-cI    one container behind host I's docker0 (its address: the subnet's .2)

State (logs, subnet.env, etcd data, lab.json) lives in /run/pyflannel-lab/NAME. This module builds
the namespaces, the underlay, etcd (or the API server) and docker0; running flanneld on the hosts
is lab/flanneld_hosts.py (``Lab`` has its methods).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shlex
import shutil
from dataclasses import asdict, dataclass, field

from ..core.subnetenv import parse_subnet_env
from ..instance import lock_path
from . import ipv6, kube_lab
from .etcd_server import EtcdServer
from .flanneld_hosts import PREFIX, FlanneldHosts, Host, venv_tool
from .kube_lab import KubeApi
from .netns import LabError, in_ns, ns_add, ns_delete, ns_kill_all, ns_list, sh, sysctl, veth

STATE_ROOT = "/run/pyflannel-lab"
UNDERLAY = ipaddress.IPv4Network("198.18.0.0/24")
GATEWAY = "198.18.0.1"
ETCD_IP = "198.18.0.2"
ARTICLE_CONFIG = '{ "Network": "10.0.0.0/16" }'
LAB_BACKENDS = ("udp", "vxlan", "host-gw", "wireguard")  # what runs in namespaces on one machine (no cloud API)


@dataclass
class Lab(FlanneldHosts):
    name: str = "pfl"
    hosts_n: int = 3
    backend: str = "udp"
    subnet_max: str = ""  # tests keep real hosts below this, so synthetic leases above never collide
    go_hosts: tuple[int, ...] = ()  # indexes (from 1) of the hosts running Go flannel's flanneld
    host_extra: dict[int, tuple[str, ...]] = field(default_factory=dict)  # index -> flags for that host only
    # index -> the command that runs flanneld on that host instead of ours (the flags follow it)
    host_command: dict[int, tuple[str, ...]] = field(default_factory=dict)
    kube: bool = False  # -kube-subnet-mgr against a real kube-apiserver (kube_lab.py) instead of etcd
    hosts: list[Host] = field(default_factory=list)
    ipv6: str = ""  # "dual" | "only": an IPv6 underlay, a dual-stack or IPv6-only network (lab/ipv6.py)
    etcd_server: EtcdServer | None = field(default=None, repr=False)
    kube_api: KubeApi | None = field(default=None, repr=False)

    # ---- naming and state -------------------------------------------------------------------------
    @property
    def state_dir(self) -> str:
        return os.path.join(STATE_ROOT, self.name)

    @property
    def underlay_ns(self) -> str:
        return f"{self.name}-ul"

    @property
    def etcd_ns(self) -> str:
        return f"{self.name}-etcd"

    @property
    def etcd_endpoint(self) -> str:
        return f"http://{ETCD_IP}:2379"

    def host_dir(self, host: Host) -> str:
        return os.path.join(self.state_dir, f"h{host.index}")

    def subnet_file(self, host: Host) -> str:
        return os.path.join(self.host_dir(host), "subnet.env")

    def log_file(self, host: Host) -> str:
        return os.path.join(self.host_dir(host), "flanneld.log")

    def namespaces(self) -> list[str]:
        prefix = f"{self.name}-"
        return [ns for ns in ns_list() if ns.startswith(prefix)]

    def save(self) -> None:
        with open(os.path.join(self.state_dir, "lab.json"), "w") as f:
            json.dump({"name": self.name, "backend": self.backend, "ipv6": self.ipv6, "kube": self.kube,
                       "hosts": [asdict(h) for h in self.hosts],
                       "host_extra": {str(i): list(v) for i, v in self.host_extra.items()},
                       "host_command": {str(i): list(v) for i, v in self.host_command.items()}}, f, indent=2)

    @classmethod
    def load(cls, name: str) -> Lab:
        path = os.path.join(STATE_ROOT, name, "lab.json")
        with open(path) as f:
            data = json.load(f)
        hosts = [Host(**h) for h in data["hosts"]]
        return cls(name=name, hosts_n=len(hosts), backend=data["backend"], hosts=hosts, ipv6=data.get("ipv6", ""),
                   kube=data.get("kube", False),
                   go_hosts=tuple(h.index for h in hosts if h.go),
                   host_extra={int(i): tuple(v) for i, v in data.get("host_extra", {}).items()},
                   host_command={int(i): tuple(v) for i, v in data.get("host_command", {}).items()})

    # ---- bring up ---------------------------------------------------------------------------------
    def up(self, *, write_config: bool = True, config: str | None = None, wait: float = 30.0,
           extra: tuple[str, ...] = ()) -> None:
        """Build the whole lab; on any failure, tear down what was built and re-raise. Without
        ``write_config`` flanneld is started but left waiting for its config: write it with
        ``put_config`` and call ``finish``. ``extra``: more flanneld flags, on every host."""
        self.down()
        os.makedirs(self.state_dir, exist_ok=True)
        try:
            self._underlay()
            self._kube() if self.kube else self._etcd()
            if write_config:
                self.put_config(config or self._default_config())
            self.hosts = [self._host(i) for i in range(1, self.hosts_n + 1)]
            self.save()
            for host in self.hosts:
                self.start_flanneld(host, extra)
            if write_config:
                self.finish(wait)
        except BaseException:
            self.down()
            raise

    def finish(self, wait: float = 30.0) -> None:
        """Wait for every host's subnet.env, then give each its docker0 and container."""
        for host in self.hosts:
            self.wait_subnet(host, wait)
            self.docker(host)
        self.save()

    def _default_config(self) -> str:
        if self.kube:
            conf = kube_lab.net_conf(self.backend)
            return ipv6.default_config(conf, self.ipv6) if self.ipv6 else conf
        if self.backend == "udp" and not self.subnet_max and not self.ipv6:
            return ARTICLE_CONFIG
        config: dict[str, object] = {"Network": "10.0.0.0/16"}
        if self.subnet_max:
            config["SubnetMax"] = self.subnet_max
        if self.backend != "udp":
            config["Backend"] = {"Type": self.backend}
        return json.dumps(ipv6.config(config, self.ipv6) if self.ipv6 else config)

    def _underlay(self) -> None:
        ns = self.underlay_ns
        ns_add(ns)
        sh(["ip", "-n", ns, "link", "add", "br0", "type", "bridge"])
        sh(["ip", "-n", ns, "addr", "add", f"{GATEWAY}/{UNDERLAY.prefixlen}", "dev", "br0"])
        sh(["ip", "-n", ns, "link", "set", "br0", "up"])
        if self.ipv6:
            ipv6.underlay(ns)

    def _attach(self, ns: str, ip: str, port: str) -> None:
        """Plug ``ns`` into the underlay switch as eth0 with ``ip``; default route via the gateway."""
        veth(ns, "eth0", self.underlay_ns, port)
        sh(["ip", "-n", self.underlay_ns, "link", "set", port, "master", "br0"])
        sh(["ip", "-n", ns, "addr", "add", f"{ip}/{UNDERLAY.prefixlen}", "dev", "eth0"])
        sh(["ip", "-n", ns, "route", "add", "default", "via", GATEWAY])

    def _etcd(self) -> None:
        ns_add(self.etcd_ns)
        self._attach(self.etcd_ns, ETCD_IP, "etcd")
        self.start_etcd()

    def start_etcd(self, host: str = ETCD_IP) -> EtcdServer:
        """(Re)start the lab's etcd on its data dir. ``host="127.0.0.1"`` serves it only inside its own
        namespace: to the hosts' flanneld, etcd is still down (changes "during an outage")."""
        self.etcd_server = EtcdServer(os.path.join(self.state_dir, "etcd", "data"), host=host, netns=self.etcd_ns,
                                      log_path=os.path.join(self.state_dir, "etcd.log"), enable_v2=True)
        self.etcd_server.start()
        return self.etcd_server

    def stop_etcd(self) -> None:
        server = getattr(self, "etcd_server", None)
        if server is not None:
            server.stop()
        self.etcd_server = None

    def etcdctl(self, *args: str, check: bool = True) -> str:
        server = getattr(self, "etcd_server", None)
        endpoint = server.endpoint if server is not None else self.etcd_endpoint
        cmd = in_ns(self.etcd_ns, "etcdctl", "--endpoints", endpoint, *args)
        return sh(cmd, check=check, env={"ETCDCTL_API": "3"}).stdout

    def put_config(self, config: str, prefix: str = PREFIX) -> None:
        if self.kube:  # the ConfigMap's net-conf.json, as a file every host reads
            with open(self.net_conf_path, "w") as f:
                f.write(config)
            return
        self.etcdctl("put", f"{prefix}/config", config)

    @property
    def net_conf_path(self) -> str:
        return os.path.join(self.state_dir, "net-conf.json")

    def _kube(self, nodes: int | None = None) -> None:
        """The API server (and its etcd) in the etcd namespace, and a Node for each of the first
        ``nodes`` hosts (default: every host)."""
        ns_add(self.etcd_ns)
        self._attach(self.etcd_ns, ETCD_IP, "etcd")
        self.kube_api = KubeApi(self.state_dir, ETCD_IP, self.etcd_ns)
        self.kube_api.start()
        for i in range(1, (self.hosts_n if nodes is None else nodes) + 1):
            self.kube_api.create_node(kube_lab.node_name(i), kube_lab.pod_cidrs(i, self.ipv6))

    def _host(self, i: int) -> Host:
        host = Host(i, f"{self.name}-h{i}", f"{self.name}-c{i}", str(UNDERLAY.network_address + 10 + i),
                    go=i in self.go_hosts)
        ns_add(host.ns)
        self._attach(host.ns, host.ip, f"h{i}")
        sysctl(host.ns, "net.ipv4.ip_forward", "1")
        if self.ipv6:
            ipv6.attach(host.ns, i, self.ipv6)
        os.makedirs(self.host_dir(host), exist_ok=True)
        return host

    def docker(self, host: Host) -> None:
        """What `systemctl start docker` does after flanneld in the article: docker0 from
        mk-docker-opts's --bip and --mtu, then one container behind it."""
        opts_file = os.path.join(self.host_dir(host), "docker_opts.env")
        sh([*venv_tool("mk-docker-opts"), "-f", self.subnet_file(host), "-d", opts_file])
        with open(opts_file) as f:
            values = parse_subnet_env(f.read(), source=opts_file)
        host.docker_opts = values["DOCKER_OPTS"].strip()
        opts = dict(o.lstrip("-").split("=", 1) for o in shlex.split(host.docker_opts))
        mtu = opts["mtu"]
        ns, c = host.ns, host.container_ns
        sh(["ip", "-n", ns, "link", "add", "docker0", "type", "bridge"])
        sh(["ip", "-n", ns, "link", "set", "docker0", "up", "mtu", mtu])
        ns_add(c)
        veth(c, "eth0", ns, f"veth{host.index}", mtu=int(mtu))
        sh(["ip", "-n", ns, "link", "set", f"veth{host.index}", "master", "docker0"])
        if "bip" in opts:  # an IPv6-only network's subnet.env names no IPv4 subnet: no --bip
            bip = ipaddress.IPv4Interface(opts["bip"])
            sh(["ip", "-n", ns, "addr", "add", str(bip), "dev", "docker0"])
            host.container_ip = str(bip.ip + 1)
            sh(["ip", "-n", c, "addr", "add", f"{host.container_ip}/{bip.network.prefixlen}", "dev", "eth0"])
            sh(["ip", "-n", c, "route", "add", "default", "via", str(bip.ip)])
        if self.ipv6:
            host.container_ip6 = ipv6.docker(ns, c, self.subnet_file(host))

    # ---- tear down --------------------------------------------------------------------------------
    def down(self) -> None:
        """Remove every namespace of this lab (killing what runs inside), then its state dir."""
        spaces = self.namespaces()
        # flanneld first (so it exits cleanly), etcd and the underlay last
        for ns in sorted(spaces, key=lambda n: (n.endswith("-ul"), n.endswith("-etcd"))):
            ns_kill_all(ns)
        for ns in spaces:
            ns_delete(ns)
        for host in self.hosts:  # every flanneld is gone: their instance locks too
            with contextlib.suppress(OSError):
                os.unlink(lock_path(self.subnet_file(host)))
        if os.path.isdir(self.state_dir):
            shutil.rmtree(self.state_dir, ignore_errors=True)

    # ---- looking at it ----------------------------------------------------------------------------
    def ping(self, src: Host, dst: Host, count: int = 3, timeout: float = 2.0) -> tuple[bool, str]:
        res = sh(in_ns(src.container_ns, "ping", "-n", "-c", str(count), "-i", "0.2", "-W", str(timeout),
                       dst.container_ip), check=False, timeout=count * (timeout + 1) + 5)
        return res.returncode == 0, res.stdout + res.stderr

    def ping6(self, src: Host, dst: Host, count: int = 3, timeout: float = 2.0) -> tuple[bool, str]:
        return ipv6.ping6(src.container_ns, dst.container_ip6, count, timeout)

    def route_table(self, host: Host) -> str:
        res = sh(in_ns(host.ns, "route", "-n"), check=False)
        if res.returncode != 0:
            res = sh(["ip", "-n", host.ns, "route"], check=False)
        return res.stdout

    def status(self) -> list[dict[str, object]]:
        return [
            {"host": h.ns, "ip": h.ip, "subnet": h.subnet, "container": h.container_ip,
             "flanneld": self.flanneld_pid(h), "docker_opts": h.docker_opts}
            | ({"ip6": ipv6.host_ip6(h.index), "container6": h.container_ip6} if self.ipv6 else {})
            for h in self.hosts
        ]


def stop_everything(name: str) -> None:
    """Best-effort teardown by name, also when lab.json is gone."""
    Lab(name=name).down()


__all__ = ["Host", "Lab", "LabError", "ns_delete", "stop_everything"]
