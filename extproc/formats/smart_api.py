"""The simple prompt API, `POST /api/smart` (client side only).

Request: `{"prompt": "...", "model"?: "...", "system"?: "...", "stream"?: bool}`.
Response: `{"text", "model", "provider", "usage": {"input_tokens", "output_tokens"},
"cached"}`; with `"stream": true` an SSE stream of `{"text": "<delta>"}` events
ending with `data: [DONE]`. Errors are `{"error": {"message", "type"}}`.

Unlike the other codecs it is no provider format, and its response names what the
IR response does not hold (the provider, whether the cache answered): the caller
passes those. Without a `model` the request goes to the config's model named
`default`; the caller says whether there is one.
"""

from __future__ import annotations

import msgspec

from extproc import ir
from extproc.formats.base import RequestLine

STREAM_CONTENT_TYPE = "text/event-stream"
DEFAULT_MODEL = "default"


class _Request(msgspec.Struct):
    prompt: str | None = None
    model: str | None = None
    system: str | None = None
    stream: bool | None = None


_request = msgspec.json.Decoder(_Request)
_encode = msgspec.json.encode
_DONE = b"data: [DONE]\n\n"


def decode_request(body: bytes, *, default_model: str | None) -> ir.ChatRequest:
    """A /api/smart body as an IR chat request (one user turn)."""
    try:
        req = _request.decode(body)
    except msgspec.ValidationError as exc:
        raise ir.invalid_request(f"invalid request body: {exc}") from None
    except (msgspec.DecodeError, UnicodeDecodeError):
        raise ir.invalid_request("request body is not valid JSON") from None
    if not req.prompt:
        raise ir.invalid_request("`prompt` is required", param="prompt")
    model = req.model or default_model
    if not model:
        raise ir.invalid_request(
            f"no `model` given and no model named `{DEFAULT_MODEL}` in the config", param="model"
        )
    return ir.ChatRequest(
        model=model,
        messages=[ir.Message("user", [ir.TextPart(req.prompt)])],
        system=req.system or None,
        stream=bool(req.stream),
    )


def _text(parts: list[ir.Part]) -> str:
    return "".join(part.text for part in parts if isinstance(part, ir.TextPart))


def encode_response(resp: ir.ChatResponse, *, provider: str, cached: bool) -> bytes:
    usage = resp.usage or ir.Usage()
    return _encode(
        {
            "text": _text(resp.content),
            "model": resp.model,
            "provider": provider,
            "usage": {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens},
            "cached": cached,
        }
    )


def encode_error(err: ir.ErrorInfo) -> bytes:
    return _encode({"error": {"message": err.message, "type": err.kind}})


def _event(body: object) -> bytes:
    return b"data: " + _encode(body) + b"\n\n"


class StreamEncoder:
    """IR stream events -> `data: {"text": ...}` SSE events, then `data: [DONE]`.

    Only text is shown (the API has no tools); an error ends the stream with an
    `{"error": ...}` event before `[DONE]`.
    """

    def __init__(self, *, include_usage: bool = True) -> None:
        self._finished = False
        self._closed = False

    def feed(self, events: list[ir.StreamEvent]) -> bytes:
        out: list[bytes] = []
        for event in events:
            if self._closed:
                break
            if isinstance(event, ir.TextDelta) and event.text:
                out.append(_event({"text": event.text}))
            elif isinstance(event, ir.StreamFinish):
                self._finished = True
            elif isinstance(event, ir.StreamError):
                out.append(self._error(event.error.message))
        return b"".join(out)

    def finish(self) -> bytes:
        if self._closed:
            return b""
        if not self._finished:
            return self._error("upstream stream ended before completion")
        self._closed = True
        return _DONE

    def _error(self, message: str) -> bytes:
        self._closed = True
        return _event({"error": {"message": message}}) + _DONE


class _Client:
    """The /api/smart dialect: client side only, and it has no embeddings."""

    STREAM_CONTENT_TYPE = STREAM_CONTENT_TYPE
    embeddings = None
    StreamEncoder = StreamEncoder
    encode_error = staticmethod(encode_error)
    encode_response = staticmethod(encode_response)

    def decode_request(self, body: bytes, line: RequestLine) -> ir.ChatRequest:
        return decode_request(body, default_model=line.default_model)


CLIENT = _Client()
