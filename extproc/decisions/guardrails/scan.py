"""Scanning text and IR values with guardrail rules: find, mask, block.

`scan_text` finds every rule's matches in one text and masks the `mask` rules' spans
with `[REDACTED:<label>]`; `scan_request` and `scan_response` apply it to every text
of an IR request (system prompt, text parts, tool results, tool-call arguments) or
answer. A `block` match stops the scan. Reports name rules, never the matched text.
Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import msgspec
import regex

from extproc import ir
from extproc.decisions.guardrails.detectors import Detector
from extproc.decisions.guardrails.rules import Rule


class Span(NamedTuple):
    start: int
    end: int
    rule: Rule


class Verdict:
    """What scanning found: the rules that matched (once each) and the blocking one."""

    __slots__ = ("blocked", "matched")

    def __init__(self) -> None:
        self.matched: list[Rule] = []
        self.blocked: Rule | None = None

    def note(self, rule: Rule) -> None:
        if rule not in self.matched:
            self.matched.append(rule)
        if rule.action == "block" and self.blocked is None:
            self.blocked = rule


def find(rules: Sequence[Rule], text: str, pos: int = 0) -> list[Span]:
    """Every rule's complete, valid matches in text[pos:], sorted by start."""
    found: list[Span] = []
    folded: str | None = None
    for rule in rules:
        detector = rule.detector
        if detector.gate is not None and detector.gate not in text:
            continue
        if detector.fold and folded is None:
            folded = text.lower()
        hay = folded if detector.fold else text
        matches: Iterable[re.Match[str] | regex.Match[str]]
        if detector.anchors and hay is not None and len(hay) == len(text):
            matches = _anchored(detector, hay, pos)
        else:
            matches = detector.pattern.finditer(text, pos)
        for match in matches:
            span = refined(detector, text, *match.span())
            if span is not None:
                found.append(Span(*span, rule))
    found.sort()
    return found


def refined(detector: Detector, text: str, start: int, end: int) -> tuple[int, int] | None:
    """The span of a match that really is one (a card's Luhn, an IP's parse), if any."""
    if end <= start:
        return None
    if detector.refine is None:
        return start, end
    cut = detector.refine(text[start:end])
    return None if cut is None else (start + cut[0], start + cut[1])


def _anchored(detector: Detector, hay: str, pos: int) -> list[re.Match[str] | regex.Match[str]]:
    """The matches in `hay`, tried only where an anchor says one may start."""
    starts: list[tuple[int, re.Pattern[str] | regex.Pattern[str]]] = []
    for literal, back, pattern in detector.anchors:
        at = hay.find(literal, pos)
        while at >= 0:
            if back:
                starts.extend((s, pattern) for s in range(max(pos, at - back), at + 1))
            else:
                starts.append((at, pattern))
            at = hay.find(literal, at + 1)
    if not starts:
        return []
    starts.sort(key=_first)
    matches = []
    done = pos
    for start, pattern in starts:
        if start >= done:
            match = pattern.match(hay, start)
            if match is not None and match.end() > start:
                matches.append(match)
                done = match.end()
    return matches


def _first(start: tuple[int, object]) -> int:
    return start[0]


def mask(text: str, spans: Sequence[Span], verdict: Verdict, offset: int = 0) -> str:
    """`text` with the mask rules' spans replaced; every span noted in the verdict.

    `offset` is where `text` starts in the coordinates of the spans. Overlapping mask
    spans become one replacement, labelled by the first.
    """
    out: list[str] = []
    done = offset
    for span in spans:
        verdict.note(span.rule)
        if span.rule.action != "mask" or span.end <= done:
            continue
        out.append(text[done - offset : max(done, span.start) - offset])
        if span.start >= done:
            out.append(f"[REDACTED:{span.rule.detector.label}]")
        done = span.end
    if not out:
        return text
    out.append(text[done - offset :])
    return "".join(out)


def scan_text(rules: Sequence[Rule], text: str, verdict: Verdict) -> str:
    spans = find(rules, text)
    return mask(text, spans, verdict) if spans else text


def scan_request(rules: Sequence[Rule], request: ir.ChatRequest) -> tuple[ir.ChatRequest, Verdict]:
    """The request with its mask rules applied, and what was found."""
    verdict = Verdict()
    system = scan_text(rules, request.system, verdict) if request.system else request.system
    messages = [_scan_message(rules, m, verdict) for m in request.messages]
    if not verdict.matched:
        return request, verdict
    return msgspec.structs.replace(request, system=system, messages=messages), verdict


def scan_embedding(
    rules: Sequence[Rule], request: ir.EmbeddingRequest
) -> tuple[ir.EmbeddingRequest, Verdict]:
    verdict = Verdict()
    inputs = [scan_text(rules, text, verdict) for text in request.inputs]
    if not verdict.matched:
        return request, verdict
    return msgspec.structs.replace(request, inputs=inputs), verdict


def scan_response(
    rules: Sequence[Rule], response: ir.ChatResponse
) -> tuple[ir.ChatResponse, Verdict]:
    verdict = Verdict()
    content = _scan_parts(rules, response.content, verdict)
    calls = _scan_calls(rules, response.tool_calls, verdict)
    if not verdict.matched:
        return response, verdict
    return msgspec.structs.replace(response, content=content, tool_calls=calls), verdict


def _scan_message(rules: Sequence[Rule], message: ir.Message, verdict: Verdict) -> ir.Message:
    content = _scan_parts(rules, message.content, verdict)
    calls = _scan_calls(rules, message.tool_calls, verdict)
    if _same(content, message.content) and _same(calls, message.tool_calls):
        return message
    return msgspec.structs.replace(message, content=content, tool_calls=calls)


def _same(new: Sequence[object], old: Sequence[object]) -> bool:
    return all(a is b for a, b in zip(new, old, strict=True))


def _scan_parts(rules: Sequence[Rule], parts: list[ir.Part], verdict: Verdict) -> list[ir.Part]:
    out: list[ir.Part] = []
    for part in parts:
        if isinstance(part, ir.TextPart):
            text = scan_text(rules, part.text, verdict)
            out.append(part if text is part.text else ir.TextPart(text))
        else:
            out.append(part)
    return out


def _scan_calls(
    rules: Sequence[Rule], calls: list[ir.ToolCall], verdict: Verdict
) -> list[ir.ToolCall]:
    out = []
    for call in calls:
        arguments = scan_text(rules, call.arguments, verdict)
        out.append(
            call
            if arguments is call.arguments
            else msgspec.structs.replace(call, arguments=arguments)
        )
    return out
