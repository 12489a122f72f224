"""Gemini generateContent as a client dialect: what a client SDK sends and expects back.

Decodes requests into `extproc.ir`, encodes answers, streams and errors in the
dialect's shape. Pure and synchronous; imports only the IR, framing and this
codec's own modules.
"""

from __future__ import annotations

import re
from typing import Any

from extproc import ir
from extproc.formats.gemini_generate.wire import _ENCODER, _args_object, _encode_part, _model_name
from extproc.formats.gemini_json import (
    Json,
    as_integer,
    as_list,
    as_number,
    as_object,
    as_str,
    dumps,
    field,
    loads_object,
)
from extproc.formats.gemini_schema import schema_from_gemini

_SSE_END = b"\r\n\r\n"  # generativelanguage.googleapis.com frames SSE events with CRLF
_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9_-]")


class _CallIds:
    """Ids for calls and results that lack one: results take the oldest open call of that name."""

    __slots__ = ("_count", "_open")

    def __init__(self) -> None:
        self._count = 0
        self._open: dict[str, list[str]] = {}

    def _mint(self, name: str) -> str:
        self._count += 1
        return f"call_{self._count - 1}_{_UNSAFE_ID_CHARS.sub('_', name)}"

    def call(self, name: str, given: object) -> str:
        call_id = given if isinstance(given, str) and given else self._mint(name)
        self._open.setdefault(name, []).append(call_id)
        return call_id

    def result(self, name: str, given: object) -> str:
        pending = self._open.get(name, [])
        if isinstance(given, str) and given:
            if given in pending:
                pending.remove(given)
            return given
        return pending.pop(0) if pending else self._mint(name)


def decode_request(
    body: bytes, *, path_model: str | None = None, path_stream: bool = False
) -> ir.ChatRequest:
    data = loads_object(body, "request body")
    model = path_model or data.get("model")
    if not isinstance(model, str) or not model:
        raise ir.invalid_request("the model must be given in the path: /v1beta/models/{model}")
    if field(data, "cachedContent", "cached_content") is not None:
        raise ir.invalid_request("cachedContent is not supported by this gateway")
    tools = _decode_tools(as_list(data.get("tools"), "tools"))
    tool_config = field(data, "toolConfig", "tool_config")
    tool_choice, tools = _decode_tool_choice(as_object(tool_config, "toolConfig"), tools)
    config = as_object(field(data, "generationConfig", "generation_config"), "generationConfig")
    return ir.ChatRequest(
        model=_model_name(model),
        messages=_decode_contents(as_list(data.get("contents"), "contents")),
        system=_decode_system(field(data, "systemInstruction", "system_instruction")),
        tools=tools,
        tool_choice=tool_choice if tool_config is not None else None,
        stream=path_stream,
        stream_include_usage=path_stream,  # Gemini streams always carry usageMetadata
        **_decode_generation_config(config),
    )


def _decode_system(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    parts = as_list(as_object(value, "systemInstruction").get("parts"), "systemInstruction.parts")
    texts = [p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str)]
    if len(texts) != len(parts):
        raise ir.invalid_request("systemInstruction may only contain text parts")
    return "\n".join(texts) if texts else None


def _decode_contents(contents: list[Any]) -> list[ir.Message]:
    ids = _CallIds()
    messages: list[ir.Message] = []
    for i, raw in enumerate(contents):
        where = f"contents[{i}]"
        content = as_object(raw, where)
        role = content.get("role") or "user"
        parts = [
            as_object(p, f"{where}.parts") for p in as_list(content.get("parts"), f"{where}.parts")
        ]
        if role == "model":
            messages.extend(_decode_model_turn(parts, ids, where))
        elif role in ("user", "function"):  # "function": the legacy role of results
            messages.extend(_decode_user_turn(parts, ids, where))
        else:
            raise ir.invalid_request(f"{where}.role must be 'user' or 'model'", param=where)
    if not messages:
        raise ir.invalid_request("contents must hold at least one message", param="contents")
    return messages


def _decode_model_turn(parts: list[Json], ids: _CallIds, where: str) -> list[ir.Message]:
    content: list[ir.Part] = []
    calls: list[ir.ToolCall] = []
    for part in parts:
        call = field(part, "functionCall", "function_call")
        if call is not None:
            call = as_object(call, f"{where}.functionCall")
            name = as_str(call.get("name"), f"{where}.functionCall.name")
            args = as_object(call.get("args"), f"{where}.functionCall.args")
            calls.append(
                ir.ToolCall(id=ids.call(name, call.get("id")), name=name, arguments=dumps(args))
            )
        elif (decoded := _decode_part(part, where)) is not None:
            content.append(decoded)
    if not content and not calls:
        return []
    return [ir.Message(role="assistant", content=content, tool_calls=calls)]


def _decode_user_turn(parts: list[Json], ids: _CallIds, where: str) -> list[ir.Message]:
    messages: list[ir.Message] = []
    content: list[ir.Part] = []
    for part in parts:
        result = field(part, "functionResponse", "function_response")
        if result is None:
            if (decoded := _decode_part(part, where)) is not None:
                content.append(decoded)
            continue
        if content:
            messages.append(ir.Message(role="user", content=content))
            content = []
        result = as_object(result, f"{where}.functionResponse")
        name = as_str(result.get("name"), f"{where}.functionResponse.name")
        text = dumps(as_object(result.get("response"), f"{where}.functionResponse.response"))
        call_id = ids.result(name, result.get("id"))
        messages.append(
            ir.Message(role="tool", content=[ir.TextPart(text)], tool_call_id=call_id, name=name)
        )
    if content:
        messages.append(ir.Message(role="user", content=content))
    return messages


_PART_METADATA = frozenset({"thought", "thoughtSignature", "thought_signature", "partMetadata"})


def _decode_part(part: Json, where: str) -> ir.Part | None:
    """One content part; thoughts are dropped, kinds the IR lacks stay UnknownPart."""
    if part.get("thought") is True or part.keys() <= _PART_METADATA:
        return None  # a reasoning summary or a bare signature, not conversation
    text = part.get("text")
    if isinstance(text, str):
        return ir.TextPart(text)
    inline = field(part, "inlineData", "inline_data")
    file = field(part, "fileData", "file_data")
    if isinstance(inline, dict):
        mime = field(inline, "mimeType", "mime_type")
        if isinstance(mime, str) and mime.startswith("image/"):
            data = as_str(inline.get("data"), f"{where}.inlineData.data")
            return ir.ImagePart(data=_standard_base64(data), media_type=mime)
    elif isinstance(file, dict):
        mime = field(file, "mimeType", "mime_type")
        if isinstance(mime, str) and mime.startswith("image/"):
            uri = as_str(field(file, "fileUri", "file_uri"), f"{where}.fileData.fileUri")
            return ir.ImagePart(url=uri, media_type=mime)
    return ir.UnknownPart(source_format="gemini", raw=part)


_URL_SAFE = str.maketrans("-_", "+/")


def _standard_base64(data: str) -> str:
    """Gemini reads `bytes` fields as proto3 JSON: base64 in either alphabet, padding
    optional, and google-genai sends the URL-safe alphabet. The IR carries standard,
    padded base64, which OpenAI data URLs, Anthropic and Ollama require."""
    data = data.translate(_URL_SAFE)
    return data + "=" * (-len(data) % 4)


def _decode_tools(tools: list[Any]) -> list[ir.Tool]:
    out: list[ir.Tool] = []
    for i, raw in enumerate(tools):
        tool = as_object(raw, f"tools[{i}]")
        decls = field(tool, "functionDeclarations", "function_declarations")
        if decls is None:
            kinds = ", ".join(sorted(tool)) or "empty tool"
            raise ir.invalid_request(
                f"tools[{i}] ({kinds}): only functionDeclarations are supported"
            )
        for j, decl in enumerate(as_list(decls, f"tools[{i}].functionDeclarations")):
            out.append(
                _decode_declaration(
                    as_object(decl, f"tools[{i}]"), f"tools[{i}].functionDeclarations[{j}]"
                )
            )
    return out


def _decode_declaration(decl: Json, where: str) -> ir.Tool:
    json_schema = field(decl, "parametersJsonSchema", "parameters_json_schema")
    if json_schema is not None:
        parameters = as_object(json_schema, f"{where}.parametersJsonSchema")
    elif decl.get("parameters") is not None:
        parameters = schema_from_gemini(decl["parameters"], f"{where}.parameters")
    else:
        parameters = {"type": "object", "properties": {}}
    description = decl.get("description")
    return ir.Tool(
        name=as_str(decl.get("name"), f"{where}.name"),
        description=description if isinstance(description, str) else None,
        parameters=parameters,
    )


def _decode_tool_choice(config: Json, tools: list[ir.Tool]) -> tuple[ir.ToolChoice, list[ir.Tool]]:
    calling = as_object(
        field(config, "functionCallingConfig", "function_calling_config"), "toolConfig"
    )
    mode = str(calling.get("mode") or "AUTO").upper()
    allowed = as_list(
        field(calling, "allowedFunctionNames", "allowed_function_names"), "allowedFunctionNames"
    )
    if mode == "NONE":
        return ir.ToolChoice(mode="none"), tools
    if mode != "ANY":  # AUTO, VALIDATED, MODE_UNSPECIFIED
        return ir.ToolChoice(mode="auto"), tools
    if len(allowed) == 1:
        return ir.ToolChoice(mode="tool", name=as_str(allowed[0], "allowedFunctionNames")), tools
    if allowed:  # "any of these": the IR says it by offering only these tools
        return ir.ToolChoice(mode="required"), [t for t in tools if t.name in allowed]
    return ir.ToolChoice(mode="required"), tools


def _decode_generation_config(config: Json) -> dict[str, Any]:
    count = as_integer(field(config, "candidateCount", "candidate_count"), "candidateCount")
    if count is not None and count > 1:
        raise ir.invalid_request("candidateCount > 1 is not supported", param="candidateCount")
    stop = as_list(field(config, "stopSequences", "stop_sequences"), "stopSequences")
    if not all(isinstance(s, str) for s in stop):
        raise ir.invalid_request("stopSequences must be strings", param="stopSequences")
    return {
        "temperature": as_number(config.get("temperature"), "temperature"),
        "top_p": as_number(field(config, "topP", "top_p"), "topP"),
        "top_k": as_integer(field(config, "topK", "top_k"), "topK"),
        "max_tokens": as_integer(
            field(config, "maxOutputTokens", "max_output_tokens"), "maxOutputTokens"
        ),
        "stop": stop,
        "seed": as_integer(config.get("seed"), "seed"),
        "response_format": _decode_response_format(config),
    }


def _decode_response_format(config: Json) -> ir.ResponseFormat | None:
    mime = field(config, "responseMimeType", "response_mime_type")
    json_schema = field(config, "responseJsonSchema", "response_json_schema")
    schema = field(config, "responseSchema", "response_schema")
    if json_schema is not None:
        return ir.ResponseFormat(
            type="json_schema", schema=as_object(json_schema, "responseJsonSchema")
        )
    if schema is not None:
        return ir.ResponseFormat(
            type="json_schema", schema=schema_from_gemini(schema, "responseSchema")
        )
    if mime == "application/json":
        return ir.ResponseFormat(type="json_object")
    if mime in (None, "text/plain"):
        return None
    raise ir.invalid_request(
        f"responseMimeType {mime!r} is not supported", param="responseMimeType"
    )


_FINISH_OUT: dict[str, str] = {
    "stop": "STOP",
    "tool_calls": "STOP",  # Gemini says STOP also after function calls
    "length": "MAX_TOKENS",
    "content_filter": "SAFETY",
    "error": "OTHER",
}
_ERROR_STATUS_OUT: dict[str, str] = {
    "invalid_request": "INVALID_ARGUMENT",
    "authentication": "UNAUTHENTICATED",
    "permission": "PERMISSION_DENIED",
    "not_found": "NOT_FOUND",
    "request_too_large": "INVALID_ARGUMENT",
    "rate_limit": "RESOURCE_EXHAUSTED",
    "server_error": "INTERNAL",
    "bad_gateway": "UNAVAILABLE",
    "overloaded": "UNAVAILABLE",
    "timeout": "DEADLINE_EXCEEDED",
}


def encode_response(resp: ir.ChatResponse) -> bytes:
    parts = [_encode_part(p) for p in resp.content]
    calls, malformed = _function_call_parts(resp.tool_calls)
    parts.extend(calls)
    finish = "MALFORMED_FUNCTION_CALL" if malformed else _FINISH_OUT[resp.finish_reason]
    content: Json = {"parts": parts, "role": "model"} if parts else {"role": "model"}
    body: Json = {"candidates": [{"content": content, "finishReason": finish, "index": 0}]}
    if resp.usage is not None:
        body["usageMetadata"] = _encode_usage(resp.usage)
    body["modelVersion"] = resp.model
    body["responseId"] = resp.id
    return _ENCODER.encode(body)


def _function_call_parts(calls: list[ir.ToolCall]) -> tuple[list[Json], bool]:
    """functionCall parts; a call whose arguments are not a JSON object cannot be
    expressed in Gemini and is reported as MALFORMED_FUNCTION_CALL, as Gemini does."""
    parts: list[Json] = []
    malformed = False
    for call in calls:
        args = _args_object(call.arguments)
        if args is None:
            malformed = True
        else:
            parts.append({"functionCall": {"id": call.id, "name": call.name, "args": args}})
    return parts, malformed


def _encode_usage(usage: ir.Usage) -> Json:
    # Gemini counts thoughts apart from the candidates; the IR's output includes them.
    out: Json = {
        "promptTokenCount": usage.input_tokens,
        "candidatesTokenCount": usage.output_tokens - usage.reasoning_tokens,
        "totalTokenCount": usage.total_tokens,
    }
    if usage.cached_tokens:
        out["cachedContentTokenCount"] = usage.cached_tokens
    if usage.reasoning_tokens:
        out["thoughtsTokenCount"] = usage.reasoning_tokens
    return out


class StreamEncoder:
    """IR stream events -> Gemini SSE chunks. Function calls are buffered and sent whole
    in the last chunk, which also carries finishReason and usageMetadata."""

    __slots__ = ("_calls", "_done", "_finish", "_id", "_include_usage", "_model", "_usage")

    def __init__(self, *, include_usage: bool = True) -> None:
        self._include_usage = include_usage
        self._id = ""
        self._model = ""
        self._calls: dict[int, tuple[str, str, list[str]]] = {}
        self._finish: ir.FinishReason | None = None
        self._usage: ir.Usage | None = None
        self._done = False

    def feed(self, events: list[ir.StreamEvent]) -> bytes:
        out: list[bytes] = []
        for event in events:
            if self._done:
                break
            if isinstance(event, ir.TextDelta):
                if event.text:
                    out.append(self._chunk({"parts": [{"text": event.text}], "role": "model"}))
            elif isinstance(event, ir.ToolCallStart):
                self._calls[event.index] = (event.id, event.name, [])
            elif isinstance(event, ir.ToolCallDelta) and event.index in self._calls:
                self._calls[event.index][2].append(event.arguments)
            else:
                out.append(self._control(event))
        return b"".join(out)

    def finish(self) -> bytes:
        return b"" if self._done else self._last_chunk()

    def _control(self, event: ir.StreamEvent) -> bytes:
        if isinstance(event, ir.StreamStart):
            self._id, self._model = event.id, event.model
        elif isinstance(event, ir.StreamUsage):
            self._usage = event.usage
        elif isinstance(event, ir.StreamFinish):
            self._finish = event.finish_reason
        elif isinstance(event, ir.StreamError):
            self._done = True
            return b"data: " + encode_error(event.error) + _SSE_END
        ready = self._finish is not None and (self._usage is not None or not self._include_usage)
        return self._last_chunk() if ready else b""

    def _last_chunk(self) -> bytes:
        self._done = True
        calls = [
            ir.ToolCall(id=i, name=n, arguments="".join(a)) for i, n, a in self._calls.values()
        ]
        parts, malformed = _function_call_parts(calls)
        finish = _FINISH_OUT[self._finish or "stop"]
        content = {"parts": parts or [{"text": ""}], "role": "model"}
        usage = self._usage if self._include_usage else None
        return self._chunk(content, "MALFORMED_FUNCTION_CALL" if malformed else finish, usage)

    def _chunk(
        self, content: Json, finish: str | None = None, usage: ir.Usage | None = None
    ) -> bytes:
        candidate: Json = {"content": content, "index": 0}
        if finish is not None:
            candidate["finishReason"] = finish
        body: Json = {"candidates": [candidate]}
        if usage is not None:
            body["usageMetadata"] = _encode_usage(usage)
        body["modelVersion"] = self._model
        body["responseId"] = self._id
        return b"data: " + _ENCODER.encode(body) + _SSE_END


def encode_error(err: ir.ErrorInfo) -> bytes:
    """Google's error shape (https://ai.google.dev/gemini-api/docs/troubleshooting)."""
    error: Json = {
        "code": err.http_status,
        "message": err.message,
        "status": _ERROR_STATUS_OUT[err.kind],
    }
    if err.retry_after is not None:
        delay = f"{err.retry_after:.3f}".rstrip("0").rstrip(".")
        error["details"] = [
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{delay}s"}
        ]
    return _ENCODER.encode({"error": error})


def decode_embedding_request(
    body: bytes, *, path_model: str | None = None, batch_path: bool = False
) -> ir.EmbeddingRequest:
    """A client's embedContent or batchEmbedContents body (told apart by `requests`).

    `batch_path` says the client called :batchEmbedContents, which answers a list.
    """
    data = loads_object(body, "request body")
    model = path_model or data.get("model")
    if not isinstance(model, str) or not model:
        raise ir.invalid_request("the model must be given in the path: /v1beta/models/{model}")
    batch = "requests" in data
    items = (
        [as_object(r, "requests[]") for r in as_list(data.get("requests"), "requests")]
        if batch
        else [data]
    )
    if not items:
        raise ir.invalid_request("requests must not be empty", param="requests")
    inputs = [_embedding_text(item) for item in items]
    dims = {
        as_integer(
            field(item, "outputDimensionality", "output_dimensionality"), "outputDimensionality"
        )
        for item in items
    }
    if len(dims) > 1:
        raise ir.invalid_request("all requests must ask for the same outputDimensionality")
    return ir.EmbeddingRequest(
        model=_model_name(model), inputs=inputs, dimensions=dims.pop(), batch=batch_path
    )


def _embedding_text(item: Json) -> str:
    parts = as_list(as_object(item.get("content"), "content").get("parts"), "content.parts")
    texts = [p.get("text") for p in parts if isinstance(p, dict)]
    if not texts or not all(isinstance(t, str) for t in texts):
        raise ir.invalid_request("embedding content must hold text parts only", param="content")
    return "\n".join(texts)  # type: ignore[arg-type]


def encode_embedding_response(resp: ir.EmbeddingResponse, *, batch: bool) -> bytes:
    embeddings = [{"values": vector} for vector in resp.vectors]
    if batch:
        return _ENCODER.encode({"embeddings": embeddings})
    return _ENCODER.encode({"embedding": embeddings[0] if embeddings else {"values": []}})
