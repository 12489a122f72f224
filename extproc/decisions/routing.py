"""Routing decisions as pure functions over data: which targets may serve, which key.

Envoy does the weighted choice among the targets allowed here (weighted round
robin inside a priority tier, retries to the next tier); this module decides what
is allowed: a target whose circuit breaker is open, or whose provider has no
credential with quota left and out of cooldown, is left out of the mask.
No I/O: the store's readings come in as values.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import NamedTuple

from extproc.config.settings import Config, Credential, Model


def credential_tag(provider: str, credential: str) -> str:
    """The name a credential's quota and cooldown are kept under.

    The braces are a Redis Cluster hash tag: all of one credential's keys share a slot.
    """
    return f"{{c:{provider}:{credential}}}"


def target_tag(provider: str, upstream_model: str) -> str:
    """The name a target's circuit breaker is kept under (braces: as above)."""
    return f"{{t:{provider}/{upstream_model}}}"


class CredentialState(NamedTuple):
    """What the store read of one credential for this request."""

    requests: int  # in the current window
    tokens: int  # in the current window
    cooldown_ms: int  # > 0 while cooling down after a 429
    # > 0 while the provider's own rate-limit headers said it is exhausted: ms until
    # the reset they named (provider_limits.py); configured rpm/tpm stay caps beside it.
    exhausted_ms: int = 0

    @property
    def waiting_ms(self) -> int:
        return max(self.cooldown_ms, self.exhausted_ms)


class CredentialRef(NamedTuple):
    provider: str
    credential: Credential

    @property
    def tag(self) -> str:
        return credential_tag(self.provider, self.credential.name)

    @property
    def limited(self) -> bool:
        return bool(self.credential.rpm or self.credential.tpm)


class ModelPlan(NamedTuple):
    """What a routing decision for one model reads, computed once per config."""

    credentials: list[CredentialRef]  # every credential of every provider of the model
    target_tags: list[str]  # per target
    target_credentials: list[list[int]]  # per target: indexes into `credentials`


class Decision(NamedTuple):
    mask: int  # bit i set: target i may serve
    retry_after_s: int | None  # when rate limited: seconds until quota or cooldown frees one
    rate_limited: bool  # when mask == 0: quota/429 (-> 429) rather than failures (-> 503)
    preferred: dict[str, str]  # provider -> credential name to try first


def plan_for(config: Config, model: Model) -> ModelPlan:
    credentials: list[CredentialRef] = []
    index: dict[tuple[str, str], int] = {}
    target_credentials: list[list[int]] = []
    for target in model.targets:
        provider = config.provider(target.provider)
        positions = []
        for credential in provider.all_credentials:
            key = (provider.name, credential.name)
            if key not in index:
                index[key] = len(credentials)
                credentials.append(CredentialRef(provider.name, credential))
            positions.append(index[key])
        target_credentials.append(positions)
    tags = [target_tag(t.provider, t.model) for t in model.targets]
    return ModelPlan(credentials, tags, target_credentials)


def headroom(ref: CredentialRef, state: CredentialState) -> float:
    """Fraction of quota left (1.0 for unlimited); 0 when exhausted, by our count or the
    provider's word, or cooling down."""
    if state.waiting_ms > 0:
        return 0.0
    fractions = [1.0]
    if ref.credential.rpm:
        fractions.append(1 - state.requests / ref.credential.rpm)
    if ref.credential.tpm:
        fractions.append(1 - state.tokens / ref.credential.tpm)
    return max(0.0, min(fractions))


def decide(
    plan: ModelPlan,
    states: Sequence[CredentialState],
    open_ms: Sequence[int],
    window_left_s: int,
    rng: random.Random,
) -> Decision:
    room = [headroom(ref, state) for ref, state in zip(plan.credentials, states, strict=True)]
    mask = 0
    retry_ms: list[int] = []
    rate_limited = False
    for index, positions in enumerate(plan.target_credentials):
        if open_ms[index] > 0:
            continue  # our own breaker, not a provider's word: no retry-after for it
        if any(room[p] > 0 for p in positions):
            mask |= 1 << index
            continue
        rate_limited = True
        for p in positions:
            cooling = states[p].waiting_ms
            retry_ms.append(cooling if cooling > 0 else window_left_s * 1000)
    preferred = prefer_credentials(plan, room, rng)
    retry_after = max(1, -(-min(retry_ms) // 1000)) if retry_ms and not mask else None
    return Decision(mask, retry_after, rate_limited, preferred)


def prefer_credentials(
    plan: ModelPlan, room: Sequence[float], rng: random.Random
) -> dict[str, str]:
    """Per provider, the credential with the most quota left (ties: at random)."""
    best: dict[str, tuple[float, float, str]] = {}
    for ref, left in zip(plan.credentials, room, strict=True):
        candidate = (left, rng.random(), ref.credential.name)
        if ref.provider not in best or candidate > best[ref.provider]:
            best[ref.provider] = candidate
    return {provider: choice[2] for provider, choice in best.items()}


def credential_order(credentials: Sequence[Credential], preferred: str | None) -> list[Credential]:
    """The preferred credential first, then the others in config order."""
    first = [c for c in credentials if c.name == preferred]
    return first + [c for c in credentials if c.name != preferred]
