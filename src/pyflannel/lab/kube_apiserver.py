"""A real kube-apiserver for the kube-mode tests and the lab's --kube, backed by Debian's etcd.

The binary is built by ``scripts/kubeapiserver.sh`` into the repository's git-ignored
``.cache/kubeapiserver`` (``binary()``; ``missing()`` says why there is none). ``KubeApiServer``
generates a PKI with openssl (a CA, the server's certificate, the service-account signing key and
client certificates), starts etcd and the API server in one network namespace with client
certificate and token auth and RBAC on, and writes kubeconfig files for its clients:

    admin.kubeconfig     user "lab-admin", group system:masters
    <user>.kubeconfig    ``client(user)``: a user with no rights until a test binds a role to it
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from .etcd_server import EtcdServer, free_port
from .netns import in_ns

VERSION = "v1.36.3"
CACHE = Path(__file__).resolve().parents[3] / ".cache" / "kubeapiserver"
REQUIRE_ENV = "PYFLANNEL_REQUIRE_KUBE_APISERVER"  # "1" (CI): a missing API server fails instead of skipping
SERVICE_RANGE = "10.96.0.0/16"


def binary() -> str | None:
    path = CACHE / "bin" / "kube-apiserver"
    stamp = CACHE / "bin" / "kube-apiserver.version"
    if os.access(path, os.X_OK) and stamp.exists() and stamp.read_text().strip() == VERSION:
        return str(path)
    return None


def missing() -> str:
    try:
        reason = (CACHE / "status").read_text().strip()
    except OSError:
        reason = "it has not been built yet: run `make setup` (needs Go >= 1.26)"
    return f"kube-apiserver {VERSION} is not available: {reason}"


def required() -> bool:
    return os.environ.get(REQUIRE_ENV) == "1"


def _openssl(*args: str, cwd: str) -> None:
    res = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {res.stderr.strip()}")


class Pki:
    """A CA and the certificates signed by it, as files in ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path
        os.makedirs(path, exist_ok=True)
        if not os.path.exists(self.file("ca.crt")):
            _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                     "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=pyflannel-lab-ca", "-days", "3650",
                     cwd=path)
            _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "sa.key", cwd=path)
            _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=path)

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def issue(self, name: str, subject: str, *, sans: tuple[str, ...] = (), client: bool = True) -> tuple[str, str]:
        """A key and a certificate ``name``.crt/.key for ``subject`` (e.g. ``/O=system:masters/CN=admin``)."""
        if not os.path.exists(self.file(f"{name}.crt")):
            ext = [f"extendedKeyUsage={'clientAuth' if client else 'serverAuth'}", "keyUsage=digitalSignature"]
            if sans:
                ext.append("subjectAltName=" + ",".join(sans))
            with open(self.file(f"{name}.ext"), "w") as f:
                f.write("\n".join(ext) + "\n")
            _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
                     f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=self.path)
            _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                     "-out", f"{name}.crt", "-days", "3650", "-extfile", f"{name}.ext", cwd=self.path)
        return self.file(f"{name}.crt"), self.file(f"{name}.key")


@dataclass
class KubeApiServer:
    """etcd (on 127.0.0.1 inside ``netns``) and kube-apiserver at https://``host``:``port``."""

    state_dir: str
    host: str = "127.0.0.1"
    port: int = 6443
    netns: str | None = None
    etcd: EtcdServer | None = field(default=None, init=False)
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        os.makedirs(self.state_dir, exist_ok=True)
        self.pki = Pki(os.path.join(self.state_dir, "pki"))
        if self.netns is None and self.port == 6443:
            self.port = free_port(self.host)

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def log_path(self) -> str:
        return os.path.join(self.state_dir, "kube-apiserver.log")

    def command(self, bin_path: str, extra: tuple[str, ...] = ()) -> list[str]:
        crt, key = self.pki.issue("apiserver", "/CN=kube-apiserver", client=False,
                                  sans=(f"IP:{self.host}", "IP:127.0.0.1", "IP:10.96.0.1", "DNS:kubernetes",
                                        "DNS:kubernetes.default", "DNS:kubernetes.default.svc", "DNS:localhost"))
        assert self.etcd is not None
        cmd = [bin_path, f"--etcd-servers={self.etcd.endpoint}", f"--bind-address={self.host}",
               f"--advertise-address={self.host}", f"--secure-port={self.port}", f"--tls-cert-file={crt}",
               f"--tls-private-key-file={key}", f"--client-ca-file={self.pki.file('ca.crt')}",
               f"--service-account-key-file={self.pki.file('sa.pub')}",
               f"--service-account-signing-key-file={self.pki.file('sa.key')}",
               "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
               "--authorization-mode=RBAC", f"--service-cluster-ip-range={SERVICE_RANGE}",
               f"--cert-dir={os.path.join(self.state_dir, 'certs')}", "--allow-privileged=true",
               "--profiling=false", "--anonymous-auth=false", "--v=1", *extra]
        return in_ns(self.netns, *cmd) if self.netns else cmd

    def start(self, timeout: float = 90.0) -> None:
        bin_path = binary()
        if bin_path is None:
            raise RuntimeError(missing())
        etcd_host = "127.0.0.1" if self.netns else self.host
        self.etcd = EtcdServer(os.path.join(self.state_dir, "etcd"), host=etcd_host, netns=self.netns,
                               log_path=os.path.join(self.state_dir, "etcd.log"))
        self.etcd.start()
        self.write_kubeconfig("admin", "/O=system:masters/CN=lab-admin")
        self.start_apiserver(timeout)

    def start_apiserver(self, timeout: float = 90.0, extra: tuple[str, ...] = ()) -> None:
        """(Re)start the API server process alone (its etcd keeps running) with ``extra`` flags
        (e.g. ``--watch-cache-sizes=nodes#0``) and wait until ready."""
        bin_path = binary()
        assert bin_path is not None and self.etcd is not None
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(bin_path, extra), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        self.wait_ready(timeout)

    def stop_apiserver(self) -> None:
        """Stop the API server process alone (clients see connection refused); etcd keeps running."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            self.proc = None

    def compact_etcd(self) -> int:
        """Compact the API server's etcd at its current revision (as the API server itself does
        every 5 minutes): a watch from an older resourceVersion then gets 410 Gone. The revision."""
        assert self.etcd is not None
        env = dict(os.environ, ETCDCTL_API="3")
        cmd = [*self.etcd.etcdctl_args(), "endpoint", "status", "-w", "json"]
        out = subprocess.run(in_ns(self.netns, *cmd) if self.netns else cmd, capture_output=True, text=True,
                             env=env, check=True, timeout=20).stdout
        revision = int(json.loads(out)[0]["Status"]["header"]["revision"])
        cmd = [*self.etcd.etcdctl_args(), "compact", str(revision)]
        subprocess.run(in_ns(self.netns, *cmd) if self.netns else cmd, capture_output=True, text=True, env=env,
                       check=True, timeout=20)
        return revision

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"kube-apiserver exited with {self.proc.returncode}; its log {self.log_path} "
                                   f"ends with:\n{self.log_tail()}")
            try:
                if self.request("GET", "/readyz")[0] == 200:
                    return
            except (OSError, subprocess.TimeoutExpired) as err:
                last = str(err)
            time.sleep(0.3)
        raise RuntimeError(f"kube-apiserver not ready at {self.url} within {timeout:g}s ({last}); its log "
                           f"{self.log_path} ends with:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError), open(self.log_path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
        return "(no log)"

    def request(self, method: str, path: str, body: object = None, *, user: str = "admin", token: str = "",
                content_type: str = "application/json") -> tuple[int, dict[str, object]]:
        """One call as ``user`` (a client certificate issued here), or with a bearer ``token``:
        (HTTP status, JSON body). Made with curl inside the server's namespace, so it works from anywhere."""
        auth = (["-H", f"Authorization: Bearer {token}"] if token else
                ["--cert", self.pki.file(f"{user}.crt"), "--key", self.pki.file(f"{user}.key")])
        cmd = ["curl", "-sS", "--max-time", "10", "--cacert", self.pki.file("ca.crt"), *auth, "-X", method,
               "-H", f"Content-Type: {content_type}", "-H", "Accept: application/json", "-w", "\n%{http_code}",
               self.url + path]
        if body is not None:
            cmd += ["--data-binary", "@-"]
        res = subprocess.run(in_ns(self.netns, *cmd) if self.netns else cmd, capture_output=True, check=False,
                             input=None if body is None else json.dumps(body).encode(), timeout=20)
        if res.returncode != 0:
            raise OSError(f"curl {method} {path}: {res.stderr.decode(errors='replace').strip()}")
        raw, _, code = res.stdout.rpartition(b"\n")
        try:
            data = json.loads(raw) if raw.strip().startswith(b"{") else {"text": raw.decode(errors="replace")}
        except ValueError:
            data = {"text": raw.decode(errors="replace")}
        return int(code), data

    def write_kubeconfig(self, user: str, subject: str | None = None) -> str:
        """A kubeconfig for a client certificate ``user`` (subject ``/CN=<user>`` unless given)."""
        crt, key = self.pki.issue(user, subject or f"/CN={user}")
        path = os.path.join(self.state_dir, f"{user}.kubeconfig")
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "lab",
            "clusters": [{"name": "lab", "cluster": {"server": self.url,
                                                     "certificate-authority": self.pki.file("ca.crt")}}],
            "users": [{"name": user, "user": {"client-certificate": crt, "client-key": key}}],
            "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": user}}],
        }
        with open(path, "w") as f:
            json.dump(config, f, indent=1)  # JSON is YAML
        return path

    def stop(self) -> None:
        self.stop_apiserver()
        if self.etcd is not None:
            self.etcd.stop()
            self.etcd = None
