"""Virtual API keys: their record, how they are minted and hashed, budget periods.

A key is shown once at creation; Redis keeps only its SHA-256. Lookups go by the
hash of what the client presented, and the final comparison is constant-time.
No I/O here: the store persists records, the admin's keys API exposes them.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

import msgspec

from extproc import ir
from extproc.config.settings import MoneyBudget, Period

KEY_PREFIX = "llmx-"


def key_tag(key_id: str) -> str:
    """The name a key's quota, usage and budget are kept under (a Redis Cluster hash tag)."""
    return f"{{k:{key_id}}}"


def tenant_tag(tenant: str) -> str:
    """The name a tenant's usage is kept under (a Redis Cluster hash tag)."""
    return f"{{tenant:{tenant}}}"


class Budget(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    tokens: int
    period: Period = "month"


class KeySpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What an admin may set on a key (create and update)."""

    name: str
    tenant: str = "default"
    models: list[str] | None = None  # None: every model
    rpm: int | None = None
    tpm: int | None = None
    budget: Budget | None = None
    budget_usd: MoneyBudget | None = None
    expires_at: int | None = None  # unix seconds


class KeyUpdate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str | None = None
    tenant: str | None = None
    models: list[str] | None = None
    rpm: int | None = None
    tpm: int | None = None
    budget: Budget | None = None
    budget_usd: MoneyBudget | None = None
    expires_at: int | None = None


class VirtualKey(msgspec.Struct, frozen=True):
    id: str  # public identifier, safe to log
    hash: str  # SHA-256 hex of the secret
    name: str
    tenant: str
    created_at: int
    models: list[str] | None = None
    rpm: int | None = None
    tpm: int | None = None
    budget: Budget | None = None
    budget_usd: MoneyBudget | None = None
    expires_at: int | None = None
    revoked: bool = False

    def public(self) -> dict[str, object]:
        """The record as the admin API shows it: never the hash."""
        data = msgspec.to_builtins(self)
        data.pop("hash")
        return data  # type: ignore[no-any-return]


_record_encoder = msgspec.msgpack.Encoder()
_record_decoder = msgspec.msgpack.Decoder(VirtualKey)


def encode_record(record: VirtualKey) -> bytes:
    return _record_encoder.encode(record)


def decode_record(data: bytes) -> VirtualKey | None:
    try:
        return _record_decoder.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None


def mint() -> tuple[str, str]:
    """(secret shown once, its hash)."""
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    return secret, digest(secret)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_id() -> str:
    return "key_" + secrets.token_hex(8)


def matches(record: VirtualKey, secret: str) -> bool:
    return hmac.compare_digest(record.hash, digest(secret))


def create(spec: KeySpec, now: float | None = None) -> tuple[str, VirtualKey]:
    secret, hashed = mint()
    record = VirtualKey(
        id=new_id(), hash=hashed, created_at=int(now or time.time()), **msgspec.structs.asdict(spec)
    )
    return secret, record


def update(record: VirtualKey, change: KeyUpdate, fields: set[str]) -> VirtualKey:
    """Apply the fields the admin sent (an explicit null clears an optional field)."""
    values = {f: getattr(change, f) for f in fields if f in KeyUpdate.__struct_fields__}
    return msgspec.structs.replace(record, **values)


def refusal(record: VirtualKey | None, model: str | None, now: float) -> ir.ErrorInfo | None:
    """Why this key may not make this request, or None."""
    if record is None or record.revoked:
        return ir.ErrorInfo(kind="authentication", message="invalid API key")
    if record.expires_at is not None and now >= record.expires_at:
        return ir.ErrorInfo(kind="authentication", message="this API key has expired")
    if model is not None and record.models is not None and model not in record.models:
        return ir.ErrorInfo(
            kind="permission", message=f"this API key may not use the model `{model}`"
        )
    return None


def period_id(period: Period, now: float) -> tuple[str, int]:
    """(period label, seconds until it ends), in UTC."""
    t = time.gmtime(now)
    if period == "day":
        end = (int(now) // 86400 + 1) * 86400
        return time.strftime("%Y%m%d", t), end - int(now)
    year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    end = int(time.mktime((year, month, 1, 0, 0, 0, 0, 0, 0)) - time.timezone)
    return time.strftime("%Y%m", t), max(1, end - int(now))


def presented_key(headers: dict[str, str], path: str) -> str | None:
    """The key as each SDK sends it: Bearer, x-api-key, x-goog-api-key or ?key=."""
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    for name in ("x-api-key", "x-goog-api-key", "api-key"):
        if headers.get(name):
            return headers[name].strip()
    if "key=" in path:
        from urllib.parse import parse_qs, urlsplit

        values = parse_qs(urlsplit(path).query).get("key")
        if values:
            return values[0]
    return None
