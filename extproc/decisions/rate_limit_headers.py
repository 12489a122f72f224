"""The rate-limit headers a client sees, and which address a per-IP limit counts.

Two spellings of the same facts, for a virtual key's rpm/tpm or the anonymous per-IP
limit: the IETF draft's `RateLimit-Policy` / `RateLimit` (draft-ietf-httpapi-
ratelimit-headers: `"<policy>";q=<quota>;w=<window s>` and `"<policy>";r=<remaining>;
t=<seconds to reset>`), and OpenAI's `x-ratelimit-{limit,remaining,reset}-{requests,
tokens}` that OpenAI SDK users read (reset as a Go duration: "42s", "1m0s"). The draft
registers no token unit, so tokens travel in the OpenAI spelling only.
Pure: no I/O.
"""

from __future__ import annotations

from typing import NamedTuple

WINDOW_S = 60  # the store's quota windows are calendar minutes


class Standing(NamedTuple):
    """Where a caller stands in the current window."""

    policy: str  # "key" or "ip": names the limit in RateLimit-Policy
    rpm: int | None
    tpm: int | None
    requests: int  # requests counted in the window, this one included
    tokens: int  # tokens charged in the window
    reset_s: int  # seconds until the window ends


def headers(standing: Standing) -> list[tuple[str, str]]:
    """Both spellings of the caller's standing (none for a limit it does not have)."""
    policy, rpm, tpm, reset = standing.policy, standing.rpm, standing.tpm, standing.reset_s
    out: list[tuple[str, str]] = []
    if rpm:
        left = max(0, rpm - standing.requests)
        out += [
            ("ratelimit-policy", f'"{policy}";q={rpm};w={WINDOW_S}'),
            ("ratelimit", f'"{policy}";r={left};t={reset}'),
            ("x-ratelimit-limit-requests", str(rpm)),
            ("x-ratelimit-remaining-requests", str(left)),
            ("x-ratelimit-reset-requests", go_duration(reset)),
        ]
    if tpm:
        out += [
            ("x-ratelimit-limit-tokens", str(tpm)),
            ("x-ratelimit-remaining-tokens", str(max(0, tpm - standing.tokens))),
            ("x-ratelimit-reset-tokens", go_duration(reset)),
        ]
    return out


def go_duration(seconds: int) -> str:
    """Whole seconds as OpenAI writes durations: "7s", "1m0s"."""
    minutes, rest = divmod(max(0, seconds), 60)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"


def client_address(forwarded_for: str | None, trusted_hops: int) -> str | None:
    """The client's address from the x-forwarded-for Envoy passes on.

    Envoy (use_remote_address) appends the peer it accepted the connection from, so the
    last entry is the address Envoy saw, whatever the client sent before it; with
    `trusted_hops` proxies in front, the entry that many places before the last (as
    Envoy's own xff_num_trusted_hops reads it). None when Envoy named no address.
    """
    if not forwarded_for:
        return None
    entries = [e.strip() for e in forwarded_for.split(",")]
    return entries[max(0, len(entries) - 1 - trusted_hops)] or None


def address_tag(address: str) -> str:
    """The store name of a client address's window (a Redis Cluster hash tag)."""
    return f"{{ip:{address}}}"
