"""The detectors a guardrail rule names: what each finds, and the longest text it spans.

A detector is one compiled pattern (the `regex` module: the stream scanner needs its
partial matches), an optional validator that rejects look-alikes (Luhn for cards, a real
address for IPs; a card number inside a longer run of digits) and `max_length`, the longest match it can make: the stream scanner's
look-behind. Built-ins are fixed here; `regex` rules bring their pattern and bound.

Speed: a regex tried at every position of a 2 KB prompt costs 50-500 µs in CPython, so
built-ins name `anchors`: literals every match holds a known distance from its start
(found with str.find, memchr-fast), each with the stdlib pattern (faster than `regex`
for one anchored try) of the matches it can start, tried only there. `fold` detectors
look in the lowered text with lower-case patterns. `gate` is a character without which
nothing can match. Pure: no I/O, no config.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from typing import NamedTuple

import regex

SEVERITY_RANK = {"low": 0, "medium": 1, "high": 2}


class Anchor(NamedTuple):
    literal: str
    back: int  # how far after the start of a match the literal may sit
    pattern: re.Pattern[str] | regex.Pattern[str]  # the matches it may start, tried there only


class Detector(NamedTuple):
    label: str  # what a mask says: [REDACTED:<label>]
    pattern: regex.Pattern[str]  # every match (streams, and text the anchors cannot serve)
    max_length: int  # no match is longer: the stream scanner holds back at most this
    # The part of a match that really is one ((start, end) in it), or None: Luhn for cards.
    refine: Callable[[str], tuple[int, int] | None] | None = None
    anchors: tuple[Anchor, ...] = ()
    fold: bool = False  # anchors and their patterns are lower case: match the lowered text
    gate: str | None = None  # no match without this character
    # Set when every match starts with an anchor literal and the anchors' patterns are
    # `regex` ones (partial matches): the literals' proper prefixes, so a stream scanner
    # can tell, without the full pattern, where a match may be starting.
    prefixes: frozenset[str] | None = None


def anchors(pattern: str, literals: Iterable[tuple[str, int]]) -> tuple[Anchor, ...]:
    compiled = re.compile(pattern)
    return tuple(Anchor(literal, back, compiled) for literal, back in literals)


def prefixes_of(found: tuple[Anchor, ...]) -> frozenset[str]:
    """The proper prefixes of anchor literals that start their matches (back 0, `regex`)."""
    return frozenset(a.literal[:k] for a in found for k in range(1, len(a.literal)))


DIGITS = tuple((d, 0) for d in "0123456789")


def card_number(text: str) -> tuple[int, int] | None:
    """The longest whole groups of digits in `text` (13-19 digits) that pass Luhn.

    A number written next to others ("ref 12 4111 1111 1111 1111 0") is still found;
    a group is never cut, so a wrong number does not pass by a lucky sub-string.
    """
    groups = [(m.start(), m.end()) for m in _DIGIT_GROUP.finditer(text)]
    best: tuple[int, int] | None = None
    for i in range(len(groups)):
        for j in range(i, len(groups)):
            start, end = groups[i][0], groups[j][1]
            digits = sum(b - a for a, b in groups[i : j + 1])
            if 13 <= digits <= 19 and luhn(text[start:end]):
                if best is None or end - start > best[1] - best[0]:
                    best = (start, end)
    return best


_DIGIT_GROUP = re.compile(r"\d+")


def whole_if(check: Callable[[str], bool]) -> Callable[[str], tuple[int, int] | None]:
    return lambda text: (0, len(text)) if check(text) else None


def luhn(text: str) -> bool:
    """The Luhn checksum of the digits in `text` (card numbers, with spaces or dashes)."""
    digits = [int(c) for c in text if c.isdigit()]
    total = 0
    for i, digit in enumerate(reversed(digits)):
        if i % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return 13 <= len(digits) <= 19 and total % 10 == 0


def ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


# API-key shapes from the providers' own docs and key formats; each bounded so the
# stream look-behind stays bounded. A PEM private key is caught whole, up to 4 KiB
# (an RSA-4096 key in PKCS#8 is ~3.3 KB).
SECRET_PATTERNS = (
    r"sk-ant-(?:api|admin)\d\d-[A-Za-z0-9_-]{20,120}",  # Anthropic
    r"sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,200}",  # OpenAI
    r"AIza[0-9A-Za-z_-]{35}",  # Google (Gemini, Cloud)
    r"(?:AKIA|ASIA)[0-9A-Z]{16}",  # AWS access key id
    r"gh[pousr]_[A-Za-z0-9]{36,80}|github_pat_[A-Za-z0-9_]{22,120}",  # GitHub
    r"xox[abposr]-[A-Za-z0-9-]{10,100}",  # Slack
    r"[sr]k_(?:live|test)_[A-Za-z0-9]{16,100}",  # Stripe
    r"hf_[A-Za-z0-9]{30,40}",  # Hugging Face
    r"eyJ[A-Za-z0-9_-]{8,1000}\.eyJ[A-Za-z0-9_-]{8,2000}\.[A-Za-z0-9_-]{16,1000}",  # JWT
    r"-----BEGIN[A-Z ]{0,20} PRIVATE KEY-----[\s\S]{0,4000}?-----END[A-Z ]{0,20} PRIVATE KEY-----",
)

# What each secret shape starts with.
SECRET_ANCHORS = (
    *("sk-", "AIza", "AKIA", "ASIA", "github_pat_", "xox", "hf_", "eyJ", "-----BEGIN"),
    *(f"gh{c}_" for c in "pousr"),
    *(f"{c}k_{mode}_" for c in "sr" for mode in ("live", "test")),
)

EMAIL = (
    r"(?<![\w.+-])[\w.+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){0,8}\.[A-Za-z]{2,24}\b"
)
# International (+CC …) or North American ((555) 123-4567, 555-123-4567) numbers.
PHONE = (
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){2,4}"
    r"|\(\d{3}\)[ .-]?\d{3}[ .-]?\d{4}|\d{3}[.-]\d{3}[.-]\d{4})(?![\w])"
)
CARD = r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d])"
IPV4 = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?:\.(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}"
IP = rf"(?<![\w.:])(?:{IPV4}|[0-9A-Fa-f]{{0,4}}(?::[0-9A-Fa-f]{{0,4}}){{2,7}})(?![\w.:])"

# Prompt-injection patterns and their severity (README, Guardrails, lists them):
# Lower case: they match the lowered text (and the whole text ignoring case in streams).
# high: tries to take over the model or run code / read secrets; medium: tries to
# reveal hidden instructions; low: role-play framing often used to get around rules.
# Each: name, severity, pattern, and the literals its matches start with.
INJECTION_PATTERNS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    (
        "ignore_instructions",
        "high",
        r"\b(?:ignore|disregard|forget|override)\s+(?:all\s+|any\s+|the\s+|your\s+)*"
        r"(?:previous|prior|above|earlier|preceding|system)\s+"
        r"(?:instructions|prompts?|rules|directions|messages)\b",
        ("ignore", "disregard", "forget", "override"),
    ),
    (
        "code_eval",
        "high",
        r"\b(?:eval|exec)\s*\(|__import__\s*\(|\bos\.system\s*\(",
        ("eval", "exec", "__import__", "os.system"),
    ),
    (
        "environment_access",
        "high",
        r"\bprocess\.env\b|\bos\.environ\b|\bos\.getenv\s*\(|\$\{?env\b|\bprintenv\b",
        ("process.env", "os.environ", "os.getenv", "$env", "${env", "printenv"),
    ),
    (
        # Anchored on the thing asked for (rarer than the verb, which a lookbehind checks).
        "credential_extraction",
        "high",
        r"(?<=\b(?:reveal|print|show|tell|give|output|list|dump|leak|send)\s+(?:me\s+)?"
        r"(?:(?:all|any|the|your)\s+){0,3})(?:api[\s_-]?keys?|secrets?|passwords?|"
        r"credentials?|access[\s_-]?tokens?|private[\s_-]?keys?)\b",
        ("api", "secret", "password", "credential", "access", "private"),
    ),
    (
        "system_prompt_extraction",
        "medium",
        r"(?<=\b(?:reveal|print|show|repeat|output|tell\s+me|what\s+(?:is|are|was|were))\s+"
        r"(?:me\s+)?(?:(?:your|the)\s+)?)(?:system\s+prompt|initial\s+instructions|"
        r"hidden\s+instructions|original\s+instructions)\b",
        ("system", "initial", "hidden", "original"),
    ),
    (
        "role_override",
        "low",
        r"(?<=\b(?:you\s+are\s+now\s+(?:in\s+)?|act\s+as\s+(?:an?\s+)?))"
        r"(?:dan|developer\s+mode|jailbroken|unrestricted|unfiltered)\b",
        ("dan", "developer", "jailbroken", "unrestricted", "unfiltered"),
    ),
)


def injection(min_severity: str) -> Detector:
    """The injection patterns at or above `min_severity`, as one alternation."""
    floor = SEVERITY_RANK[min_severity]
    chosen = [(p, a) for _, sev, p, a in INJECTION_PATTERNS if SEVERITY_RANK[sev] >= floor]
    pattern = regex.compile("|".join(f"(?:{p})" for p, _ in chosen), regex.IGNORECASE)
    by_word: dict[str, list[str]] = {}
    for p, words in chosen:
        for word in words:
            by_word.setdefault(word, []).append(f"(?:{p})")
    # `regex`: the stdlib has no variable-length lookbehind
    found = tuple(Anchor(w, 0, regex.compile("|".join(ps))) for w, ps in by_word.items())
    return Detector(
        "prompt_injection", pattern, 200, anchors=found, fold=True, prefixes=prefixes_of(found)
    )


def builtin(name: str, severity: str = "low") -> Detector:
    """The built-in detector called `name` (the config's `detect:`)."""
    if name == "prompt_injection":
        return injection(severity)
    if name == "secrets":
        secrets = "|".join(f"(?:{p})" for p in SECRET_PATTERNS)
        secret = rf"(?<![\w-])(?:{secrets})"
        compiled = regex.compile(secret)
        found = tuple(Anchor(literal, 0, compiled) for literal in SECRET_ANCHORS)
        return Detector("secret", compiled, 4200, anchors=found, prefixes=prefixes_of(found))
    if name == "email":
        return Detector("email", regex.compile(EMAIL), 350, gate="@")
    if name == "phone":
        found = anchors(PHONE, (*DIGITS, ("+", 0), ("(", 0)))
        return Detector("phone", regex.compile(PHONE), 32, anchors=found)
    if name == "payment_card":
        # `regex` scans a digit-led pattern faster than anchors at every digit would
        return Detector("payment_card", regex.compile(CARD), 40, card_number)
    if name == "ip_address":
        found = anchors(IP, (*DIGITS, (":", 4)))  # IPv6: a colon in its first 5 characters
        refine = whole_if(ip_address)
        return Detector("ip_address", regex.compile(IP), 45, refine, anchors=found)
    raise ValueError(f"unknown detector {name!r}")


def custom(label: str, pattern: str, max_length: int) -> Detector:
    """A `detect: regex` rule's detector; raises regex.error for a bad pattern."""
    return Detector(label, regex.compile(pattern), max_length)
