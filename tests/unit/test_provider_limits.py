"""Providers' rate-limit headers as values: OpenAI/Azure durations, Anthropic RFC 3339 times."""

from __future__ import annotations

import pytest

from extproc.decisions.provider_limits import (
    DEFAULT_RESET_MS,
    ProviderLimits,
    duration_ms,
    read,
    until_ms,
)

NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("6m0s", 360_000),
        ("1s", 1_000),
        ("20ms", 20),
        ("1h2m3s", 3_723_000),
        ("1.5s", 1_500),
        ("0.25s", 250),
        ("7", 7_000),  # Azure: plain seconds
        ("0", 0),
        ("500us", 1),  # rounded up: never earlier than the provider said
    ],
)
def test_go_durations_and_plain_seconds(text: str, ms: int) -> None:
    assert duration_ms(text) == ms


@pytest.mark.parametrize("text", ["", "soon", "5x", "s", "1s2", "-"])
def test_unreadable_durations_are_none(text: str) -> None:
    assert duration_ms(text) is None


def test_rfc3339_times_are_ms_from_now_and_past_ones_zero() -> None:
    assert until_ms("2026-01-01T00:00:20Z", NOW) == 20_000
    assert until_ms("2026-01-01T01:00:20+01:00", NOW) == 20_000
    assert until_ms("2026-01-01T00:00:00.250Z", NOW) == 250
    assert until_ms("2025-12-31T23:59:00Z", NOW) == 0
    assert until_ms("tomorrow", NOW) is None
    assert until_ms("2026-01-01T00:00:20", NOW) is None  # no offset: not RFC 3339


def test_openai_headers() -> None:
    headers = {
        "x-ratelimit-limit-requests": "5000",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "20s",
        "x-ratelimit-remaining-tokens": "159976",
        "x-ratelimit-reset-tokens": "9ms",
    }
    limits = read("openai", headers, NOW)
    assert limits == ProviderLimits(0, 20_000, 159_976, 9, 5000, None)
    assert limits.exhausted_ms() == 20_000
    assert read("azure_openai", headers, NOW) == limits


def test_azure_minus_one_means_not_known_and_a_missing_reset_the_default() -> None:
    limits = read(
        "azure_openai",
        {"x-ratelimit-remaining-requests": "0", "x-ratelimit-remaining-tokens": "-1"},
        NOW,
    )
    assert limits == ProviderLimits(0, None, None, None)
    assert limits.exhausted_ms() == DEFAULT_RESET_MS
    assert read("azure_openai", {"x-ratelimit-remaining-tokens": "-1"}, NOW) is None


def test_anthropic_headers() -> None:
    headers = {
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "49",
        "anthropic-ratelimit-requests-reset": "2026-01-01T00:00:01Z",
        "anthropic-ratelimit-tokens-remaining": "0",
        "anthropic-ratelimit-tokens-reset": "2026-01-01T00:00:30Z",
    }
    limits = read("anthropic", headers, NOW)
    assert limits == ProviderLimits(49, 1_000, 0, 30_000, 50, None)
    assert limits.exhausted_ms() == 30_000


def test_providers_without_such_headers_and_responses_without_them() -> None:
    openai_style = {"x-ratelimit-remaining-requests": "0"}
    assert read("gemini", openai_style, NOW) is None
    assert read("ollama", openai_style, NOW) is None
    assert read("anthropic", openai_style, NOW) is None  # not its names
    assert read("openai", {"content-type": "application/json"}, NOW) is None
    assert read("openai", {"x-ratelimit-remaining-requests": "many"}, NOW) is None


def test_room_left_is_not_exhausted() -> None:
    assert ProviderLimits(3, 1_000, 10, 1_000).exhausted_ms() == 0
    assert ProviderLimits(None, None, None, None).exhausted_ms() == 0


def test_only_readings_near_exhaustion_are_worth_a_write() -> None:
    assert not ProviderLimits(600, 1_000, None, None, 10_000).near_exhaustion()
    assert ProviderLimits(500, 1_000, None, None, 10_000).near_exhaustion()  # 5 % left
    assert ProviderLimits(2, 1_000, None, None).near_exhaustion()  # no limit said: 2 left
    assert not ProviderLimits(3, 1_000, None, None).near_exhaustion()
    assert ProviderLimits(600, 1_000, 0, 1_000, 10_000).near_exhaustion()  # tokens spent
    assert not ProviderLimits(None, None, None, None).near_exhaustion()
