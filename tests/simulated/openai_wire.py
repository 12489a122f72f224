"""OpenAI Chat Completions / Embeddings / Models, and Azure OpenAI, on the wire.

Shapes follow platform.openai.com/docs/api-reference (chat object, chat.completion.chunk,
embeddings) and Azure's data-plane reference (same bodies; `api-key` header,
`api-version` query, content-filter annotations, and a first stream chunk with
`choices: []` carrying `prompt_filter_results`).
"""

from __future__ import annotations

import base64
from typing import Any

from tests.simulated.framing import SSE, Call, Rendered, json_reply, sse_frame
from tests.simulated.replies import (
    Prompt,
    Reply,
    ToolSpec,
    as_reported,
    content_texts,
    count_words,
    embedding_vector,
    float32_bytes,
    plan_reply,
    split_even,
)
from tests.simulated.scenario import Usage

CREATED = 1_700_000_000
MODELS = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small")
_ERRORS = {
    400: ("invalid_request_error", None, "Invalid request (simulated)."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached (simulated)."),
    500: ("server_error", None, "The server had an error while processing your request."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}
_FILTER_OK = {
    name: {"filtered": False, "severity": "safe"}
    for name in ("hate", "self_harm", "sexual", "violence")
}


def has_credentials(call_headers: dict[str, str], azure: bool) -> bool:
    if azure and call_headers.get("api-key"):
        return True
    auth = call_headers.get("authorization", "")
    return auth.startswith("Bearer ") and len(auth) > len("Bearer ")


def error(status: int, message: str | None, azure: bool = False) -> Rendered:
    kind, code, default = _ERRORS.get(status, ("server_error", None, f"HTTP {status} (simulated)."))
    text = message or default
    if azure and status in (429, 500, 503):
        body: dict[str, Any] = {"error": {"code": str(status), "message": text}}
    else:
        body = {"error": {"message": text, "type": kind, "param": None, "code": code}}
    return json_reply(body, status)


def decode_chat(body: dict[str, Any], provider: str, model: str) -> Prompt:
    messages = body.get("messages") or []
    texts: list[str] = []
    last_user = ""
    for message in messages:
        parts = content_texts(message.get("content"))
        texts.extend(parts)
        if message.get("role") == "user":
            last_user = " ".join(parts)
    last = messages[-1] if messages else {}
    tools = tuple(
        ToolSpec(t["function"]["name"], t["function"].get("parameters") or {})
        for t in body.get("tools") or []
        if t.get("type") == "function"
    )
    response_format = body.get("response_format") or {}
    return Prompt(
        provider=provider,
        model=model,
        texts=tuple(texts),
        last_user_text=last_user,
        tools=tools,
        tool_result=" ".join(content_texts(last.get("content")))
        if last.get("role") == "tool"
        else None,
        json_mode=response_format.get("type") in ("json_object", "json_schema"),
        stream=body.get("stream") is True,
        options={"include_usage": bool((body.get("stream_options") or {}).get("include_usage"))},
    )


def chat(call: Call, azure: bool) -> Rendered:
    body = call.body if isinstance(call.body, dict) else {}
    if not body.get("messages"):
        return error(400, "'messages' is a required property", azure)
    model = call.params["deployment"] if azure else body.get("model")
    if not model:
        return error(400, "you must provide a model parameter", azure)
    prompt = decode_chat(body, "azure" if azure else "openai", model)
    reply = plan_reply(prompt, call.scenario)
    prompt = as_reported(prompt, call.scenario)
    response_id = f"chatcmpl-sim{call.seq}"
    if prompt.stream:
        return Rendered(
            200, _stream_frames(prompt, reply, response_id, azure), SSE, "sse", usage=reply.usage
        )
    return json_reply(_completion(prompt, reply, response_id, azure), usage=reply.usage)


def _usage(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    }


def _finish_reason(reply: Reply) -> str:
    return "tool_calls" if reply.tool_calls else "stop"


def _completion(prompt: Prompt, reply: Reply, response_id: str, azure: bool) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.text or None, "refusal": None}
    if reply.tool_calls:
        message["tool_calls"] = [
            {
                "id": f"call_{c.id}",
                "type": "function",
                "function": {"name": c.name, "arguments": c.arguments_json},
            }
            for c in reply.tool_calls
        ]
    choice: dict[str, Any] = {
        "index": 0,
        "message": message,
        "logprobs": None,
        "finish_reason": _finish_reason(reply),
    }
    out: dict[str, Any] = {
        "id": response_id,
        "object": "chat.completion",
        "created": CREATED,
        "model": prompt.model,
        "choices": [choice],
        "usage": _usage(reply.usage),
        "system_fingerprint": "fp_simulated",
    }
    if azure:
        choice["content_filter_results"] = _FILTER_OK
        out["prompt_filter_results"] = [{"prompt_index": 0, "content_filter_results": _FILTER_OK}]
    return out


def _stream_frames(prompt: Prompt, reply: Reply, response_id: str, azure: bool) -> list[bytes]:
    include_usage = prompt.options["include_usage"]

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        obj: dict[str, Any] = {
            "id": response_id,
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": prompt.model,
            "system_fingerprint": "fp_simulated",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if include_usage:
            obj["usage"] = None
        return sse_frame(obj)

    frames = []
    if azure:
        frames.append(
            sse_frame(
                {
                    "choices": [],
                    "created": 0,
                    "id": "",
                    "model": "",
                    "object": "",
                    "prompt_filter_results": [
                        {"prompt_index": 0, "content_filter_results": _FILTER_OK}
                    ],
                }
            )
        )
    frames.append(chunk({"role": "assistant", "content": "", "refusal": None}))
    frames.extend(chunk({"content": piece}) for piece in reply.pieces)
    for index, call in enumerate(reply.tool_calls):
        head = {
            "index": index,
            "id": f"call_{call.id}",
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        frames.append(chunk({"tool_calls": [head]}))
        for fragment in split_even(call.arguments_json, 3):
            frames.append(
                chunk({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]})
            )
    frames.append(chunk({}, _finish_reason(reply)))
    if include_usage:
        frames.append(
            sse_frame(
                {
                    "id": response_id,
                    "object": "chat.completion.chunk",
                    "created": CREATED,
                    "model": prompt.model,
                    "system_fingerprint": "fp_simulated",
                    "choices": [],
                    "usage": _usage(reply.usage),
                }
            )
        )
    frames.append(b"data: [DONE]\n\n")
    return frames


def embeddings(call: Call, azure: bool) -> Rendered:
    body = call.body if isinstance(call.body, dict) else {}
    raw = body.get("input")
    if raw is None or raw == [] or raw == "":
        return error(400, "'input' is a required property", azure)
    inputs = [raw] if isinstance(raw, str) else [x if isinstance(x, str) else str(x) for x in raw]
    model = call.params["deployment"] if azure else str(body.get("model", ""))
    dim = int(body.get("dimensions") or call.scenario.embedding_dim)
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for index, text in enumerate(inputs):
        vector = embedding_vector(text, dim)
        value: Any = base64.b64encode(float32_bytes(vector)).decode() if as_base64 else vector
        data.append({"object": "embedding", "index": index, "embedding": value})
    tokens = max(1, count_words(inputs))
    usage = Usage(tokens, 0)
    out = {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return json_reply(out, usage=usage)


def models(call: Call) -> Rendered:
    data = [{"id": m, "object": "model", "created": CREATED, "owned_by": "system"} for m in MODELS]
    return json_reply({"object": "list", "data": data})
