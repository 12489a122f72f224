"""One attempt's response in the client's dialect: stream codecs, usage meter, cache assembler.

A `ResponseTranslator` turns the provider's answer (one buffered body, or a
stream chunk by chunk) into the client's shape, meters the tokens it carries
and rebuilds a streamed answer for the cache. It records what it reads in the
attempt's state (model, finish reason, first token). It must not do I/O, count
metrics or decide anything about the attempt: attempt.py does. (The response
guardrails it is handed count their own decisions: guarding.py.)
"""

from __future__ import annotations

import time

import msgspec

from extproc import ir
from extproc.decisions import cache, providers
from extproc.decisions.usage import UsageMeter
from extproc.formats import openai_responses
from extproc.formats.base import StreamDecoder, StreamEncoder
from extproc.formats.registry import CLIENT_CODECS
from extproc.phases import conversation
from extproc.phases.guarding import ResponseGuard
from extproc.phases.plan import AttemptPlan, AttemptState
from extproc.phases.translation import (
    chat_stream_encoder,
    decode_embedding_response,
    encode_chat_response,
    encode_embedding_response,
)


class ResponseTranslator:
    """Translates, meters and assembles the response of one attempt."""

    __slots__ = ("answer", "assembler", "decoder", "encoder", "guard", "meter", "plan", "state")

    def __init__(
        self, plan: AttemptPlan, state: AttemptState, guard: ResponseGuard | None = None
    ) -> None:
        self.plan = plan
        self.state = state
        self.guard = guard  # response guardrails: masks (or blocks) before the client sees
        self.meter = UsageMeter()
        self.meter.estimate_input(plan.info.client_bytes)
        self.decoder: StreamDecoder | None = None  # set when a stream starts
        self.encoder: StreamEncoder | None = None
        self.assembler: cache.ResponseAssembler | None = None  # a stream to cache
        self.answer: ir.ChatResponse | None = None  # a complete buffered answer, to cache

    @property
    def streaming(self) -> bool:
        return self.decoder is not None

    def start_stream(self) -> None:
        """The provider answered 200 to a streamed request: translate chunk by chunk."""
        plan = self.plan
        info = plan.info
        if plan.passthrough:  # the provider's events go out as they are: read, not encoded
            self.decoder = openai_responses.EventReader()
            return
        self.decoder = providers.codec_for(plan.provider).StreamDecoder()
        self.encoder = chat_stream_encoder(info.dialect, info.operation, plan.include_usage)
        if info.cache_key is not None or info.response_key is not None:
            self.assembler = cache.ResponseAssembler()

    def chunk(self, body: bytes, end_of_stream: bool) -> bytes:
        decoder, encoder = self.decoder, self.encoder
        if decoder is None:
            raise RuntimeError("a stream chunk before the stream started")
        events = decoder.feed(body) if body else []
        if end_of_stream:
            events += decoder.finish()
        if encoder is None:  # passthrough: metered, sent as the provider wrote it
            self.meter.observe_events(events)
            self.note_events(events)
            if isinstance(decoder, openai_responses.EventReader) and decoder.cut:
                return body + decoder.cut_event()  # never a silent end without a terminator
            return body
        if self.plan.info.response_id is not None:
            events = conversation.renamed(events, self.plan.info.response_id)
        self.meter.observe_events(events)
        self.note_events(events)
        if self.guard is not None:  # after metering (the provider's tokens), before the cache
            events = self.guard.events(events, end_of_stream)
        if self.assembler is not None:
            self.assembler.feed(events)
        out = encoder.feed(events) if events else b""
        if end_of_stream:
            out += encoder.finish()
        return out

    def note_events(self, events: list[ir.StreamEvent]) -> None:
        state = self.state
        for event in events:
            if isinstance(event, ir.TextDelta | ir.ToolCallStart | ir.ToolCallDelta):
                if not state.first_token and (not isinstance(event, ir.TextDelta) or event.text):
                    state.first_token = time.perf_counter()  # the first content
            elif isinstance(event, ir.StreamFinish):
                state.finish_reason = event.finish_reason
            elif isinstance(event, ir.StreamStart):
                state.response_model = event.model
            elif isinstance(event, ir.StreamError) and not state.first_token:
                state.early_error = event.error  # held_response.py fails the attempt over

    def response(self, body: bytes) -> bytes:
        """A buffered 2xx answer; raises GatewayError when the body cannot be read."""
        plan, state = self.plan, self.state
        info = plan.info
        if isinstance(plan.request, ir.EmbeddingRequest):
            embedded = decode_embedding_response(plan.provider, body)
            self.meter.observe_usage(embedded.usage)
            state.response_model = embedded.model
            return encode_embedding_response(info.dialect, plan.request, embedded)
        if plan.passthrough:
            read = openai_responses.read_response(body)
            self.meter.observe_usage(read.usage)
            state.finish_reason, state.response_model = read.finish_reason, read.model
            return body
        chat = providers.codec_for(plan.provider).decode_response(body)
        if info.response_id is not None:  # the Responses API's id is the gateway's
            chat = msgspec.structs.replace(chat, id=info.response_id)
        self.meter.observe_usage(chat.usage)
        state.finish_reason = chat.finish_reason
        state.response_model = chat.model
        if self.guard is not None:
            chat = self.guard.response(chat)
        self.answer = chat
        return encode_chat_response(
            info.dialect, info.operation, chat, provider=plan.provider.name, cached=False
        )

    def error(self, body: bytes) -> bytes:
        """The provider's error in the client's dialect."""
        return self.client_error(self.upstream_error(body))

    def client_error(self, info: ir.ErrorInfo) -> bytes:
        return CLIENT_CODECS[self.plan.info.dialect].encode_error(info)

    def upstream_error(self, body: bytes) -> ir.ErrorInfo:
        """The provider's error, with its Retry-After header when the body has none."""
        state = self.state
        codec = providers.codec_for(self.plan.provider)
        info = codec.decode_error(state.status, body)
        if info.retry_after is None and state.retry_after:
            seconds = parse_retry_after(state.retry_after, 0.0)
            if seconds > 0:
                info = msgspec.structs.replace(info, retry_after=seconds)
        return info

    def cacheable(self) -> ir.ChatResponse | None:
        """The complete answer (streamed or buffered), or None when there is none."""
        return self.assembler.complete() if self.assembler is not None else self.answer


def parse_retry_after(value: str | None, default: float) -> float:
    try:
        return max(0.001, float(value)) if value else default
    except ValueError:
        return default  # an HTTP date: rare from LLM providers
