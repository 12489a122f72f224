"""Gemini API (AI Studio, generativelanguage) generateContent codec, both sides.

Owns the wire format of `POST /v1beta/models/{model}:generateContent`,
`:streamGenerateContent?alt=sse`, `:embedContent` and `:batchEmbedContents`
(https://ai.google.dev/api/generate-content, https://ai.google.dev/api/embeddings):
client side (decode what google-genai and curl send, encode what they expect back)
and provider side (build upstream requests, read upstream answers and SSE streams).
Pure and synchronous: bytes in, `extproc.ir` out and back; no I/O, no module state,
no imports of other codecs. Field type checks live in gemini_json.py, the JSON-schema
translation for tools and response schemas in gemini_schema.py.

Wire quirks handled here:
* the model and the streaming flag live in the URL path, not in the body;
* the REST API accepts camelCase and snake_case field names; google-genai sends
  camelCase and upper-case schema types ("OBJECT");
* functionCall/functionResponse may lack `id`: results are matched to calls by name,
  in order, and get deterministic ids from their position in the conversation;
* SSE events are framed with CRLF ("data: {...}\\r\\n\\r\\n"), there is no [DONE]:
  the chunk carrying `finishReason` is the last one; function calls arrive whole;
* finishReason is STOP also when the model called functions;
* `parameters`/`responseSchema` accept only an OpenAPI subset of JSON schema.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from extproc import ir
from extproc.formats.framing import SSEParser
from extproc.formats.gemini_json import (
    DECODER,
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
from extproc.formats.gemini_schema import schema_from_gemini, schema_to_gemini

STREAM_CONTENT_TYPE = "text/event-stream"

_ENCODER = msgspec.json.Encoder()
_SSE_END = b"\r\n\r\n"  # generativelanguage.googleapis.com frames SSE events with CRLF
# Google's documented stand-in for a thought signature the gateway cannot replay
# (https://ai.google.dev/gemini-api/docs/thought-signatures, FAQ): Gemini 3 rejects
# function calls in the history that carry none.
_DUMMY_SIGNATURE = "skip_thought_signature_validator"
_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9_-]")


def _model_name(model: str) -> str:
    return model.removeprefix("models/")


def _args_object(arguments: str) -> Json | None:
    """Tool-call arguments as the object Gemini wants; None when they are not one."""
    if not arguments.strip():
        return {}
    try:
        value = DECODER.decode(arguments)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


# ---------------------------------------------------------------- client side: requests


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


# ---------------------------------------------------------------- client side: responses

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
    out: Json = {
        "promptTokenCount": usage.input_tokens,
        "candidatesTokenCount": usage.output_tokens,
        "totalTokenCount": usage.total_tokens,
    }
    if usage.cached_tokens:
        out["cachedContentTokenCount"] = usage.cached_tokens
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


# ---------------------------------------------------------------- provider side: requests


def upstream_path(*, model: str, stream: bool) -> str:
    verb = "streamGenerateContent?alt=sse" if stream else "generateContent"
    return f"/v1beta/models/{_model_name(model)}:{verb}"


def encode_request(req: ir.ChatRequest, *, model: str) -> bytes:
    del model  # Gemini takes the model from the path (upstream_path)
    body: Json = {"contents": _encode_contents(req.messages)}
    if req.system:
        body["systemInstruction"] = {"parts": [{"text": req.system}]}
    if req.tools:
        body["tools"] = [{"functionDeclarations": [_encode_tool(t) for t in req.tools]}]
    if req.tool_choice is not None:
        body["toolConfig"] = {"functionCallingConfig": _encode_tool_choice(req.tool_choice)}
    config = _encode_generation_config(req)
    if config:
        body["generationConfig"] = config
    return _ENCODER.encode(body)


def _encode_contents(messages: list[ir.Message]) -> list[Json]:
    contents: list[Json] = []
    names: dict[str, str] = {}  # tool call id -> function name, to address results
    for i, msg in enumerate(messages):
        if msg.role == "tool":
            role, parts = "user", [_encode_tool_result(msg, names, i)]
        else:
            role = "model" if msg.role == "assistant" else "user"
            parts = _encode_message_parts(msg, names, i)
        if not parts:
            continue
        if contents and contents[-1]["role"] == role:  # e.g. tool results + user text: one turn
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
    if not contents:
        raise ir.invalid_request("the gemini provider needs at least one non-empty message")
    return contents


def _encode_message_parts(msg: ir.Message, names: dict[str, str], index: int) -> list[Json]:
    parts = [_encode_part(p, f"messages[{index}]") for p in msg.content]
    parts = [p for p in parts if p.get("text") != ""]  # Gemini rejects empty text parts
    for n, call in enumerate(msg.tool_calls):
        args = _args_object(call.arguments)
        if args is None:
            raise ir.invalid_request(
                f"messages[{index}].tool_calls[{n}].arguments is not a JSON object",
                param=f"messages[{index}].tool_calls",
            )
        names[call.id] = call.name
        part: Json = {"functionCall": {"id": call.id, "name": call.name, "args": args}}
        if n == 0:  # Gemini wants the signature on the first call of a step
            part["thoughtSignature"] = _DUMMY_SIGNATURE
        parts.append(part)
    return parts


def _encode_tool_result(msg: ir.Message, names: dict[str, str], index: int) -> Json:
    name = msg.name or names.get(msg.tool_call_id or "")
    if not name:
        raise ir.invalid_request(
            f"messages[{index}]: tool result {msg.tool_call_id!r} answers no earlier tool call",
            param=f"messages[{index}].tool_call_id",
        )
    texts = []
    for part in msg.content:
        if not isinstance(part, ir.TextPart):
            raise ir.invalid_request(
                f"messages[{index}]: the gemini provider accepts only text in tool results"
            )
        texts.append(part.text)
    text = "".join(texts)
    response = _args_object(text) if text.strip() else None
    result: Json = {
        "name": name,
        "response": response if response is not None else {"result": text},
    }
    if msg.tool_call_id:
        result["id"] = msg.tool_call_id
    return {"functionResponse": result}


def _encode_part(part: ir.Part, where: str = "content") -> Json:
    if isinstance(part, ir.TextPart):
        return {"text": part.text}
    if isinstance(part, ir.ImagePart):
        return _encode_image(part, where)
    if part.source_format == "gemini":
        return part.raw  # a Gemini part the IR does not model, going back to Gemini
    raise ir.invalid_request(
        f"{where}: content of type {part.raw.get('type', 'unknown')!r} from {part.source_format} "
        "is not supported by the gemini provider"
    )


def _encode_image(part: ir.ImagePart, where: str) -> Json:
    if part.data is not None:
        if not part.media_type:
            raise ir.invalid_request(f"{where}: inline image data needs a media type")
        return {"inlineData": {"mimeType": part.media_type, "data": part.data}}
    url = part.url or ""
    if url.startswith("data:"):
        head, _, data = url.partition(",")
        mime = head[5:].split(";", 1)[0]
        if not head.endswith(";base64") or not mime or not data:
            raise ir.invalid_request(f"{where}: image data URLs must be base64 with a media type")
        return {"inlineData": {"mimeType": mime, "data": data}}
    if url.startswith(("https://generativelanguage.googleapis.com/", "gs://")):
        return {"fileData": {"mimeType": part.media_type or "image/jpeg", "fileUri": url}}
    raise ir.invalid_request(
        f"{where}: image URLs are not supported by the gemini provider; send base64 data"
    )


def _encode_tool(tool: ir.Tool) -> Json:
    decl: Json = {"name": tool.name}
    if tool.description:
        decl["description"] = tool.description
    parameters = schema_to_gemini(tool.parameters) if tool.parameters else {}
    if parameters.get("properties"):  # an OBJECT without properties is rejected
        decl["parameters"] = parameters
    return decl


def _encode_tool_choice(choice: ir.ToolChoice) -> Json:
    if choice.mode == "none":
        return {"mode": "NONE"}
    if choice.mode == "required":
        return {"mode": "ANY"}
    if choice.mode == "tool":
        return {"mode": "ANY", "allowedFunctionNames": [choice.name]}
    return {"mode": "AUTO"}


def _encode_generation_config(req: ir.ChatRequest) -> Json:
    config: Json = {}
    for key, value in (
        ("temperature", req.temperature),
        ("topP", req.top_p),
        ("topK", req.top_k),
        ("maxOutputTokens", req.max_tokens),
        ("seed", req.seed),
    ):
        if value is not None:
            config[key] = value
    if req.stop:
        config["stopSequences"] = req.stop
    fmt = req.response_format
    if fmt is not None and fmt.type != "text":
        config["responseMimeType"] = "application/json"
        if fmt.type == "json_schema" and fmt.schema:
            config["responseSchema"] = schema_to_gemini(fmt.schema, ordered=True)
    return config


# ---------------------------------------------------------------- provider side: responses

_FINISH_IN: dict[str, ir.FinishReason] = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter",
    "IMAGE_RECITATION": "content_filter",
    "MODEL_ARMOR": "content_filter",
}  # anything else (OTHER, MALFORMED_FUNCTION_CALL, LANGUAGE, ...) -> "error"
_STATUS_KIND: dict[str, ir.ErrorKind] = {
    "INVALID_ARGUMENT": "invalid_request",
    "FAILED_PRECONDITION": "invalid_request",
    "OUT_OF_RANGE": "invalid_request",
    "UNAUTHENTICATED": "authentication",
    "PERMISSION_DENIED": "permission",
    "NOT_FOUND": "not_found",
    "RESOURCE_EXHAUSTED": "rate_limit",
    "INTERNAL": "server_error",
    "UNKNOWN": "server_error",
    "UNAVAILABLE": "overloaded",
    "DEADLINE_EXCEEDED": "timeout",
}
# Google answers a bad API key with 400 INVALID_ARGUMENT; it is a credential problem.
_BAD_KEY_REASONS = frozenset({"API_KEY_INVALID", "API_KEY_EXPIRED"})


def _bad_gateway(message: str) -> ir.GatewayError:
    return ir.GatewayError(ir.ErrorInfo(kind="bad_gateway", message=message))


def decode_response(body: bytes) -> ir.ChatResponse:
    try:
        data = DECODER.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        raise _bad_gateway("gemini upstream answered with invalid JSON") from None
    if not isinstance(data, dict):
        raise _bad_gateway("gemini upstream answered with a non-object JSON body")
    if isinstance(data.get("error"), dict):
        raise ir.GatewayError(_error_info(data["error"], 0))
    response_id = str(data.get("responseId") or "")
    candidates = data.get("candidates")
    candidate = candidates[0] if isinstance(candidates, list) and candidates else {}
    texts, calls = _candidate_parts(candidate, response_id, 0)
    return ir.ChatResponse(
        id=response_id,
        model=_model_name(str(data.get("modelVersion") or "")),
        content=[ir.TextPart("".join(texts))] if texts else [],
        tool_calls=calls,
        finish_reason=_finish_reason(candidate, bool(calls), data),
        usage=_decode_usage(data.get("usageMetadata")),
    )


def _candidate_parts(
    candidate: object, response_id: str, first_index: int
) -> tuple[list[str], list[ir.ToolCall]]:
    """Visible text and function calls of a candidate; calls without an id get one
    from the response id and their position, stable across stream chunks."""
    content = candidate.get("content") if isinstance(candidate, dict) else None
    parts = content.get("parts") if isinstance(content, dict) else None
    texts: list[str] = []
    calls: list[ir.ToolCall] = []
    for part in parts if isinstance(parts, list) else []:
        if not isinstance(part, dict) or part.get("thought") is True:
            continue
        call = part.get("functionCall")
        if isinstance(call, dict) and isinstance(call.get("name"), str):
            index = first_index + len(calls)
            call_id = call.get("id") or f"call_{_UNSAFE_ID_CHARS.sub('_', response_id)}_{index}"
            args = dumps(call.get("args") if isinstance(call.get("args"), dict) else {})
            calls.append(ir.ToolCall(id=str(call_id), name=call["name"], arguments=args))
        elif isinstance(part.get("text"), str) and part["text"]:
            texts.append(part["text"])
    return texts, calls


def _finish_reason(candidate: object, called: bool, data: Json) -> ir.FinishReason:
    reason = candidate.get("finishReason") if isinstance(candidate, dict) else None
    if reason is None:
        feedback = data.get("promptFeedback")
        blocked = isinstance(feedback, dict) and feedback.get("blockReason")
        return "content_filter" if blocked else "stop"
    if reason == "STOP" and called:
        return "tool_calls"
    return _FINISH_IN.get(str(reason), "error")


def _decode_usage(meta: object) -> ir.Usage | None:
    if not isinstance(meta, dict):
        return None

    def count(key: str) -> int:
        value = meta.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    return ir.Usage(
        # tool-use prompt tokens (e.g. fetched URL content) are billed as input
        input_tokens=count("promptTokenCount") + count("toolUsePromptTokenCount"),
        output_tokens=count("candidatesTokenCount") + count("thoughtsTokenCount"),
        cached_tokens=count("cachedContentTokenCount"),
    )


class StreamDecoder:
    """Gemini SSE (`alt=sse`) -> IR events. The chunk with finishReason ends the stream."""

    __slots__ = ("_calls", "_ended", "_parser", "_started", "_usage")

    def __init__(self) -> None:
        self._parser = SSEParser()
        self._started = False
        self._ended = False
        self._calls = 0
        self._usage: ir.Usage | None = None

    def feed(self, chunk: bytes) -> list[ir.StreamEvent]:
        events: list[ir.StreamEvent] = []
        for sse in self._parser.feed(chunk):
            self._event(sse.data, events)
        return events

    def finish(self) -> list[ir.StreamEvent]:
        events: list[ir.StreamEvent] = []
        for sse in self._parser.finish():
            self._event(sse.data, events)
        if not self._ended:
            self._ended = True
            message = "gemini stream ended before its finishReason chunk"
            events.append(ir.StreamError(ir.ErrorInfo(kind="bad_gateway", message=message)))
        return events

    def _event(self, data: str, events: list[ir.StreamEvent]) -> None:
        if self._ended or not data.strip():
            return
        try:
            chunk = DECODER.decode(data)
        except (msgspec.DecodeError, UnicodeDecodeError):
            chunk = None
        if not isinstance(chunk, dict):
            self._fail(
                events,
                ir.ErrorInfo(kind="bad_gateway", message="gemini sent a malformed stream chunk"),
            )
        elif isinstance(chunk.get("error"), dict):
            self._fail(events, _error_info(chunk["error"], 0))
        else:
            self._chunk(chunk, events)

    def _fail(self, events: list[ir.StreamEvent], info: ir.ErrorInfo) -> None:
        self._ended = True
        events.append(ir.StreamError(info))

    def _chunk(self, chunk: Json, events: list[ir.StreamEvent]) -> None:
        response_id = str(chunk.get("responseId") or "")
        if not self._started:
            self._started = True
            model = _model_name(str(chunk.get("modelVersion") or ""))
            events.append(ir.StreamStart(id=response_id, model=model))
        candidates = chunk.get("candidates")
        candidate = candidates[0] if isinstance(candidates, list) and candidates else {}
        texts, calls = _candidate_parts(candidate, response_id, self._calls)
        events.extend(ir.TextDelta(text) for text in texts)
        for n, call in enumerate(calls, start=self._calls):
            events.append(ir.ToolCallStart(index=n, id=call.id, name=call.name))
            events.append(ir.ToolCallDelta(index=n, arguments=call.arguments))
        self._calls += len(calls)
        self._usage = _decode_usage(chunk.get("usageMetadata")) or self._usage
        blocked = not candidates and isinstance(chunk.get("promptFeedback"), dict)
        if (isinstance(candidate, dict) and candidate.get("finishReason")) or blocked:
            self._ended = True
            events.append(ir.StreamFinish(_finish_reason(candidate, self._calls > 0, chunk)))
            if self._usage is not None:
                events.append(ir.StreamUsage(self._usage))


# ---------------------------------------------------------------- provider side: errors


def decode_error(status: int, body: bytes) -> ir.ErrorInfo:
    """Google's {"error": {code, message, status, details}}; HTML or junk is not echoed."""
    try:
        data = DECODER.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        data = None
    if isinstance(data, list) and data:  # streaming without alt=sse wraps it in an array
        data = data[0]
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        kind = ir.error_kind_for_status(status)
        return ir.ErrorInfo(
            kind=kind, message=f"gemini upstream returned HTTP {status}", status=status
        )
    return _error_info(error, status)


def _error_info(error: Json, status: int) -> ir.ErrorInfo:
    code = error.get("code")
    status = status or (code if isinstance(code, int) else 0)
    message = error.get("message")
    if not isinstance(message, str) or not message:
        message = f"gemini upstream returned HTTP {status or 'error'}"
    details = [d for d in _list_or_empty(error.get("details")) if isinstance(d, dict)]
    if any(d.get("reason") in _BAD_KEY_REASONS for d in details):
        return ir.ErrorInfo(kind="authentication", message=message)
    # The HTTP code is the most specific signal; the status name serves when there is none.
    kind = ir.error_kind_for_status(status) if status else None
    kind = kind or _STATUS_KIND.get(str(error.get("status")), "server_error")
    return ir.ErrorInfo(
        kind=kind, message=message, status=status, retry_after=_retry_delay(details)
    )


def _list_or_empty(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _retry_delay(details: list[Json]) -> float | None:
    """google.rpc.RetryInfo.retryDelay ("34s", "1.5s") in seconds."""
    for detail in details:
        delay = detail.get("retryDelay")
        if str(detail.get("@type", "")).endswith("RetryInfo") and isinstance(delay, str):
            try:
                return float(delay.removesuffix("s"))
            except ValueError:
                return None
    return None


# ---------------------------------------------------------------- embeddings


def embedding_path(model: str) -> str:
    return f"/v1beta/models/{_model_name(model)}:batchEmbedContents"


def encode_embedding_request(req: ir.EmbeddingRequest, *, model: str) -> bytes:
    name = f"models/{_model_name(model)}"
    requests = []
    for text in req.inputs:
        item: Json = {"model": name, "content": {"parts": [{"text": text}]}}
        if req.dimensions is not None:
            item["outputDimensionality"] = req.dimensions
        requests.append(item)
    return _ENCODER.encode({"requests": requests})


def decode_embedding_response(body: bytes, *, model: str = "") -> ir.EmbeddingResponse:
    """batchEmbedContents ({"embeddings": [...]}) or embedContent ({"embedding": ...})."""
    try:
        data = DECODER.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        raise _bad_gateway("gemini upstream answered embeddings with invalid JSON") from None
    items = data.get("embeddings") if isinstance(data, dict) else None
    if isinstance(data, dict) and items is None and "embedding" in data:
        items = [data["embedding"]]
    if not isinstance(items, list):
        raise _bad_gateway("gemini embeddings answer has no embeddings")
    vectors = []
    for item in items:
        values = item.get("values") if isinstance(item, dict) else None
        if not isinstance(values, list) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in values
        ):
            raise _bad_gateway("gemini embedding without numeric values")
        vectors.append([float(v) for v in values])
    usage = _decode_usage(data.get("usageMetadata"))
    return ir.EmbeddingResponse(model=_model_name(model), vectors=vectors, usage=usage)


def decode_embedding_request(body: bytes, *, path_model: str | None = None) -> ir.EmbeddingRequest:
    """A client's embedContent or batchEmbedContents body (told apart by `requests`)."""
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
    return ir.EmbeddingRequest(model=_model_name(model), inputs=inputs, dimensions=dims.pop())


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
