"""Private Redis servers for the tests: standalone, TLS, ACL, Sentinel, Cluster.

Every server runs Debian's ``redis-server`` on a free loopback port with its
own folder, no persistence (``save ""``, ``appendonly no``), and is stopped
by the harness; the machine's own Redis is never used. ``stop()`` and
``restart()`` (same port, same socket) let tests play an outage.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import redis
from redis.cluster import ClusterNode, RedisCluster

from tests.harness.proc import Process, free_port, wait_for_port, wait_until

__all__ = [
    "ACL_RULES",
    "RedisCluster3",
    "RedisSentinel",
    "RedisServer",
    "TLSFiles",
    "make_tls_files",
]

#: The ACL docs/redis.md recommends for the milter's user: its keys only,
#: data commands and scripts, nothing dangerous (no KEYS, FLUSHALL, CONFIG...).
ACL_RULES = (
    "~fwdmilter:* resetchannels -@all"
    " +@read +@write +@scripting +@transaction +@connection -@dangerous"
)


@dataclass(frozen=True, slots=True)
class TLSFiles:
    """A private CA and the server's and a client's certificates, as PEM files."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=30)


def make_tls_files(folder: Path) -> TLSFiles:
    """A CA, a server certificate for 127.0.0.1 and localhost, and a client
    certificate, made with the openssl command (EC keys: fast)."""
    folder.mkdir(parents=True, exist_ok=True)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    ca, ca_key = folder / "ca.pem", folder / "ca.key"
    _openssl(
        "req",
        "-x509",
        *ec,
        "-keyout",
        ca_key,
        "-out",
        ca,
        "-days",
        "2",
        "-subj",
        "/CN=fwdmilter test CA",
    )
    files = {}
    for who, san in (("server", "IP:127.0.0.1,DNS:localhost"), ("client", "DNS:client")):
        key, csr, cert = folder / f"{who}.key", folder / f"{who}.csr", folder / f"{who}.pem"
        _openssl(
            "req",
            "-new",
            *ec,
            "-keyout",
            key,
            "-out",
            csr,
            "-subj",
            f"/CN=fwdmilter test {who}",
            "-addext",
            f"subjectAltName={san}",
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            csr,
            "-CA",
            ca,
            "-CAkey",
            ca_key,
            "-CAcreateserial",
            "-out",
            cert,
            "-days",
            "2",
            "-copy_extensions",
            "copy",
        )
        files[who] = (cert, key)
    for path in folder.iterdir():
        path.chmod(0o644)  # readable by an unprivileged test process too
    return TLSFiles(ca, *files["server"], *files["client"])


class RedisServer:
    """One redis-server on a free 127.0.0.1 port in its own folder.

    ``unix_socket``: also listen on ``folder/redis.sock``. ``acl_user``:
    (name, password) of a user with :data:`ACL_RULES`; the default user is
    then off and :attr:`admin` (password ``admin-secret``) does everything.
    ``tls``: TLS only (the port speaks TLS, clients need a certificate).
    """

    def __init__(
        self,
        folder: Path,
        *,
        unix_socket: bool = False,
        acl_user: tuple[str, str] | None = None,
        tls: bool = False,
        extra: Sequence[str] = (),
    ) -> None:
        self.port = free_port()
        self.folder = folder / f"redis-{self.port}"
        self.folder.mkdir(parents=True)
        self.unix_path = self.folder / "redis.sock" if unix_socket else None
        self.acl_user = acl_user
        self.tls = make_tls_files(self.folder / "tls") if tls else None
        self.conf = self.folder / "redis.conf"
        self.conf.write_text("\n".join(self._config(extra)) + "\n")
        self.proc: Process | None = None
        self.start()

    def _config(self, extra: Sequence[str]) -> list[str]:
        lines = [
            "bind 127.0.0.1",
            f"dir {self.folder}",
            'save ""',
            "appendonly no",
            "daemonize no",
            "loglevel notice",
            f"logfile {self.folder / 'redis.log'}",
            "databases 4",
        ]
        if self.tls:
            lines += [
                "port 0",
                f"tls-port {self.port}",
                f"tls-cert-file {self.tls.server_cert}",
                f"tls-key-file {self.tls.server_key}",
                f"tls-ca-cert-file {self.tls.ca}",
                "tls-auth-clients yes",
            ]
        else:
            lines.append(f"port {self.port}")
        if self.unix_path:
            lines += [f"unixsocket {self.unix_path}", "unixsocketperm 700"]
        if self.acl_user:
            name, password = self.acl_user
            lines += [
                "user default off",
                "user admin on >admin-secret ~* &* +@all",
                f"user {name} on >{password} {ACL_RULES}",
            ]
        return [*lines, *extra]

    # -- life cycle ------------------------------------------------------------

    def start(self) -> None:
        self.proc = Process(["redis-server", str(self.conf)], self.folder / "stdout.log")
        try:
            wait_for_port(self.port, timeout=15)
            wait_until(self._answers, 15, f"redis on {self.port} answers PING")
        except TimeoutError:
            self.stop()
            raise

    def _answers(self) -> bool:
        try:
            with self.admin() as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    def restart(self) -> None:
        """Stop and start on the same port (and socket); the data is gone."""
        self.stop()
        self.start()

    # -- how to reach it -------------------------------------------------------

    @property
    def url(self) -> str:
        """The URL of the server (no credentials: pair with a password file)."""
        scheme = "rediss" if self.tls else "redis"
        user = f"{self.acl_user[0]}@" if self.acl_user else ""
        return f"{scheme}://{user}127.0.0.1:{self.port}/0"

    @property
    def unix_url(self) -> str:
        if self.unix_path is None:
            raise ValueError("this server has no unix socket")
        return f"unix://{self.unix_path}?db=0"

    def admin(self) -> redis.Redis:
        """A client that may do anything (for tests' own checks)."""
        kwargs: dict[str, object] = {"decode_responses": True, "socket_timeout": 5}
        if self.acl_user:
            kwargs.update(username="admin", password="admin-secret")
        if self.tls:
            kwargs.update(
                ssl=True,
                ssl_ca_certs=str(self.tls.ca),
                ssl_certfile=str(self.tls.client_cert),
                ssl_keyfile=str(self.tls.client_key),
            )
        return redis.Redis(host="127.0.0.1", port=self.port, **kwargs)  # type: ignore[arg-type]

    def cli_args(self) -> list[str]:
        """redis-cli's arguments to reach this server as admin."""
        args = ["redis-cli", "-h", "127.0.0.1", "-p", str(self.port)]
        if self.acl_user:
            args += ["--user", "admin", "--pass", "admin-secret", "--no-auth-warning"]
        if self.tls:
            args += [
                "--tls",
                "--cacert",
                str(self.tls.ca),
                "--cert",
                str(self.tls.client_cert),
                "--key",
                str(self.tls.client_key),
            ]
        return args

    def cli(self, *args: str) -> str:
        """Run redis-cli against this server; its output."""
        done = subprocess.run(
            [*self.cli_args(), *args], check=True, capture_output=True, text=True, timeout=30
        )
        return done.stdout


class RedisSentinel:
    """A master and one Sentinel watching it (quorum 1), named ``fwdmaster``."""

    master_name = "fwdmaster"

    def __init__(self, folder: Path) -> None:
        self.master = RedisServer(folder)
        self.port = free_port()
        self.folder = folder / f"sentinel-{self.port}"
        self.folder.mkdir(parents=True)
        conf = self.folder / "sentinel.conf"  # Sentinel rewrites it: its own file
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.folder}\n"
            f"logfile {self.folder / 'sentinel.log'}\n"
            f"sentinel monitor {self.master_name} 127.0.0.1 {self.master.port} 1\n"
            f"sentinel down-after-milliseconds {self.master_name} 5000\n"
        )
        self.proc = Process(["redis-server", str(conf), "--sentinel"], self.folder / "stdout.log")
        try:
            wait_for_port(self.port)
            wait_until(self._knows_master, 15, "sentinel knows the master")
        except TimeoutError:
            self.stop()
            raise

    def _knows_master(self) -> bool:
        try:
            with redis.Redis(port=self.port, socket_timeout=2, decode_responses=True) as s:
                addr = s.execute_command("SENTINEL", "get-master-addr-by-name", self.master_name)
        except redis.RedisError:
            return False
        return bool(addr) and int(addr[1]) == self.master.port

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.port}/{self.master_name}/0"

    def stop(self) -> None:
        self.proc.stop()
        self.master.stop()


class RedisCluster3:
    """Three masters, no replicas, all 16384 slots covered."""

    def __init__(self, folder: Path) -> None:
        self.nodes: list[RedisServer] = []
        try:
            for _ in range(3):
                # The cluster bus needs a second port; give it a free one
                # rather than trusting port + 10000.
                extra = [
                    "cluster-enabled yes",
                    "cluster-config-file nodes.conf",
                    "cluster-node-timeout 5000",
                    f"cluster-port {free_port()}",
                ]
                self.nodes.append(RedisServer(folder, extra=extra))
            subprocess.run(
                [
                    "redis-cli",
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{n.port}" for n in self.nodes),
                    "--cluster-yes",
                ],
                check=True,
                capture_output=True,
                timeout=60,
            )
            wait_until(self._ready, 30, "cluster_state:ok on every node")
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        for node in self.nodes:
            with node.admin() as client:
                if client.cluster("info").get("cluster_state") != "ok":
                    return False
        return True

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port},127.0.0.1:{self.nodes[1].port}"

    def admin(self) -> RedisCluster:
        return RedisCluster(
            startup_nodes=[ClusterNode("127.0.0.1", self.nodes[0].port)],
            decode_responses=True,
        )

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
