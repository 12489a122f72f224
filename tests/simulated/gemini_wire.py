"""Gemini API (AI Studio, generativelanguage) on the wire: generateContent,
streamGenerateContent?alt=sse, embedContent, batchEmbedContents
(ai.google.dev/api/generate-content, /api/embeddings, /gemini-api/docs/troubleshooting).

Streams are data-only SSE with CRLF framing; every chunk carries usageMetadata
(prompt counts only until the last one, which also has finishReason).
Function calls arrive whole, never split across chunks. Errors use the
google.rpc.Status shape.
"""

from __future__ import annotations

import json
from typing import Any

from tests.simulated.framing import Call, Rendered, json_reply, sse_crlf_frame
from tests.simulated.replies import (
    Prompt,
    Reply,
    ToolSpec,
    as_reported,
    count_words,
    embedding_vector,
    plan_reply,
)
from tests.simulated.scenario import Usage

_STATUS = {
    400: ("INVALID_ARGUMENT", "Request contains an invalid argument."),
    401: ("UNAUTHENTICATED", "API key not valid. Please pass a valid API key."),
    403: ("PERMISSION_DENIED", "The caller does not have permission."),
    404: ("NOT_FOUND", "Requested entity was not found."),
    429: ("RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."),
    500: ("INTERNAL", "An internal error has occurred."),
    503: ("UNAVAILABLE", "The model is overloaded. Please try again later."),
    504: ("DEADLINE_EXCEEDED", "Deadline exceeded."),
}


def has_credentials(headers: dict[str, str], query: dict[str, str]) -> bool:
    return bool(headers.get("x-goog-api-key") or query.get("key") or headers.get("authorization"))


def error(status: int, message: str | None, retry_after: float | None = None) -> Rendered:
    name, default = _STATUS.get(status, ("UNKNOWN", f"HTTP {status} (simulated)."))
    inner: dict[str, Any] = {"code": status, "message": message or default, "status": name}
    if retry_after is not None:
        inner["details"] = [
            {
                "@type": "type.googleapis.com/google.rpc.RetryInfo",
                "retryDelay": f"{int(retry_after)}s",
            }
        ]
    return json_reply({"error": inner}, status)


def _part_texts(content: Any) -> list[str]:
    if not isinstance(content, dict):
        return []
    return [p["text"] for p in content.get("parts") or [] if isinstance(p.get("text"), str)]


def _function_responses(content: dict[str, Any]) -> list[str]:
    return [
        json.dumps(p["functionResponse"].get("response"), sort_keys=True)
        for p in content.get("parts") or []
        if "functionResponse" in p
    ]


def _tools(body: dict[str, Any]) -> tuple[ToolSpec, ...]:
    specs = []
    for tool in body.get("tools") or []:
        for decl in tool.get("functionDeclarations") or []:
            # Proto3 JSON accepts both spellings; google-genai sends `parameters_json_schema`.
            schema = (
                decl.get("parameters")
                or decl.get("parametersJsonSchema")
                or decl.get("parameters_json_schema")
                or {}
            )
            specs.append(ToolSpec(decl["name"], schema))
    return tuple(specs)


def decode_generate(body: dict[str, Any], model: str, stream: bool) -> Prompt:
    texts = _part_texts(body.get("systemInstruction"))
    last_user = ""
    tool_result = None
    for content in body.get("contents") or []:
        parts = _part_texts(content)
        responses = _function_responses(content)
        texts.extend(parts + responses)
        if content.get("role", "user") == "user":
            last_user = " ".join(parts) or last_user
        tool_result = " ".join(responses) if responses else None
    config = body.get("generationConfig") or {}
    return Prompt(
        provider="gemini",
        model=model,
        texts=tuple(texts),
        last_user_text=last_user,
        tools=_tools(body),
        tool_result=tool_result,
        json_mode=config.get("responseMimeType") == "application/json",
        stream=stream,
    )


def generate(call: Call, model: str, stream: bool) -> Rendered:
    body = call.body if isinstance(call.body, dict) else {}
    if not body.get("contents"):
        return error(400, "* GenerateContentRequest.contents: contents is not specified")
    prompt = decode_generate(body, model, stream)
    reply = plan_reply(prompt, call.scenario)
    prompt = as_reported(prompt, call.scenario)
    response_id = f"sim{call.seq}"
    if not stream:
        parts = _text_parts(reply.text) if not reply.tool_calls else _call_parts(reply)
        return json_reply(
            _chunk(prompt, parts, response_id, reply.usage, final=True), usage=reply.usage
        )
    if reply.tool_calls:
        pieces = [_call_parts(reply)]
    else:
        pieces = [_text_parts(piece) for piece in reply.pieces]
    frames = [
        sse_crlf_frame(_chunk(prompt, parts, response_id, reply.usage, final=i == len(pieces) - 1))
        for i, parts in enumerate(pieces)
    ]
    return Rendered(200, frames, "text/event-stream", "sse_crlf", usage=reply.usage)


def count_tokens(call: Call, model: str) -> Rendered:
    """`:countTokens` (ai.google.dev/api/tokens): `contents`, or a whole
    `generateContentRequest` (which also counts its system instruction and tools)."""
    body = call.body if isinstance(call.body, dict) else {}
    wrapped = body.get("generateContentRequest")
    if wrapped is not None and "contents" in body:
        return error(400, "contents and generateContentRequest cannot both be set")
    request = wrapped if isinstance(wrapped, dict) else body
    if wrapped is not None and request.get("model") != f"models/{model}":
        return error(400, "generateContentRequest.model: must name the model of the path")
    if not request.get("contents"):
        return error(400, "* CountTokensRequest.contents: contents is not specified")
    if wrapped is None:  # bare contents: the system instruction and tools are not counted
        request = {"contents": request["contents"]}
    tokens = plan_reply(decode_generate(request, model, False), call.scenario).usage.input_tokens
    details = [{"modality": "TEXT", "tokenCount": tokens}]
    return json_reply({"totalTokens": tokens, "promptTokensDetails": details})


def _text_parts(text: str) -> list[dict[str, Any]]:
    return [{"text": text}]


def _call_parts(reply: Reply) -> list[dict[str, Any]]:
    return [{"functionCall": {"name": c.name, "args": c.arguments}} for c in reply.tool_calls]


def _chunk(
    prompt: Prompt, parts: list[dict[str, Any]], response_id: str, usage: Usage, final: bool
) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
    metadata: dict[str, Any] = {
        "promptTokenCount": usage.input_tokens,
        "totalTokenCount": usage.input_tokens,
    }
    if final:
        candidate["finishReason"] = "STOP"
        metadata = {
            "promptTokenCount": usage.input_tokens,
            "candidatesTokenCount": usage.output_tokens,
            "totalTokenCount": usage.total_tokens,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": usage.input_tokens}],
        }
        if usage.cached_tokens:  # part of promptTokenCount, as Gemini reports it
            metadata["cachedContentTokenCount"] = usage.cached_tokens
    return {
        "candidates": [candidate],
        "usageMetadata": metadata,
        "modelVersion": prompt.model,
        "responseId": response_id,
    }


def _embed_one(request: dict[str, Any], dim: int) -> tuple[dict[str, Any], int]:
    texts = _part_texts(request.get("content"))
    size = int(request.get("outputDimensionality") or dim)
    return {"values": embedding_vector(" ".join(texts), size)}, count_words(texts)


def embed_content(call: Call) -> Rendered:
    body = call.body if isinstance(call.body, dict) else {}
    if "content" not in body:
        return error(400, "* EmbedContentRequest.content: content is not specified")
    embedding, tokens = _embed_one(body, call.scenario.embedding_dim)
    return json_reply({"embedding": embedding}, usage=Usage(max(1, tokens), 0))


def batch_embed_contents(call: Call) -> Rendered:
    body = call.body if isinstance(call.body, dict) else {}
    requests = body.get("requests") or []
    if not requests:
        return error(400, "* BatchEmbedContentsRequest.requests: requests is not specified")
    results = [_embed_one(r, call.scenario.embedding_dim) for r in requests]
    tokens = max(1, sum(t for _, t in results))
    return json_reply({"embeddings": [e for e, _ in results]}, usage=Usage(tokens, 0))
