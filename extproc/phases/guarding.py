"""Guardrails where the phases meet them: which rules apply, and every decision reported.

The router phase checks the client's request (block: a 400 in the client's dialect
naming the rule; mask: the request goes on masked); an attempt's translator checks the
answer, whole or as a stream (`ResponseGuard`). Each rule that matched is counted in
`llmux_guardrail_actions_total{rule,action,phase}` and added to the span as an event,
never with the text it matched. The scanning itself is decisions/guardrails.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from extproc import ir
from extproc.decisions import guardrails
from extproc.decisions.guardrails import Rule, Verdict
from extproc.phases.actions import Respond, error_response
from extproc.phases.context import Context

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from extproc.phases.plan import AttemptPlan

Request = ir.ChatRequest | ir.EmbeddingRequest


def check_request(
    context: Context, rules: Sequence[Rule], request: Request, dialect: str, span: Span | None
) -> Request | Respond:
    """The request as the provider may see it, or the client's 400 when a rule blocks it."""
    checked: Request
    if isinstance(request, ir.ChatRequest):
        checked, verdict = guardrails.scan_request(rules, request)
    else:
        checked, verdict = guardrails.scan_embedding(rules, request)
    report(context, verdict.matched, "request", span)
    if verdict.blocked is not None:
        return error_response(dialect, guardrails.blocked_error(verdict.blocked))
    return checked


def report(context: Context, matched: Sequence[Rule], phase: str, span: Span | None) -> None:
    metrics = context.telemetry.metrics
    for rule in matched:
        metrics.guardrail(rule.name, rule.action, phase)
        if span is not None:
            span.add_event(
                "llmux.guardrail",
                {
                    "llmux.guardrail.rule": rule.name,
                    "llmux.guardrail.action": rule.action,
                    "llmux.guardrail.phase": phase,
                },
            )


class ResponseGuard:
    """An attempt's answer under the response rules: masked, or ended by a block."""

    __slots__ = ("context", "reported", "rules", "span", "stream")

    def __init__(self, context: Context, rules: Sequence[Rule], span: Span | None) -> None:
        self.context = context
        self.rules = rules
        self.span = span
        self.stream = guardrails.StreamGuard(rules)
        self.reported = 0  # rules of the stream's verdict already counted

    def events(self, events: list[ir.StreamEvent], end: bool) -> list[ir.StreamEvent]:
        """A stream's events as they may leave now (what may still grow a match waits)."""
        out = self.stream.feed(events, end)
        matched = self.stream.verdict.matched
        if len(matched) > self.reported:
            report(self.context, matched[self.reported :], "response", self.span)
            self.reported = len(matched)
        return out

    def response(self, answer: ir.ChatResponse) -> ir.ChatResponse:
        """A whole answer, masked; raises GatewayError when a rule blocks it."""
        checked, verdict = guardrails.scan_response(self.rules, answer)
        self.check(verdict)
        return checked

    def check(self, verdict: Verdict) -> None:
        report(self.context, verdict.matched, "response", self.span)
        if verdict.blocked is not None:
            raise ir.GatewayError(guardrails.blocked_error(verdict.blocked))


def response_guard(context: Context, plan: AttemptPlan) -> ResponseGuard | None:
    """The guard of an attempt's answer; None (no cost) when no response rule applies."""
    info = plan.info
    if not isinstance(plan.request, ir.ChatRequest):
        return None
    rules = context.guardrails.rules(info.model, "response", info.key_id, info.key_name)
    return ResponseGuard(context, rules, plan.span) if rules else None
