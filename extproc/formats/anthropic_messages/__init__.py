"""Anthropic Messages API codec (`POST /v1/messages`), client side and provider side.

Owns the Anthropic wire format — request JSON, the `message` object, the named-event
SSE stream and the error JSON — and its translation to and from `extproc.ir`. Pure
and synchronous: no I/O, no module state beyond stateless msgspec encoders, imports
only `ir` and `framing`.

Docs: https://docs.anthropic.com/en/api/messages,
https://docs.anthropic.com/en/docs/build-with-claude/streaming,
https://docs.anthropic.com/en/api/errors,
https://platform.claude.com/docs/en/build-with-claude/structured-outputs.

Quirks and deliberate losses:
* `tool_result` blocks live inside user turns; they become IR "tool" messages (the
  function name is looked up from the earlier `tool_use` with the same id). Going
  upstream, tool messages fold back into user turns and consecutive same-role turns
  are merged, because Anthropic requires user/assistant alternation.
* Anthropic `input_tokens` excludes prompt-cache reads and writes; IR input_tokens
  includes them (reads are also counted in cached_tokens, writes in cache_write_tokens).
* JSON schema output is `output_config.format` (GA; the beta `output_format` is read
  too). There is no schema-less JSON mode, so IR json_object is refused upstream.
* `cache_control` breakpoints are kept (IR `cache` on parts, tools, turns and the
  request; system blocks with one stay blocks) and sent back to Anthropic; a
  tool_use's breakpoint moves to the end of its assistant turn.
* Dropped, not represented in the IR: assistant `thinking`/`redacted_thinking`
  blocks, `tool_result.is_error`, `tools[].strict`, the top-level
  `thinking` / `output_config.effort` settings, and (upstream) the IR seed, which is
  a sampling hint Anthropic has no parameter for.
* Content the IR does not model survives as `UnknownPart(source_format="anthropic")`
  and is sent back verbatim to Anthropic; other formats' unknown parts are refused.

Split by side: `wire` (shapes both sides share), `client`, `provider`, `count`
(/v1/messages/count_tokens); this
module names the public functions and the codec objects the registry holds.
"""

from __future__ import annotations

from extproc.formats.anthropic_messages.client import StreamEncoder, encode_error, encode_response
from extproc.formats.anthropic_messages.provider import (
    DEFAULT_MAX_TOKENS,
    StreamDecoder,
    decode_error,
    decode_response,
    encode_request,
    upstream_path,
)
from extproc.formats.anthropic_messages.request import decode_request
from extproc.formats.anthropic_messages.wire import SOURCE_FORMAT, STREAM_CONTENT_TYPE
from extproc.formats.base import FormatClient, FormatProvider, Header

__all__ = [
    "CLIENT",
    "DEFAULT_MAX_TOKENS",
    "SOURCE_FORMAT",
    "STREAM_CONTENT_TYPE",
    "StreamDecoder",
    "StreamEncoder",
    "decode_error",
    "decode_request",
    "decode_response",
    "encode_error",
    "encode_request",
    "encode_response",
    "provider",
    "upstream_path",
]


# The /v1/messages dialect (it has no embeddings).
CLIENT = FormatClient(
    STREAM_CONTENT_TYPE, decode_request, encode_response, StreamEncoder, encode_error
)


def provider(anthropic_version: str) -> FormatProvider:
    """Anthropic: its own key header, and the API version the config asks for."""

    def auth_headers(api_key: str) -> list[Header]:
        return [("x-api-key", api_key), ("anthropic-version", anthropic_version)]

    return FormatProvider(
        auth_headers, upstream_path, encode_request, decode_response, StreamDecoder, decode_error
    )
