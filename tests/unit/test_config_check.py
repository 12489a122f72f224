"""`llmux check` and config loading: every problem in one run, with suggestions.

A file with several problems lists them all; unknown fields and provider names come
with "did you mean", enums with their allowed values; store URLs are checked for what
redis-py accepts (never echoing the URL, which may hold a password).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from extproc.config import settings as config

VALID = """
providers:
  - {name: openai, type: openai, base_url: "http://127.0.0.1:8099", api_key: sk-x}
models:
  - name: gpt-4o-mini
    targets: [{provider: openai, model: gpt-4o-mini}]
"""


def problems_of(text: str) -> list[str]:
    with pytest.raises(config.ConfigError) as caught:
        config.parse(text, env={})
    return caught.value.problems


def test_two_schema_problems_are_both_reported_with_suggestions() -> None:
    text = VALID.replace("base_url:", "base_ulr:").replace("type: openai", "type: opnai")
    text += "store: {on_error: clsed, url: 'redis://h/x'}\nlisten: {prt: 8080}\n"
    found = problems_of(text)
    assert "$.providers[0].base_ulr: unknown field; did you mean `base_url`?" in found
    assert "$.providers[0].base_url: required field missing" in found
    assert any(
        p.startswith("$.providers[0].type: 'opnai' is not one of 'openai', 'azure_openai'")
        for p in found
    )
    assert (
        "$.store.on_error: 'clsed' is not one of 'open', 'closed'; did you mean `closed`?" in found
    )
    assert "$.listen.prt: unknown field; did you mean `port`?" in found
    assert any(p.startswith("$.store.url: the database must be a number") for p in found)
    assert len(found) == 6


def test_a_routing_strategy_is_one_of_the_five_with_a_suggestion() -> None:
    assert config.parse(VALID, env={}).models[0].strategy == "weighted"
    chosen = config.parse(VALID + "    strategy: least_latency\n", env={})
    assert chosen.models[0].strategy == "least_latency"
    (found,) = problems_of(VALID + "    strategy: round-robin\n")
    assert found == (
        "$.models[0].strategy: 'round-robin' is not one of 'weighted', 'round_robin', "
        "'least_busy', 'least_latency', 'lowest_cost'; did you mean `round_robin`?"
    )


def test_nested_type_errors_name_their_path() -> None:
    text = VALID.replace("model: gpt-4o-mini}", 'model: gpt-4o-mini, weight: "3"}')
    text += "routing: {breaker: {failures: many}}\n"
    assert problems_of(text) == [
        "$.models[0].targets[0].weight: Expected `int`, got `str`",
        "$.routing.breaker.failures: Expected `int`, got `str`",
    ]


def test_unknown_provider_reference_suggests_the_closest_name() -> None:
    text = VALID.replace("{provider: openai", "{provider: opena")
    (found,) = problems_of(text)
    assert "unknown provider 'opena'; did you mean `openai`?" in found


def test_missing_variables_and_schema_problems_come_together() -> None:
    text = VALID.replace("sk-x", '"${NOT_SET_ANYWHERE}"') + "cache: {enabled: maybe}\n"
    found = problems_of(text)
    assert any("NOT_SET_ANYWHERE is not set" in p for p in found)
    assert any(p.startswith("$.cache.enabled:") for p in found)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("valkey://:hunter2@h:6379/0", "scheme must be redis://, rediss:// or unix://"),
        ("redis://:6379/0", "a host is needed"),
        ("redis://h:70000/0", "port must be a number from 1 to 65535"),
        ("redis://h:0/0", "port must be a number from 1 to 65535"),
        ("redis://h:6379/zero", "database must be a number"),
        ("unix://", "unix:// needs a socket path"),
    ],
)
def test_store_urls_redis_py_would_refuse_are_reported(url: str, why: str) -> None:
    (found,) = problems_of(VALID + f'store: {{url: "{url}"}}\n')
    assert found.startswith("$.store.url: ") and why in found
    assert "hunter2" not in found


@pytest.mark.parametrize(
    "url", ["redis://h:6379/0", "rediss://:pw@h", "redis://h?db=2", "unix:///run/redis.sock"]
)
def test_store_urls_redis_py_accepts_pass(url: str) -> None:
    assert config.parse(VALID + f'store: {{url: "{url}"}}\n', env={}).store.url == url


def test_llmux_check_prints_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "llmux.yaml"
    path.write_text(VALID.replace("base_url:", "base_ulr:"))
    result = subprocess.run(
        [sys.executable, "-m", "extproc", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert f"{path}: $.providers[0].base_ulr: unknown field; did you mean `base_url`?" in lines
    assert f"{path}: $.providers[0].base_url: required field missing" in lines


def test_llmux_check_notes_targets_without_a_price(tmp_path: Path) -> None:
    path = tmp_path / "llmux.yaml"
    path.write_text(
        VALID.replace(
            "targets: [{provider: openai, model: gpt-4o-mini}]",
            ("targets: [{provider: openai, model: gpt-4o-mini}, {provider: openai, model: ft-1}]"),
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "extproc", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stdout.splitlines() if "note:" in line]
    assert notes == [f"{path}: note: no price for openai/ft-1: it costs $0 (add it to `pricing`)"]


def test_pricing_problems_are_reported_with_suggestions() -> None:
    text = VALID + (
        "pricing:\n"
        "  opena/gpt-4o-mini: {input: 0.15, output: 0.60}\n"
        "  openai/gpt-4o: {input: 2.5, outptu: 10}\n"
        "  gpt-4o: {input: 1}\n"
        "  openai/gpt-4.1: {input: 0.0375, output: -1}\n"
    )
    found = problems_of(text)
    assert "$.pricing['openai/gpt-4o'].outptu: unknown field; did you mean `output`?" in found
    assert len(found) == 1  # schema problems first: the rest once the schema is right
    found = problems_of(text.replace("outptu", "output"))
    assert found[0].startswith(
        "$.pricing['opena/gpt-4o-mini']: unknown provider 'opena'; did you mean `openai`?"
    )
    assert found[1:] == [
        "$.pricing['gpt-4o']: the key must be `provider/model`, e.g. `openai/gpt-4o-mini`",
        "$.pricing['openai/gpt-4.1'].input: must be >= 0 with at most 3 decimals "
        "(US dollars per 1M tokens, counted in nano-dollars per token)",
        "$.pricing['openai/gpt-4.1'].output: must be >= 0 with at most 3 decimals "
        "(US dollars per 1M tokens, counted in nano-dollars per token)",
    ]


def test_pricing_keys_may_name_a_provider_type_or_a_configured_name() -> None:
    text = VALID + (
        "pricing:\n"
        "  openai/gpt-4o-mini: {input: 0.15, output: 0.6, cached_input: 0.075}\n"
        "  anthropic/claude-haiku-4-5: {input: 1, output: 5, cached_input: 0.1, cache_write: 1.25}\n"
    )
    parsed = config.parse(text, env={})
    assert parsed.pricing["openai/gpt-4o-mini"] == config.Price(0.15, 0.6, 0.075)
    assert parsed.pricing["anthropic/claude-haiku-4-5"].cache_write == 1.25


def test_tenant_budgets_need_a_positive_amount() -> None:
    text = VALID + "tenants:\n  acme: {budget_usd: {amount: 0, period: day}}\n"
    (found,) = problems_of(text)
    assert "budget_usd.amount must be more than 0" in found
    good = text.replace("amount: 0", "amount: 2.5")
    assert config.parse(good, env={}).tenants["acme"].budget_usd == config.MoneyBudget(2.5, "day")
