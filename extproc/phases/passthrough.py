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
the provider; a translated target cannot continue that conversation (404).
"""

from __future__ import annotations

from extproc import ir
from extproc.config.settings import Provider
from extproc.formats import openai_responses
from extproc.phases import envelope
from extproc.phases.conversation import DIALECT, Thread


def sealed_body(body: bytes, thread: Thread | None) -> tuple[bytes | None, str | None]:
    """What the envelope carries for responses_api targets: the client's body, if any may."""
    if thread is None or not thread.passthrough:
        return None, None
    return body, thread.provider_previous


def applies(internal: envelope.Envelope, provider: Provider) -> bool:
    """This attempt passes the client's body through (its target serves /v1/responses)."""
    return (
        provider.responses_api
        and isinstance(internal, envelope.ChatEnvelope)
        and internal.passthrough is not None
    )


def refusal(internal: envelope.Envelope) -> ir.ErrorInfo | None:
    """A translated attempt cannot continue a conversation only the provider knows."""
    if not isinstance(internal, envelope.ChatEnvelope) or internal.provider_previous is None:
        return None
    message = f"Response with id {internal.provider_previous!r} not found."
    return ir.ErrorInfo(kind="not_found", message=message, param="previous_response_id")


def upstream_body(internal: envelope.Envelope, model: str) -> bytes:
    assert isinstance(internal, envelope.ChatEnvelope) and internal.passthrough is not None
    assert internal.info.dialect == DIALECT
    return openai_responses.request_body(internal.passthrough, model)
