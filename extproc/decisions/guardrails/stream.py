"""Guardrails on a streamed answer, chunk by chunk, without buffering it.

`TextScanner` scans one content stream (the text, or one tool call's arguments) as it
grows. It emits at once every character that cannot belong to a match, and holds back
only a tail that may still become one: the earliest partial match at the end of what
has arrived (`regex`'s partial matching). The tail is never longer than the rules'
longest match (`window`, the detectors' `max_length`): a match longer than that is
not caught in a stream. What is held is flushed, scanned, at the end of the content.
So masking delays only the last few characters, and a match split across chunks is
masked before any part of it leaves.

`StreamGuard` applies the scanners to IR stream events; a `block` rule's match ends
the stream with an in-band error event. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import regex

from extproc import ir
from extproc.decisions.guardrails.rules import Rule
from extproc.decisions.guardrails.scan import Span, Verdict, find, mask, refined

CONTEXT = 64  # characters already sent that lookbehinds and \b may still look at


class TextScanner:
    """One content stream's scanner: feed text, get what may leave now."""

    __slots__ = ("context", "pending", "rules", "verdict", "window")

    def __init__(self, rules: Sequence[Rule], verdict: Verdict) -> None:
        self.rules = rules
        self.verdict = verdict
        self.window = max(r.detector.max_length for r in rules)
        self.context = ""  # the end of what was sent, for lookbehinds
        self.pending = ""  # held back: may be the start of a match

    def feed(self, text: str) -> str:
        buffer = self.context + self.pending + text
        base = len(self.context)
        spans, hold = self._matches(buffer, base)
        hold = self._settle(spans, hold, len(buffer) - self.window)
        hold = max(hold, base)
        out = mask(buffer[base:hold], [s for s in spans if s.end <= hold], self.verdict, base)
        self.pending = buffer[hold:]
        self.context = buffer[max(0, hold - CONTEXT) : hold]
        return out

    def flush(self) -> str:
        """The held tail, scanned as final (the content ended)."""
        buffer, base = self.context + self.pending, len(self.context)
        self.pending = ""
        spans = find(self.rules, buffer, base)
        self.context = buffer[-CONTEXT:]
        return mask(buffer[base:], spans, self.verdict, base)

    def _matches(self, buffer: str, base: int) -> tuple[list[Span], int]:
        """Complete matches, and where the earliest match that may still grow starts."""
        spans: list[Span] = []
        hold = size = len(buffer)
        folded: str | None = None
        for rule in self.rules:
            detector = rule.detector
            if detector.prefixes is not None:
                folded = buffer.lower() if folded is None and detector.fold else folded
                hay = folded if detector.fold and folded is not None else buffer
                if len(hay) == size:
                    hold = min(hold, anchored(rule, hay, base, spans))
                    continue
            for match in detector.pattern.finditer(buffer, base, partial=True):
                start, end = match.span()
                if end == size or match.partial:
                    if start < size:  # more text could still change this match
                        hold = min(hold, start)
                else:
                    span = refined(detector, buffer, start, end)
                    if span is not None:
                        spans.append(Span(*span, rule))
        spans.sort()
        return spans, hold

    @staticmethod
    def _settle(spans: list[Span], hold: int, floor: int) -> int:
        """Never cut a complete match: hold from its start, or (too far back) send it whole."""
        hold = max(hold, floor)
        moved = True
        while moved:
            moved = False
            for span in spans:
                if span.start < hold < span.end:
                    hold = span.start if span.start >= floor else span.end
                    moved = True
        return hold


def anchored(rule: Rule, hay: str, base: int, spans: list[Span]) -> int:
    """A detector whose matches start at an anchor literal, tried only there (it is cheaper
    than its whole pattern at every position); adds its complete matches to `spans` and
    returns where one that may still grow starts (len(hay): none)."""
    detector, size = rule.detector, len(hay)
    starts: list[tuple[int, regex.Pattern[str]]] = []
    for literal, _, pattern in detector.anchors:
        at = hay.find(literal, base)
        while at >= 0:
            starts.append((at, cast("regex.Pattern[str]", pattern)))  # `prefixes`: regex
            at = hay.find(literal, at + 1)
    starts.sort(key=lambda start: start[0])
    done = base
    for start, pattern in starts:
        if start < done:
            continue
        match = pattern.match(hay, start, partial=True)
        if match is None or match.end() <= start:
            continue
        if match.partial or match.end() == size:
            return start  # what follows waits with it
        spans.append(Span(start, match.end(), rule))
        done = match.end()
    return _begun_literal(detector.prefixes or frozenset(), hay, max(base, done))


def _begun_literal(prefixes: frozenset[str], hay: str, base: int) -> int:
    """Where an anchor literal begins at the end of `hay` (at a word start), or len(hay)."""
    size = len(hay)
    for k in range(min(size - base, LONGEST_LITERAL), 0, -1):
        if hay[size - k :] in prefixes and not (
            hay[size - k].isalnum() and hay[size - k - 1 : size - k].isalnum()
        ):
            return size - k
    return size


LONGEST_LITERAL = 16  # longer than any anchor literal of the built-in detectors


class StreamGuard:
    """Scans a stream's text and tool-call arguments; masks, or ends it on a block."""

    __slots__ = ("blocked", "rules", "scanners", "verdict")

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = rules
        self.verdict = Verdict()
        self.scanners: dict[int, TextScanner] = {}  # -1: the text; n: tool call n's arguments
        self.blocked = False  # the stream was ended: drop the rest

    def feed(self, events: Sequence[ir.StreamEvent], end: bool = False) -> list[ir.StreamEvent]:
        out: list[ir.StreamEvent] = []
        if self.blocked:
            return []
        for event in events:
            if self.verdict.blocked is not None:
                break
            if isinstance(event, ir.TextDelta):
                self._emit(out, -1, self._scanner(-1).feed(event.text))
            elif isinstance(event, ir.ToolCallDelta):
                self._emit(out, event.index, self._scanner(event.index).feed(event.arguments))
            else:
                # What was held belongs before a new tool call or the end of the answer.
                self._flush(out)
                out.append(event)
        if end:
            self._flush(out)
        return self._blocked(out)

    def _scanner(self, index: int) -> TextScanner:
        scanner = self.scanners.get(index)
        if scanner is None:
            scanner = self.scanners[index] = TextScanner(self.rules, self.verdict)
        return scanner

    def _flush(self, out: list[ir.StreamEvent]) -> None:
        for index, scanner in self.scanners.items():
            if scanner.pending:
                self._emit(out, index, scanner.flush())

    def _emit(self, out: list[ir.StreamEvent], index: int, text: str) -> None:
        if text:
            out.append(ir.TextDelta(text) if index < 0 else ir.ToolCallDelta(index, text))

    def _blocked(self, out: list[ir.StreamEvent]) -> list[ir.StreamEvent]:
        """Once a block rule matched: nothing of this batch goes out but the error."""
        rule = self.verdict.blocked
        if rule is None:
            return out
        self.blocked = True
        return [ir.StreamError(blocked_error(rule))]


def blocked_error(rule: Rule) -> ir.ErrorInfo:
    """The client's error: names the rule, never what matched."""
    return ir.ErrorInfo(
        kind="invalid_request",
        message=f"blocked by the gateway's guardrail '{rule.name}'",
        param="guardrail",
    )
