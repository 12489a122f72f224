"""Responses API conversation state as values: what is stored, and how a turn continues one.

A stored response keeps the conversation that led to it (the request's messages,
earlier turns included, in IR) and the answer, so a follow-up naming it with
`previous_response_id` continues the same conversation on any provider type.
`instructions` are not carried over (the Responses API documents that the previous
response's instructions do not apply to the next). No I/O: the phases read and
write the records through the store.
"""

from __future__ import annotations

import msgspec

from extproc import ir

# How long a stored response can be continued or retrieved (OpenAI keeps them 30 days).
TTL_S = 30 * 24 * 3600


class StoredResponse(msgspec.Struct, frozen=True):
    messages: list[ir.Message]  # the whole conversation the answer replied to
    response: ir.ChatResponse


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(StoredResponse)


def encode_record(request: ir.ChatRequest, response: ir.ChatResponse) -> bytes:
    return _encoder.encode(StoredResponse(request.messages, response))


def decode_record(data: bytes) -> StoredResponse | None:
    try:
        return _decoder.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None  # a record of an incompatible version: as if it had expired


def continued(request: ir.ChatRequest, previous: StoredResponse) -> ir.ChatRequest:
    """The request with the stored conversation and its answer before its own input.

    Tool results may answer calls of the stored answer: they get the call's function
    name here (Gemini matches results by name). Raises invalid_request for a result
    that answers no call at all.
    """
    answer = previous.response
    history = [*previous.messages]
    if answer.content or answer.tool_calls:
        history.append(
            ir.Message(role="assistant", content=answer.content, tool_calls=answer.tool_calls)
        )
    names = {c.id: c.name for m in history for c in m.tool_calls}
    messages = [*history]
    for message in request.messages:
        if message.role == "tool" and message.name is None:
            name = names.get(message.tool_call_id or "")
            if name is None:
                raise ir.invalid_request(
                    f"function_call_output answers call_id {message.tool_call_id!r}, which "
                    "neither the input nor the previous response contains",
                    param="input",
                )
            message = msgspec.structs.replace(message, name=name)
        names.update((c.id, c.name) for c in message.tool_calls)
        messages.append(message)
    return msgspec.structs.replace(request, messages=messages)
