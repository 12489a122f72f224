"""Responses API conversation state in the phases: continue, keep and answer stored responses.

The router phase names each Responses request's answer (`resp_…`, minted here so
the id is the gateway's, whatever the provider calls it), prepends the stored
conversation a `previous_response_id` names, and answers GET/DELETE
/v1/responses/{id} itself. The attempt keeps the complete answer once it ends.
Records are per tenant (`Store.response_key`), so another tenant's id is not found.

Store errors, under either `store.on_error`: a request that names a previous
response, and GET/DELETE, get 503 (going on without the record would answer
another conversation). Keeping an answer never fails the answer, whose provider
work is done and billed: the error is counted and logged, the answer goes out, and
a later request naming it gets 404. Other dialects never reach this module.
"""

from __future__ import annotations

from typing import NamedTuple

import msgspec

from extproc import ir
from extproc.decisions import conversations
from extproc.formats import openai_responses
from extproc.formats.endpoints import Endpoint
from extproc.phases.actions import JSON, Respond, error_response
from extproc.phases.context import Context, new_request_id, store_unavailable
from extproc.store import StoreError

DIALECT = "responses"


class Thread(NamedTuple):
    response_id: str  # the id the client is answered with
    record_key: str | None  # where the answer is kept; None when not stored
    # A responses_api target may take the client's body as it came (passthrough.py): not
    # when the conversation continues from this store, which the provider never saw.
    passthrough: bool = False
    provider_previous: str | None = None  # a previous_response_id only the provider knows


async def resolve(
    context: Context, tenant: str, body: bytes, chat: ir.ChatRequest, passthrough: bool = False
) -> tuple[ir.ChatRequest, Thread] | Respond:
    """The request with its previous conversation, and where its answer will be kept.

    `passthrough`: the model has a responses_api target, so a previous_response_id not
    in the store goes on to it (the provider's own id) instead of a 404.
    """
    asked = openai_responses.decode_conversation(body)
    store = context.store
    response_id = "resp_" + new_request_id()
    key = store.response_key(tenant, response_id) if asked.store and store else None
    previous = asked.previous_response_id
    if previous is None:
        return chat, Thread(response_id, key, passthrough)
    if store is None:
        if passthrough:
            return chat, Thread(response_id, key, True, previous)
        return _missing(previous, "previous_response_id")
    try:
        data = await store.response_get(store.response_key(tenant, previous))
    except StoreError as exc:
        context.store_failed(exc)
        return error_response(DIALECT, store_unavailable())
    record = conversations.decode_record(data) if data is not None else None
    if record is None:
        if passthrough:
            return chat, Thread(response_id, key, True, previous)
        return _missing(previous, "previous_response_id")
    try:
        return conversations.continued(chat, record), Thread(response_id, key)
    except ir.GatewayError as exc:
        return error_response(DIALECT, exc.info)


async def keep(
    context: Context, key: str | None, request: ir.ChatRequest, answer: ir.ChatResponse
) -> None:
    """Store a complete answer with its conversation under `key` (before its last bytes
    go out: a client continues at once, and its next request must find it)."""
    store = context.store
    if key is None or store is None:
        return
    record = conversations.encode_record(request, answer)
    try:
        await store.response_put(key, record, conversations.TTL_S)
    except StoreError as exc:
        context.store_failed(exc)


async def cache_hit(
    context: Context, thread: Thread, request: ir.ChatRequest, cached: ir.ChatResponse
) -> ir.ChatResponse:
    """A cached answer is a new Response: its own id, kept as this request asks."""
    answer = msgspec.structs.replace(cached, id=thread.response_id)
    await keep(context, thread.record_key, request, answer)
    return answer


async def answer_stored(context: Context, tenant: str, endpoint: Endpoint) -> Respond:
    """GET /v1/responses/{id} (the stored Response) and DELETE (removes it)."""
    store, response_id = context.store, endpoint.resource or ""
    if store is None:
        return _missing(response_id)
    key = store.response_key(tenant, response_id)
    try:
        if endpoint.operation == "delete":
            found = await store.response_delete(key)
            body = msgspec.json.encode({"id": response_id, "object": "response", "deleted": True})
            return Respond(200, body) if found else _missing(response_id)
        data = await store.response_get(key)
    except StoreError as exc:
        context.store_failed(exc)
        return error_response(DIALECT, store_unavailable())
    record = conversations.decode_record(data) if data is not None else None
    if record is None:
        return _missing(response_id)
    return Respond(200, openai_responses.encode_response(record.response), [("content-type", JSON)])


def renamed(events: list[ir.StreamEvent], response_id: str) -> list[ir.StreamEvent]:
    """A stream's events with the gateway's response id in its start event."""
    return [
        ir.StreamStart(response_id, e.model, e.created) if isinstance(e, ir.StreamStart) else e
        for e in events
    ]


def _missing(response_id: str, param: str | None = None) -> Respond:
    """OpenAI's answer for an id it does not know (here: not stored for this tenant)."""
    message = f"Response with id {response_id!r} not found."
    return error_response(DIALECT, ir.ErrorInfo(kind="not_found", message=message, param=param))
