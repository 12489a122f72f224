"""Gemini generateContent as a provider: what the gateway sends upstream and reads back.

Encodes IR requests, decodes answers, streams and errors. Pure and synchronous;
imports only the IR, framing and this codec's own modules.
"""

from __future__ import annotations

from typing import Any

import msgspec

from extproc import ir
from extproc.formats.framing import SSEParser
from extproc.formats.gemini_generate.wire import _ENCODER, _args_object, _encode_part, _model_name
from extproc.formats.gemini_json import DECODER, Json, dumps
from extproc.formats.gemini_schema import schema_to_gemini

# Google's documented stand-in for a thought signature the gateway cannot replay
# (https://ai.google.dev/gemini-api/docs/thought-signatures, FAQ): Gemini 3 rejects
# function calls in the history that carry none.
_DUMMY_SIGNATURE = "skip_thought_signature_validator"


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
    effort = req.reasoning_effort
    if effort is not msgspec.UNSET:
        level = _THINKING_LEVELS.get(effort)
        if level is None:
            raise ir.effort_refused(effort, "gemini")
        config["thinkingConfig"] = {"thinkingLevel": level}
    return config


# https://ai.google.dev/gemini-api/docs/thinking: thinkingLevel (Gemini 3 and later).
_THINKING_LEVELS = {
    "minimal": "MINIMAL",
    "low": "LOW",
    "medium": "MEDIUM",
    "high": "HIGH",
    "xhigh": "XHIGH",
}


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


def decode_response(body: bytes) -> ir.ChatResponse:
    try:
        data = DECODER.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        raise ir.bad_gateway("gemini upstream answered with invalid JSON") from None
    if not isinstance(data, dict):
        raise ir.bad_gateway("gemini upstream answered with a non-object JSON body")
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
            call_id = call.get("id") or ir.invented_call_id(index, response_id)
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
        reasoning_tokens=count("thoughtsTokenCount"),
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
        raise ir.bad_gateway("gemini upstream answered embeddings with invalid JSON") from None
    items = data.get("embeddings") if isinstance(data, dict) else None
    if isinstance(data, dict) and items is None and "embedding" in data:
        items = [data["embedding"]]
    if not isinstance(items, list):
        raise ir.bad_gateway("gemini embeddings answer has no embeddings")
    vectors = []
    for item in items:
        values = item.get("values") if isinstance(item, dict) else None
        if not isinstance(values, list) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in values
        ):
            raise ir.bad_gateway("gemini embedding without numeric values")
        vectors.append([float(v) for v in values])
    usage = _decode_usage(data.get("usageMetadata"))
    return ir.EmbeddingResponse(model=_model_name(model), vectors=vectors, usage=usage)
