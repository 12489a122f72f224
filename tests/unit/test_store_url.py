"""`store.url`'s forms (a contract): what each parses to, and clear refusals that never
show the URL (it may hold a password)."""

from __future__ import annotations

import pytest

from extproc.config.settings import store_url_problems
from extproc.config.store_url import StoreUrl, parse

SECRET = "hunter2"


@pytest.mark.parametrize(
    ("url", "topology", "tls", "nodes"),
    [
        ("redis://h:6380/2", "single", False, [("h", 6380)]),
        ("rediss://:pw@h/0", "single", True, [("h", 6379)]),
        ("redis+cluster://a:7000,b:7001", "cluster", False, [("a", 7000), ("b", 7001)]),
        ("rediss+cluster://u:pw@cfg.example:6379", "cluster", True, [("cfg.example", 6379)]),
        (
            "redis+sentinel://s1:26379,s2:26379/mymaster",
            "sentinel",
            False,
            [("s1", 26379), ("s2", 26379)],
        ),
        ("rediss+sentinel://[::1]:26379/m", "sentinel", True, [("::1", 26379)]),
    ],
)
def test_each_form_parses(url: str, topology: str, tls: bool, nodes: list[tuple[str, int]]) -> None:
    parsed = parse(url)
    assert (parsed.topology, parsed.tls, parsed.nodes) == (topology, tls, nodes)


def test_credentials_and_service_come_from_the_url() -> None:
    parsed = parse("redis+sentinel://app:p%40ss@s1:26379,s2/primary-a")
    assert parsed == StoreUrl(
        "sentinel", False, [("s1", 26379), ("s2", 6379)], "app", "p@ss", service="primary-a"
    )
    assert parse("redis+cluster://a:1").password is None
    assert parse("redis://h:1/3").db == 3


@pytest.mark.parametrize(
    ("url", "why"),
    [
        (f"valkey://:{SECRET}@h:6379", "scheme must be redis://, rediss:// or unix://"),
        (f"redis+sentinel://:{SECRET}@s1:26379", "names its service"),
        (f"redis+cluster://:{SECRET}@a:7000/3", "only database 0"),
        (f"redis+cluster://:{SECRET}@a:7000,:7001", "a host is needed"),
        (f"redis+cluster://:{SECRET}@a:70000", "port must be a number from 1 to 65535"),
        (f"redis+sentinel://:{SECRET}@a:x/m", "port must be a number from 1 to 65535"),
    ],
)
def test_refusals_say_why_and_never_show_the_url(url: str, why: str) -> None:
    (problem,) = store_url_problems(url)
    assert why in problem
    assert SECRET not in problem
