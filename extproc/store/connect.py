"""The redis-py client for each form of `store.url` (config/store_url.py has the forms).

One node: `redis.asyncio.Redis`; a Cluster: `RedisCluster`, seeded with every listed
node; Sentinel: the primary `Sentinel.master_for` finds, again after a failover.
Credentials in the URL are the data nodes' (sentinels are asked without; most run
without a password); TLS (`store.tls`) applies to both. Never logs; no message shows the URL.
"""

from __future__ import annotations

from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import AuthenticationError, RedisClusterException, RedisError, ResponseError
from redis.maint_notifications import MaintNotificationsConfig

from extproc.config.settings import StoreTls
from extproc.config.store_url import parse

Client = aioredis.Redis | RedisCluster


def connect(url: str, tls: StoreTls, **options: Any) -> Client:
    """A client for `url` (raises StoreUrlError); `options` are redis-py's connection
    settings (pool size, timeouts), the same for every topology."""
    parsed = parse(url)
    secure = _tls_options(tls) if parsed.tls else {}
    # No CLIENT MAINT_NOTIFICATIONS handshake on each new connection: Valkey has none,
    # and under load redis-py then used a connection its timed-out handshake had closed.
    options = {
        "maint_notifications_config": MaintNotificationsConfig(enabled=False),
        # A call fails fast (then `store.on_error`), also when a Cluster's seeds are all
        # unreachable; redis-py's default tries ten times with backoff.
        "retry": Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.1), 2),
        **options,
    }
    if parsed.topology == "cluster":
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in parsed.nodes],
            username=parsed.username,
            password=parsed.password,
            ssl=parsed.tls,
            **secure,
            **options,
        )
    if parsed.topology == "sentinel":
        secure = {**secure, "ssl": True} if parsed.tls else {}
        auth = {"username": parsed.username, "password": parsed.password}
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            parsed.nodes, sentinel_kwargs={**secure, **_sentinel_options(options)}, **auth, **secure
        )
        return cast("aioredis.Redis", sentinel.master_for(parsed.service, **options))
    return aioredis.Redis.from_url(parsed.single_url, **secure, **options)


async def close(client: Client) -> None:
    """Close `client`, and for Sentinel the connections to the sentinels it asked."""
    await client.aclose()
    manager = getattr(getattr(client, "connection_pool", None), "sentinel_manager", None)
    for sentinel in getattr(manager, "sentinels", ()):
        await sentinel.aclose()


def _tls_options(tls: StoreTls) -> dict[str, Any]:
    return {
        "ssl_ca_certs": tls.ca_file,
        "ssl_certfile": tls.cert_file,
        "ssl_keyfile": tls.key_file,
        "ssl_cert_reqs": "required" if tls.verify else "none",
        "ssl_check_hostname": tls.verify,
    }


def _sentinel_options(options: dict[str, Any]) -> dict[str, Any]:
    """Sentinels are asked with the same timeouts and retries (a dead sentinel never
    stalls a call)."""
    wanted = ("socket_timeout", "socket_connect_timeout", "retry")
    return {k: v for k, v in options.items() if k in wanted}


async def unusable(url: str, tls: StoreTls, timeout_s: float) -> str | None:
    """Why the store at `url` can never be used, or None when it works or may work later.

    Never: a URL of no form above, a refused password, a database the server does not
    have. A refused connection or a timeout may heal (Redis starting after us, a
    failover under way): `store.on_error` handles those per request. The reason never
    shows the URL, which may carry a password.
    """
    try:
        client = connect(url, tls, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    except ValueError as exc:
        return f"store.url is not a store URL llmux takes ({exc})"
    try:
        await client.ping()
    except (AuthenticationError, ResponseError) as exc:
        return f"the store refused the connection of store.url: {exc}"
    except (RedisError, RedisClusterException):
        return None
    finally:
        await close(client)
    return None
