"""The Responses API passthrough in the phases: which attempts send the client's body as it came.

A provider of type openai with `responses_api: true` serves `POST /v1/responses`
itself. A Responses request whose attempt lands on such a target goes to the
provider's /v1/responses with the client's body (only `model` set to the target's)
and its answer comes back untouched (translator.py reads it for usage and first
content). Other targets of the same model translate as usual, so fallback works
across both. Decided per model at config load (ModelRoute.passthrough): requests
to other models never carry the client's body in the envelope.

The provider keeps its own conversation: the gateway neither stores a passed-through
answer nor renames its id, and a previous_response_id it does not know goes on to
the provider; a translated target cannot continue that conversation (404). Built-in
tools go through too; a translated target refuses them (400), as other models do.
"""

from __future__ import annotations

from collections.abc import Mapping

from extproc import ir
from extproc.config.settings import Provider
from extproc.formats import openai_responses
from extproc.formats.endpoints import Endpoint
from extproc.phases import envelope
from extproc.phases.context import ModelRoute
from extproc.phases.conversation import DIALECT, Thread
from extproc.phases.translation import decode_chat_request, decode_client_body


def decode(
    endpoint: Endpoint, body: bytes, models: Mapping[str, ModelRoute], default_model: str | None
) -> tuple[ir.ChatRequest | None, ir.EmbeddingRequest | None, ir.ErrorInfo | None]:
    """The client body as IR, and why translating targets must refuse it, if they must.

    Built-in tools (web_search, file_search…) run on OpenAI's servers: a request with them
    is accepted for a model with a responses_api target (its IR lacks them) and refused
    by the targets that translate, with the error every other model answers at once.
    """
    try:
        return (*decode_client_body(endpoint, body, default_model), None)
    except ir.GatewayError as exc:
        stripped = None
        if endpoint.dialect == DIALECT and (exc.info.param or "").startswith("tool"):
            stripped = openai_responses.without_builtin_tools(body)
        if stripped is None:
            raise
        chat = decode_chat_request(endpoint, stripped)
        route = models.get(chat.model)
        if route is None or not route.passthrough:
            raise
        return chat, None, exc.info


def sealed_body(
    body: bytes, thread: Thread | None, untranslatable: ir.ErrorInfo | None
) -> tuple[bytes | None, ir.ErrorInfo | None]:
    """What the envelope carries for responses_api targets: the client's body, if any may,
    and why translating targets must refuse the request (a conversation continued from
    the gateway's store is always translated: the provider never saw it)."""
    if thread is None or not thread.passthrough:
        return None, untranslatable
    if thread.provider_previous is not None:
        message = f"Response with id {thread.provider_previous!r} not found."
        missing = ir.ErrorInfo(kind="not_found", message=message, param="previous_response_id")
        return body, untranslatable or missing
    return body, untranslatable


def applies(internal: envelope.Envelope, provider: Provider) -> bool:
    """This attempt passes the client's body through (its target serves /v1/responses)."""
    return (
        provider.responses_api
        and isinstance(internal, envelope.ChatEnvelope)
        and internal.passthrough is not None
    )


def refusal(internal: envelope.Envelope) -> ir.ErrorInfo | None:
    """Why a translating attempt cannot serve this request; None when it can."""
    return internal.untranslatable if isinstance(internal, envelope.ChatEnvelope) else None


def upstream_body(internal: envelope.Envelope, model: str) -> bytes:
    assert isinstance(internal, envelope.ChatEnvelope) and internal.passthrough is not None
    assert internal.info.dialect == DIALECT
    return openai_responses.request_body(internal.passthrough, model)
