"""The router phase: once per client request, before Envoy picks an upstream.

Classifies the endpoint, validates the body in the client's dialect, answers
what needs no upstream (model lists, errors), reads routing state from the store
(one round trip) and tells Envoy the model's cluster and which targets may serve.
"""

from __future__ import annotations

from extproc import envelope, ir, providers, routing
from extproc.client_apis import Endpoint, classify, dialect_for_path
from extproc.envoy_config import CLIENT_HEADER, CLUSTER_HEADER
from extproc.formats import ollama_chat
from extproc.processor import (
    CONTINUE,
    INTERNAL_PREFIX,
    Action,
    Context,
    Continue,
    ModelRoute,
    Respond,
    error_response,
    new_request_id,
    store_unavailable,
)
from extproc.store import StoreError


class RouterStream:
    def __init__(self, context: Context) -> None:
        self.context = context
        self.endpoint: Endpoint | None = None
        self.dialect = "openai"
        self.client_headers: list[str] = []

    def request_headers(self, headers: dict[str, str], end_of_stream: bool) -> Action:
        method, path = headers.get(":method", ""), headers.get(":path", "")
        self.endpoint = endpoint = classify(method, path)
        if endpoint is None:
            self.dialect = dialect_for_path(path)
            return self.fail("not_found", f"no such endpoint: {method} {path.split('?')[0]}")
        self.dialect = endpoint.dialect
        if endpoint.operation == "models":
            return Respond(200, self.context.openai_model_list)
        if endpoint.operation == "tags":
            return Respond(200, self.context.ollama_tags)
        if end_of_stream:
            return self.fail("invalid_request", "the request has no body")
        self.client_headers = [k for k in headers if k.startswith(INTERNAL_PREFIX)]
        return CONTINUE

    async def request_body(self, body: bytes, end_of_stream: bool) -> Action:
        endpoint = self.endpoint
        assert endpoint is not None
        try:
            chat, embedding = decode_client_body(endpoint, body)
        except ir.GatewayError as exc:
            return error_response(self.dialect, exc.info)
        model = chat.model if chat is not None else embedding.model  # type: ignore[union-attr]
        route = self.context.models.get(model)
        if route is None:
            return self.fail("not_found", f"The model `{model}` does not exist")
        decision = await self.admit(route)
        if isinstance(decision, Respond):
            return decision
        internal = envelope.encode(
            envelope.Envelope(
                dialect=endpoint.dialect,
                operation=endpoint.operation,
                model=model,
                request_id=new_request_id(),
                client_bytes=len(body),
                preferred=decision.preferred if decision is not None else {},
                chat=chat,
                embedding=embedding,
            )
        )
        several = len(route.model.targets) > 1
        return Continue(
            set_headers=[
                (CLUSTER_HEADER, route.cluster),
                (CLIENT_HEADER, endpoint.dialect),
                ("content-type", envelope.CONTENT_TYPE),
                ("content-length", str(len(internal))),
            ],
            remove_headers=[*self.client_headers, *providers.CLIENT_CREDENTIAL_HEADERS],
            body=internal,
            clear_route_cache=True,
            eligible_mask=decision.mask if decision is not None and several else None,
        )

    async def admit(self, route: ModelRoute) -> routing.Decision | Respond | None:
        """Which targets may serve, from the store; None when routing without it."""
        store = self.context.store
        if store is None:
            return None
        plan = route.plan
        try:
            states, opened = await store.routing_state(
                [c.tag for c in plan.credentials], plan.target_tags
            )
        except StoreError as exc:
            if self.context.store_failed(exc):
                return None
            return error_response(self.dialect, store_unavailable())
        _, window_left = store.window()
        decision = routing.decide(plan, states, opened, window_left, self.context.rng)
        if decision.mask:
            return decision
        kind: ir.ErrorKind = "rate_limit" if decision.rate_limited else "overloaded"
        message = (
            "every target of this model is out of quota or cooling down"
            if decision.rate_limited
            else "every target of this model is failing"
        )
        info = ir.ErrorInfo(kind=kind, message=message, retry_after=decision.retry_after_s)
        return error_response(self.dialect, info)

    def fail(self, kind: ir.ErrorKind, message: str) -> Respond:
        return error_response(self.dialect, ir.ErrorInfo(kind=kind, message=message))


def decode_client_body(
    endpoint: Endpoint, body: bytes
) -> tuple[ir.ChatRequest | None, ir.EmbeddingRequest | None]:
    """Validate the client body in its dialect: a chat or an embeddings request."""
    if endpoint.operation == "embeddings":
        return None, decode_embedding_request(endpoint, body)
    return decode_chat_request(endpoint, body), None


def decode_chat_request(endpoint: Endpoint, body: bytes) -> ir.ChatRequest:
    if endpoint.operation == "generate":
        return ollama_chat.decode_generate_request(body)
    request: ir.ChatRequest = endpoint.codec.decode_request(
        body, path_model=endpoint.path_model, path_stream=endpoint.path_stream
    )
    return request


def decode_embedding_request(endpoint: Endpoint, body: bytes) -> ir.EmbeddingRequest:
    codec = endpoint.codec
    if not hasattr(codec, "decode_embedding_request"):
        raise ir.invalid_request(f"embeddings are not offered in the {endpoint.dialect} API")
    if endpoint.path_model is not None:
        request: ir.EmbeddingRequest = codec.decode_embedding_request(
            body, path_model=endpoint.path_model
        )
    else:
        request = codec.decode_embedding_request(body)
    return request
