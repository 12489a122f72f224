"""Virtual keys, imported directly: minting, hashing, records, refusals, budget periods."""

from __future__ import annotations

import calendar
import hashlib

import msgspec
import pytest

from extproc.decisions import keys
from extproc.decisions.keys import Budget, KeySpec, KeyUpdate, VirtualKey

NOW = calendar.timegm((2027, 1, 15, 13, 0, 0))  # a fixed clock, in UTC
SPEC = KeySpec(name="ci", tenant="acme", models=["gpt-4o-mini"], rpm=5, budget=Budget(1000))


def test_a_minted_secret_is_shown_once_and_kept_as_its_sha256() -> None:
    secret, hashed = keys.mint()
    assert secret.startswith(keys.KEY_PREFIX) and len(secret) > 40
    assert hashed == hashlib.sha256(secret.encode()).hexdigest() == keys.digest(secret)
    assert keys.mint()[0] != secret


def test_a_created_record_carries_the_spec_and_never_the_secret() -> None:
    secret, record = keys.create(SPEC, now=NOW)
    assert record.created_at == NOW
    assert record.id.startswith("key_") and record.id != keys.create(SPEC, now=NOW)[1].id
    assert (record.name, record.tenant, record.models, record.rpm) == (
        "ci",
        "acme",
        ["gpt-4o-mini"],
        5,
    )
    assert keys.matches(record, secret)
    assert not keys.matches(record, secret + "x")
    assert secret not in repr(record)
    shown = record.public()
    assert "hash" not in shown and shown["id"] == record.id and shown["revoked"] is False


def test_a_record_round_trips_and_garbage_reads_as_none() -> None:
    _, record = keys.create(SPEC, now=NOW)
    assert keys.decode_record(keys.encode_record(record)) == record
    assert keys.decode_record(b"\xc1") is None
    assert keys.decode_record(msgspec.msgpack.encode({"id": "x"})) is None


def test_an_update_applies_only_the_fields_sent_and_null_clears() -> None:
    _, record = keys.create(SPEC, now=NOW)
    change = KeyUpdate(name="renamed", rpm=None, tpm=9)
    updated = keys.update(record, change, {"name", "rpm", "not-a-field"})
    assert (updated.name, updated.rpm, updated.tpm) == ("renamed", None, None)  # tpm not sent
    assert (updated.id, updated.hash, updated.created_at) == (record.id, record.hash, NOW)


BASE = VirtualKey(id="key_1", hash="h", name="n", tenant="t", created_at=0)


def record(**fields: object) -> VirtualKey:
    return msgspec.structs.replace(BASE, **fields)


@pytest.mark.parametrize(
    ("key", "model", "kind", "words"),
    [
        (None, "m", "authentication", "invalid API key"),
        (record(revoked=True), "m", "authentication", "invalid API key"),
        (record(expires_at=NOW), "m", "authentication", "expired"),
        (record(models=["a"]), "m", "permission", "`m`"),
    ],
)
def test_a_refusal_says_why(key: VirtualKey | None, model: str, kind: str, words: str) -> None:
    refused = keys.refusal(key, model, NOW)
    assert refused is not None and refused.kind == kind and words in refused.message


@pytest.mark.parametrize(
    ("key", "model"),
    [
        (record(), "m"),
        (record(expires_at=NOW + 1), "m"),
        (record(models=["m"]), "m"),
        (record(models=["a"]), None),  # no model named (e.g. listing models)
    ],
)
def test_a_valid_key_is_not_refused(key: VirtualKey, model: str | None) -> None:
    assert keys.refusal(key, model, NOW) is None


@pytest.mark.parametrize(
    ("period", "now", "label", "left"),
    [
        ("day", NOW, "20270115", 11 * 3600),
        ("day", calendar.timegm((2027, 1, 15, 23, 59, 59)), "20270115", 1),
        ("month", NOW, "202701", (31 - 15) * 86400 + 11 * 3600),
        ("month", calendar.timegm((2026, 12, 31, 23, 59, 0)), "202612", 60),
        ("month", calendar.timegm((2028, 2, 28, 0, 0, 0)), "202802", 2 * 86400),  # leap year
    ],
)
def test_budget_periods_are_utc_days_and_months(
    period: keys.Period, now: int, label: str, left: int
) -> None:
    assert keys.period_id(period, now) == (label, left)


@pytest.mark.parametrize(
    ("headers", "path", "secret"),
    [
        ({"authorization": "Bearer llmx-a"}, "/v1/chat/completions", "llmx-a"),
        ({"authorization": "bearer  llmx-b "}, "/", "llmx-b"),
        ({"authorization": "Bearer "}, "/", None),
        ({"x-api-key": "llmx-c"}, "/v1/messages", "llmx-c"),
        ({"x-goog-api-key": " llmx-d"}, "/", "llmx-d"),
        ({"api-key": "llmx-e"}, "/", "llmx-e"),
        ({}, "/v1beta/models/m:generateContent?alt=sse&key=llmx-f", "llmx-f"),
        ({"authorization": "Basic abc"}, "/?monkey=1", None),
        ({}, "/", None),
    ],
)
def test_the_presented_key_as_each_sdk_sends_it(
    headers: dict[str, str], path: str, secret: str | None
) -> None:
    assert keys.presented_key(headers, path) == secret


def test_key_and_tenant_tags_name_their_counters() -> None:
    assert keys.key_tag("key_1") == "{k:key_1}"
    assert keys.tenant_tag("acme") == "{tenant:acme}"
