"""`store.url`'s forms (a contract, issue #21), parsed; connecting is extproc/store's job.

* `redis://[user:pass@]host[:port][/db]`, `rediss://…` (TLS), `unix://path`: one node;
* `redis+cluster://[user:pass@]host:port[,host:port…]`, `rediss+cluster://…`: a Redis or
  Valkey Cluster; every listed node is a seed, the client learns the others;
* `redis+sentinel://[user:pass@]host:port[,host:port…]/service_name` (`rediss+sentinel`
  for TLS): the primary Sentinel names `service_name`, found again after a failover.

Pure: no I/O. No message shows the URL (it may carry a password).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qs, unquote, urlsplit

Topology = Literal["single", "cluster", "sentinel"]

_SCHEMES: dict[str, tuple[Topology, bool]] = {
    "redis": ("single", False),
    "rediss": ("single", True),
    "unix": ("single", False),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
}


@dataclass(frozen=True)
class StoreUrl:
    """A parsed `store.url`."""

    topology: Topology
    tls: bool
    nodes: list[tuple[str, int]] = field(default_factory=list)  # seeds or sentinels
    username: str | None = None
    password: str | None = None
    db: int = 0
    service: str = ""  # sentinel's name of the primary
    single_url: str = ""  # redis:// / rediss:// / unix:// as redis-py's from_url takes it


class StoreUrlError(ValueError):
    """`store.url` is not one of the forms above (the message never shows the URL)."""


def parse(url: str) -> StoreUrl:
    parts = urlsplit(url)
    if parts.scheme not in _SCHEMES:
        raise StoreUrlError(
            "scheme must be redis://, rediss:// or unix:// (one node), redis+cluster:// or "
            f"rediss+cluster:// (a Cluster), redis+sentinel:// (Sentinel), not "
            f"{parts.scheme or 'none'!r}"
        )
    topology, tls = _SCHEMES[parts.scheme]
    if topology == "single":
        return _parse_single(url, parts.scheme, tls)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    nodes = [_host_port(item, parts.scheme) for item in hosts.split(",")]
    service = parts.path.strip("/")
    if topology == "sentinel" and not service:
        raise StoreUrlError("a sentinel URL names its service: redis+sentinel://HOST:PORT/SERVICE")
    if topology == "cluster" and parts.path.strip("/") not in ("", "0"):
        raise StoreUrlError("a cluster has only database 0 (redis+cluster://HOST:PORT)")
    return StoreUrl(
        topology,
        tls,
        nodes,
        unquote(username) or None,
        unquote(password) if userinfo and ":" in userinfo else None,
        service=unquote(service) if topology == "sentinel" else "",
    )


def _parse_single(url: str, scheme: str, tls: bool) -> StoreUrl:
    parts = urlsplit(url)
    if scheme == "unix":
        if not parts.path:
            raise StoreUrlError("unix:// needs a socket path")
        return StoreUrl("single", False, single_url=url)
    host = _host_port(parts.netloc.rpartition("@")[2], scheme)
    db = parts.path.strip("/") or parse_qs(parts.query).get("db", ["0"])[0]
    if not db.isdigit():
        raise StoreUrlError(f"the database must be a number (redis://host:port/0), not {db!r}")
    return StoreUrl("single", tls, [host], db=int(db), single_url=url)


def _host_port(item: str, scheme: str) -> tuple[str, int]:
    host, colon, port = item.strip().rpartition(":")
    if not colon:
        host, port = item.strip(), "6379"
    host = host.strip("[]")  # an IPv6 literal
    if not host:
        raise StoreUrlError(f"a host is needed ({scheme}://HOST[:PORT])")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise StoreUrlError("the port must be a number from 1 to 65535")
    return host, int(port)
