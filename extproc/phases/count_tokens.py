"""`POST /v1/messages/count_tokens`: a prompt's input tokens, counted where the model runs.

Routed like a chat — virtual key and its model list, the model name to the model's
first target (the first of its best priority tier) — but it is not a chat: nothing
is reserved or charged, and nothing falls back. A target whose provider has a count
endpoint (Anthropic, Gemini) answers through it: the request goes out translated,
with the target's first credential. For the others (OpenAI, Azure OpenAI, Ollama)
the gateway answers its own estimate, `decisions.usage.estimate_tokens` of the
client's body (4 bytes a token, the figure its quota checks use), and says so in
TOKEN_COUNT_HEADER. Must not know which phase carries the upstream call.
"""

from __future__ import annotations

from extproc import ir
from extproc.config.settings import Model, Provider
from extproc.decisions import providers
from extproc.decisions.usage import estimate_tokens
from extproc.envoy.contract import MODEL_HEADER, PROVIDER_HEADER, TOKEN_COUNT_HEADER
from extproc.phases import envelope
from extproc.phases.actions import JSON, Action, Continue, Respond, error_response
from extproc.phases.attempt import NO_ROUTE
from extproc.phases.context import Context, ModelRoute, new_request_id
from extproc.phases.translation import encode_count_response, provider_token_count


def first_target(model: Model) -> int:
    """The target that counts: the first, in config order, of the best priority tier."""
    best = min(target.priority for target in model.targets)
    return next(i for i, target in enumerate(model.targets) if target.priority == best)


def route_count(
    context: Context, route: ModelRoute, chat: ir.ChatRequest, client_bytes: int, dialect: str
) -> tuple[CountCall | None, Action]:
    """Answer the estimate here, or send the count to the model's first target.

    A single-target model's call is followed by the caller's stream (the returned
    CountCall); other models' clusters run it in the upstream phase (open_count).
    """
    target = first_target(route.model)
    provider, model = route.targets[target]
    if provider_token_count(provider) is None:
        return None, estimate(dialect, client_bytes, provider, model)
    info = envelope.RequestInfo(
        dialect=dialect,
        operation="count_tokens",
        model=chat.model,
        request_id=new_request_id(),
        client_bytes=client_bytes,
        cluster=route.cluster,
    )
    internal = envelope.CountEnvelope(info, chat)
    if len(route.targets) == 1:
        return open_count(context, internal, target, [])
    body = envelope.encode(internal)
    headers = [("content-type", envelope.CONTENT_TYPE), ("content-length", str(len(body)))]
    return None, Continue(set_headers=headers, body=body, eligible_mask=1 << target)


def estimate(dialect: str, client_bytes: int, provider: Provider, model: str) -> Respond:
    body = encode_count_response(dialect, estimate_tokens(client_bytes))
    headers = [
        ("content-type", JSON),
        (TOKEN_COUNT_HEADER, "estimate"),
        (PROVIDER_HEADER, provider.name),
        (MODEL_HEADER, model),
    ]
    return Respond(200, body, headers)


def open_count(
    context: Context, internal: envelope.CountEnvelope, target: int | None, stale: list[str]
) -> tuple[CountCall | None, Action]:
    """The count request in the provider's shape, with its path and credential."""
    info = internal.info
    route = context.clusters.get(info.cluster)
    if target is None or route is None or target >= len(route.targets):
        reply = ir.ErrorInfo(kind="server_error", message=NO_ROUTE)
        return None, error_response(info.dialect, reply)
    provider, model = route.targets[target]
    count = provider_token_count(provider)
    if count is None:  # Envoy picked another target than the one the router pinned
        return None, estimate(info.dialect, info.client_bytes, provider, model)
    try:
        body = count.encode_count_request(internal.request, model=model)
    except ir.GatewayError as exc:
        return None, error_response(info.dialect, exc.info)
    credential = provider.all_credentials[0]
    auth = providers.auth_headers(provider, credential)
    setting = {name for name, _ in auth}
    action = Continue(
        set_headers=[
            (":path", provider.url.prefix + count.count_path(model)),
            ("content-type", JSON),
            ("content-length", str(len(body))),
            ("accept-encoding", "identity"),
            *auth,
        ],
        remove_headers=[h for h in stale if h not in setting],
        body=body,
    )
    return CountCall(context, info, provider, model), action


class CountState:
    __slots__ = ("status",)

    def __init__(self) -> None:
        self.status = 0  # the provider's HTTP status; 0 until its headers arrive


class CountCall:
    """A count sent upstream: its answer in the client's shape, counted once it ends."""

    __slots__ = ("context", "dialect", "info", "model", "provider", "state")

    def __init__(
        self, context: Context, info: envelope.RequestInfo, provider: Provider, model: str
    ) -> None:
        self.context = context
        self.info = info
        self.dialect = info.dialect
        self.provider = provider
        self.model = model
        self.state = CountState()

    def response_headers(self, headers: dict[str, str]) -> Continue:
        self.state.status = int(headers.get(":status", "0") or 0)
        return Continue(
            set_headers=[
                ("content-type", JSON),
                (TOKEN_COUNT_HEADER, "provider"),
                (PROVIDER_HEADER, self.provider.name),
                (MODEL_HEADER, self.model),
            ],
            remove_headers=["content-length", "content-encoding"],
            response_body_mode="BUFFERED",
        )

    async def response_body(self, body: bytes, end_of_stream: bool) -> Continue:
        action = self.translate(body)
        if end_of_stream:
            self.counted()
        return action

    def translate(self, body: bytes) -> Continue:
        """The count, or the provider's error, in the client's shape (BUFFERED: whole)."""
        status = self.state.status
        count = provider_token_count(self.provider)
        assert count is not None  # a CountCall is only opened for a provider that counts
        try:
            if 200 <= status < 300:
                tokens = count.decode_count_response(body)
                return Continue(body=encode_count_response(self.dialect, tokens))
            info = providers.codec_for(self.provider).decode_error(status, body)
        except ir.GatewayError as exc:  # a 200 without a count: the client gets a 502
            reply = error_response(self.dialect, exc.info)
            self.state.status = reply.status
            return Continue(body=reply.body, set_headers=[(":status", str(reply.status))])
        return Continue(body=error_response(self.dialect, info).body)

    def local_reply(self, headers: dict[str, str]) -> None:
        """Envoy answered for the provider (timeout, reset): already in the client's shape."""
        self.state.status = int(headers.get(":status", "0") or 0)
        self.counted()

    def counted(self) -> None:
        """In llmux_requests_total like any request (the answer, not what it counted)."""
        status = str(self.state.status or 502)
        metrics = self.context.telemetry.metrics
        metrics.request(self.dialect, self.provider.name, self.info.model, status)

    def closed(self, *, client_left: bool = False) -> None:
        """Nothing to settle: a count reserves and charges nothing."""
