"""Guardrails: detectors, the rules a config names, and scanning requests and streams.

Pure decisions over text and IR values; the phases report what they decide
(phases/guarding.py). README, Guardrails, documents the rules and detectors.
"""

from extproc.decisions.guardrails.rules import Guardrails, Rule
from extproc.decisions.guardrails.scan import (
    Verdict,
    scan_embedding,
    scan_request,
    scan_response,
    scan_text,
)
from extproc.decisions.guardrails.stream import StreamGuard, TextScanner, blocked_error

__all__ = [
    "Guardrails",
    "Rule",
    "StreamGuard",
    "TextScanner",
    "Verdict",
    "blocked_error",
    "scan_embedding",
    "scan_request",
    "scan_response",
    "scan_text",
]
