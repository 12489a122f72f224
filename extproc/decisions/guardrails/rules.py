"""Guardrail rules compiled once per config, and which of them apply to a request.

`Guardrails.compile` turns the config's `guardrails:` into `Rule`s and resolves, per
model and phase, the rules that apply whoever calls, at load time: with no rules
configured a request costs one dict lookup. Rules limited to virtual keys are kept
apart and filtered per request only when there are any. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

from extproc.config.settings import Guardrail
from extproc.decisions.guardrails import detectors

Phase = Literal["request", "response"]


class Rule(NamedTuple):
    name: str
    action: Literal["block", "mask", "log"]
    detector: detectors.Detector
    keys: frozenset[str]  # virtual key ids or names; empty: every caller


def compile_rule(rule: Guardrail) -> Rule:
    if rule.detect == "regex":
        assert rule.pattern is not None  # settings.guardrail_problems checked it
        detector = detectors.custom(rule.name, rule.pattern, rule.max_length)
    else:
        detector = detectors.builtin(rule.detect, rule.severity)
    return Rule(rule.name, rule.action, detector, frozenset(rule.keys))


class Guardrails:
    """The rules per (model, phase), resolved at config load."""

    __slots__ = ("_by_model", "names")

    def __init__(self, rules: Sequence[Guardrail], models: Sequence[str]) -> None:
        compiled = [(rule, compile_rule(rule)) for rule in rules]
        self.names = tuple(rule.name for rule in rules)  # every rule, for the dashboard
        self._by_model: dict[tuple[str, Phase], tuple[Rule, ...]] = {}
        for model in models:
            for phase in ("request", "response"):
                applied = tuple(
                    r
                    for rule, r in compiled
                    if phase in rule.on and (not rule.models or model in rule.models)
                )
                if applied:
                    self._by_model[(model, phase)] = applied

    def cover(self, model: str) -> bool:
        """Some rule may apply to this model's requests or answers."""
        return (model, "request") in self._by_model or (model, "response") in self._by_model

    def rules(
        self, model: str, phase: Phase, key_id: str | None, key_name: str | None
    ) -> tuple[Rule, ...]:
        """The rules that apply to this model, phase and caller (empty: nothing to scan)."""
        found = self._by_model.get((model, phase), ())
        if not found or all(not r.keys for r in found):
            return found
        return tuple(r for r in found if not r.keys or key_id in r.keys or key_name in r.keys)
