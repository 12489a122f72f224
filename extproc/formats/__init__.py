"""One pure codec per wire format; every codec translates to and from `extproc.ir`.

Each format module (openai_chat, anthropic_messages, gemini_generate, ollama_chat)
offers both sides, because every API is both a client dialect and a provider
(smart_api, the simple /api/smart prompt API, is client-side only: its
decode_request takes `default_model` and its encode_response `provider` and `cached`):

Client side (what a client SDK sends and expects back):
    decode_request(body: bytes, *, path_model: str | None = None,
                   path_stream: bool = False) -> ir.ChatRequest
        raises ir.GatewayError (kind "invalid_request") on bad input.
    encode_response(resp: ir.ChatResponse) -> bytes
    StreamEncoder(*, include_usage: bool = True)
        .feed(events: list[ir.StreamEvent]) -> bytes
        .finish() -> bytes      # the dialect's terminator if not sent yet
    encode_error(err: ir.ErrorInfo) -> bytes      # status is err.http_status
    STREAM_CONTENT_TYPE: str

Provider side (what the gateway sends upstream and reads back):
    encode_request(req: ir.ChatRequest, *, model: str) -> bytes
        raises ir.GatewayError(invalid_request) for features the provider lacks.
    upstream_path(*, model: str, stream: bool) -> str
    decode_response(body: bytes) -> ir.ChatResponse
    StreamDecoder()
        .feed(chunk: bytes) -> list[ir.StreamEvent]
        .finish() -> list[ir.StreamEvent]   # StreamError if the stream was cut
    decode_error(status: int, body: bytes) -> ir.ErrorInfo

Codecs never import grpc, redis, opentelemetry, config, nor each other (only
`framing` and `ir`).
"""
