"""The intermediate representation (IR) every wire format is translated through.

Client codecs decode their dialect into these values and encode them back; provider
codecs do the same for upstream formats. N client codecs + M provider codecs, never
N x M converters. This module imports nothing of ours and does no I/O.
"""

from __future__ import annotations

import re
from typing import Literal

import msgspec

Role = Literal["user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "error"]
# OpenAI's reasoning effort levels; each provider codec maps them to its own or refuses.
ReasoningEffort = Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]
ErrorKind = Literal[
    "invalid_request",  # 400
    "authentication",  # 401
    "permission",  # 403
    "not_found",  # 404
    "request_too_large",  # 413
    "rate_limit",  # 429
    "server_error",  # 500
    "bad_gateway",  # 502
    "overloaded",  # 503 / 529
    "timeout",  # 504
]

ERROR_STATUS: dict[str, int] = {
    "invalid_request": 400,
    "authentication": 401,
    "permission": 403,
    "not_found": 404,
    "request_too_large": 413,
    "rate_limit": 429,
    "server_error": 500,
    "bad_gateway": 502,
    "overloaded": 503,
    "timeout": 504,
}


def error_kind_for_status(status: int) -> ErrorKind:
    """The error kind a provider's HTTP status most plausibly means."""
    for kind, code in ERROR_STATUS.items():
        if code == status:
            return kind  # type: ignore[return-value]
    if status == 529:
        return "overloaded"
    if status == 422:
        return "invalid_request"
    return "invalid_request" if 400 <= status < 500 else "server_error"


# ---------------------------------------------------------------- content parts


class CacheBreakpoint(msgspec.Struct, frozen=True):
    """A prompt-cache breakpoint: the prompt up to here may be cached (Anthropic's
    `cache_control`). Providers that cache on their own (OpenAI, Gemini) drop it."""

    ttl: str | None = None  # "5m" | "1h"; None: the provider's default


class TextPart(msgspec.Struct, frozen=True, tag="text"):
    text: str
    cache: CacheBreakpoint | None = None


class ImagePart(msgspec.Struct, frozen=True, tag="image"):
    """An image given either by URL or inline as base64 data with its media type."""

    url: str | None = None
    data: str | None = None  # base64, no data: prefix
    media_type: str | None = None  # e.g. "image/png"; required with data
    cache: CacheBreakpoint | None = None


class UnknownPart(msgspec.Struct, frozen=True, tag="unknown"):
    """Content of a kind the IR does not model; kept so encoders can reject it loudly."""

    source_format: str
    raw: dict[str, object]


Part = TextPart | ImagePart | UnknownPart


class ToolCall(msgspec.Struct, frozen=True):
    id: str
    name: str
    arguments: str  # a JSON object as text, exactly as the model produced it


class Message(msgspec.Struct, frozen=True):
    """One conversation turn.

    role "tool" carries the result of one tool call: tool_call_id names the call,
    name the function (Gemini matches results by name, the others by id).
    """

    role: Role
    content: list[Part] = []
    tool_calls: list[ToolCall] = []
    tool_call_id: str | None = None
    name: str | None = None
    # A breakpoint after the turn's last block (an Anthropic tool_use or tool_result).
    cache: CacheBreakpoint | None = None


class Tool(msgspec.Struct, frozen=True):
    name: str
    description: str | None = None
    parameters: dict[str, object] = {}  # JSON schema of the arguments object
    cache: CacheBreakpoint | None = None


class ToolChoice(msgspec.Struct, frozen=True):
    mode: Literal["auto", "none", "required", "tool"] = "auto"
    name: str | None = None  # with mode "tool"


class ResponseFormat(msgspec.Struct, frozen=True):
    type: Literal["text", "json_object", "json_schema"] = "text"
    schema: dict[str, object] | None = None
    name: str | None = None
    strict: bool | None = None


class ChatRequest(msgspec.Struct, frozen=True):
    """A chat request in neutral form. `model` is the client-visible model name."""

    model: str
    messages: list[Message]
    system: str | None = None
    tools: list[Tool] = []
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    max_tokens: int | None = None
    stop: list[str] = []
    seed: int | None = None
    stream: bool = False
    # The client asked to receive usage in the stream (OpenAI stream_options.include_usage).
    stream_include_usage: bool = False
    user: str | None = None
    # Prompt caching: OpenAI's routing hint, Anthropic's top-level (automatic) breakpoint,
    # and the system prompt as the client's blocks when one of them is a breakpoint
    # (`system` is always their text joined).
    prompt_cache_key: str | None = None
    cache: CacheBreakpoint | None = None
    system_parts: list[TextPart] = []
    # UNSET rather than None: a request without it encodes as before the field existed,
    # so the cache keys hashed from requests stay what they were.
    reasoning_effort: ReasoningEffort | msgspec.UnsetType = msgspec.UNSET


# ---------------------------------------------------------------- responses


class Usage(msgspec.Struct, frozen=True):
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0  # part of input_tokens served from the provider's prompt cache
    cache_write_tokens: int = 0  # part of input_tokens written to it (Anthropic reports them)
    reasoning_tokens: int = 0  # part of output_tokens spent thinking (OpenAI, Gemini report them)

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class ChatResponse(msgspec.Struct, frozen=True):
    id: str
    model: str  # the model that answered (upstream name; the processor may rewrite it)
    content: list[Part] = []
    tool_calls: list[ToolCall] = []
    finish_reason: FinishReason = "stop"
    usage: Usage | None = None
    created: int = 0  # unix seconds


# ---------------------------------------------------------------- stream events
# A provider StreamDecoder turns upstream bytes into these; a client StreamEncoder
# turns them into the client's dialect. Tool calls are addressed by `index`, the
# position of the call within the response (0, 1, ... for parallel calls).


class StreamStart(msgspec.Struct, frozen=True, tag="start"):
    id: str
    model: str
    created: int = 0


class TextDelta(msgspec.Struct, frozen=True, tag="text"):
    text: str


class ToolCallStart(msgspec.Struct, frozen=True, tag="tool_start"):
    index: int
    id: str
    name: str


class ToolCallDelta(msgspec.Struct, frozen=True, tag="tool_delta"):
    index: int
    arguments: str  # a fragment of the JSON arguments text


class StreamUsage(msgspec.Struct, frozen=True, tag="usage"):
    usage: Usage


class StreamFinish(msgspec.Struct, frozen=True, tag="finish"):
    finish_reason: FinishReason


class StreamError(msgspec.Struct, frozen=True, tag="error"):
    error: ErrorInfo


StreamEvent = (
    StreamStart
    | TextDelta
    | ToolCallStart
    | ToolCallDelta
    | StreamUsage
    | StreamFinish
    | StreamError
)


# ---------------------------------------------------------------- errors


class ErrorInfo(msgspec.Struct, frozen=True):
    kind: ErrorKind
    message: str
    status: int = 0  # 0 -> ERROR_STATUS[kind]
    retry_after: float | None = None  # seconds
    param: str | None = None

    @property
    def http_status(self) -> int:
        return self.status or ERROR_STATUS[self.kind]


class GatewayError(Exception):
    """An error the gateway answers to the client in the client's dialect."""

    def __init__(self, info: ErrorInfo) -> None:
        super().__init__(info.message)
        self.info = info


def invalid_request(message: str, *, param: str | None = None) -> GatewayError:
    return GatewayError(ErrorInfo(kind="invalid_request", message=message, param=param))


def effort_refused(effort: str, provider: str) -> GatewayError:
    """A reasoning effort level a provider has no equivalent for."""
    return invalid_request(
        f"reasoning effort {effort!r} has no equivalent in the {provider} provider",
        param="reasoning.effort",
    )


def bad_gateway(message: str) -> GatewayError:
    """A provider answer the gateway cannot read (a 502 to the client)."""
    return GatewayError(ErrorInfo(kind="bad_gateway", message=message))


_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9_-]")


def invented_call_id(index: int, response_id: str | None = None) -> str:
    """The id of a tool call that came without one (Gemini, Ollama, OpenAI compatibles).

    `index` is the call's position in the response (or in the client's history); a
    provider that names its response passes that id too, so calls of different
    turns do not share ids. (Gemini's client history keeps its own `call_{n}_{name}`
    ids: results there are matched by function name.)
    """
    if response_id is None:
        return f"call_{index}"
    return f"call_{_UNSAFE_ID_CHARS.sub('_', response_id)}_{index}"


# ---------------------------------------------------------------- embeddings


class EmbeddingRequest(msgspec.Struct, frozen=True):
    """Embeddings to make, and how the client wants them back (filled by its decoder)."""

    model: str
    inputs: list[str]
    dimensions: int | None = None
    # OpenAI's encoding_format: the IR keeps vectors as floats, the answer may not.
    encoding_format: Literal["float", "base64"] = "float"
    batch: bool = False  # Gemini's batchEmbedContents answers a list, embedContent one


class EmbeddingResponse(msgspec.Struct, frozen=True):
    model: str
    vectors: list[list[float]]
    usage: Usage | None = None
