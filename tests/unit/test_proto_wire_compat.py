"""Wire compatibility of llmux's hand-written ext_proc protos (proto/) with Envoy's API.

The reference is envoy-data-plane (betterproto2 classes generated from the official
Envoy 1.40 protos). Every message llmux sends or receives is built independently with
both implementations from the same literal values, then:

* ours -> bytes -> betterproto2.parse  must equal the betterproto2-built message, and
* betterproto2 -> bytes(...) -> ours   must equal our built message,

with no unknown fields left over on either side. A schema test additionally checks every
field number / wire type / oneof membership and every enum value against the reference.
"""

from __future__ import annotations

import dataclasses
import datetime
import sys
from pathlib import Path

import pytest

_REPO_ROOT = Path(__file__).resolve().parents[2]
if str(_REPO_ROOT) not in sys.path:  # allow plain `pytest tests/unit/...`
    sys.path.insert(0, str(_REPO_ROOT))

try:
    from extproc.transport import pb
except ImportError:  # stubs not generated yet: generate them (takes ~0.3 s)
    from extproc._build_proto import build

    build()
    from extproc.transport import pb

import warnings

import betterproto2
from google.protobuf import descriptor as _descriptor
from google.protobuf import duration_pb2, json_format, struct_pb2, wrappers_pb2
from google.protobuf.unknown_fields import UnknownFieldSet

with warnings.catch_warnings():
    # envoy-data-plane's generated code trips pydantic>=2.12 deprecation warnings on import.
    warnings.simplefilter("ignore", DeprecationWarning)
    from envoy_data_plane.envoy.config.core import v3 as bp_core
    from envoy_data_plane.envoy.extensions.filters.http.ext_proc import v3 as bp_mode
    from envoy_data_plane.envoy.service.ext_proc import v3 as bp_ep
    from envoy_data_plane.envoy.type import v3 as bp_type
    from envoy_data_plane.google import protobuf as bp_wkt

# HeaderValueOption.append (BoolValue, field 2) is deprecated upstream but still on the wire;
# we test it on purpose.
pytestmark = pytest.mark.filterwarnings(
    "ignore:HeaderValueOption.append is deprecated:DeprecationWarning"
)

P = pb.ext_proc_pb2
B = pb.base_pb2
S = pb.http_status_pb2
M = pb.processing_mode_pb2

FD = _descriptor.FieldDescriptor

# --------------------------------------------------------------------------------------
# Shared literal values
# --------------------------------------------------------------------------------------

ATTRIBUTES = {
    "envoy.filters.http.ext_proc": {
        "request.path": "/v1/chat/completions",
        "request.method": "POST",
        "request.size": 1234,
        "xds.route_name": "llmux-openai",
        "xds.cluster_name": "llmux_upstream_openai",
        "xds.upstream_host_metadata": {
            "filter_metadata": {
                "llmux": {"provider": "openai", "weight": 3, "tls": True, "tags": ["a", "b"]},
                "envoy.lb": {"canary": False},
            }
        },
        "connection.mtls": None,
    }
}

METADATA_CONTEXT = {"llmux": {"tenant": "acme", "budget_usd": 12.5}}

DYNAMIC_METADATA = {
    "llmux": {
        "provider": "anthropic",
        "model": "claude-sonnet",
        "stream": True,
        "prompt_tokens": 12,
        "route": {"attempt": 1, "fallbacks": ["openai", "bedrock"]},
    }
}

REQ_HEADERS = [
    (":method", b"POST", ""),
    (":path", b"/v1/chat/completions", ""),
    (":authority", b"llmux.local:10000", ""),
    ("content-type", b"application/json", ""),
    ("authorization", b"Bearer sk-test-\xc3\xa9\x00\xff", ""),  # non-UTF-8 raw bytes
    ("x-legacy-string-value", b"", "set-via-value"),  # `value` (field 2), not raw_value
]
RESP_HEADERS = [
    (":status", b"200", ""),
    ("content-type", b"text/event-stream", ""),
    ("x-request-id", b"5f1c-42", ""),
]
REQ_BODY = (
    b'{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi \xe2\x9c\x93"}]}'
)
SSE_CHUNK = b'data: {"choices":[{"delta":{"content":"he"}}]}\n\n'
NEW_BODY = b'{"model":"claude-sonnet","max_tokens":1024,"messages":[]}'
ERROR_BODY = b'{"error":{"type":"rate_limited","message":"slow down"}}'


# --------------------------------------------------------------------------------------
# Builders: ours (protobuf) and theirs (betterproto2), from the same literals
# --------------------------------------------------------------------------------------


def o_struct(d: dict) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(d)
    return s


def t_struct(d: dict) -> bp_wkt.Struct:
    return bp_wkt.Struct.from_dict(d)


def o_headers(items) -> B.HeaderMap:
    return B.HeaderMap(
        headers=[B.HeaderValue(key=k, raw_value=raw, value=v) for k, raw, v in items]
    )


def t_headers(items) -> bp_core.HeaderMap:
    return bp_core.HeaderMap(
        headers=[bp_core.HeaderValue(key=k, raw_value=raw, value=v) for k, raw, v in items]
    )


def o_attrs() -> dict:
    return {k: o_struct(v) for k, v in ATTRIBUTES.items()}


def t_attrs() -> dict:
    return {k: t_struct(v) for k, v in ATTRIBUTES.items()}


OV = B.HeaderValueOption
TV = bp_core.HeaderValueOption
TA = bp_core.HeaderValueOptionHeaderAppendAction


def o_set_headers():
    return [
        OV(
            header=B.HeaderValue(key="x-llmux-provider", raw_value=b"anthropic"),
            append_action=OV.OVERWRITE_IF_EXISTS_OR_ADD,
        ),
        OV(
            header=B.HeaderValue(key=":path", raw_value=b"/v1/messages"),
            append_action=OV.ADD_IF_ABSENT,
            keep_empty_value=True,
        ),
        OV(
            header=B.HeaderValue(key="x-api-key", raw_value=b"sk-ant-\x01\x02"),
            append=wrappers_pb2.BoolValue(value=False),
            append_action=OV.OVERWRITE_IF_EXISTS,
        ),
    ]


def t_set_headers():
    return [
        TV(
            header=bp_core.HeaderValue(key="x-llmux-provider", raw_value=b"anthropic"),
            append_action=TA.OVERWRITE_IF_EXISTS_OR_ADD,
        ),
        TV(
            header=bp_core.HeaderValue(key=":path", raw_value=b"/v1/messages"),
            append_action=TA.ADD_IF_ABSENT,
            keep_empty_value=True,
        ),
        TV(
            header=bp_core.HeaderValue(key="x-api-key", raw_value=b"sk-ant-\x01\x02"),
            append=False,
            append_action=TA.OVERWRITE_IF_EXISTS,
        ),
    ]


REMOVE = ["content-length", "authorization", "x-llmux-internal"]

OM = M.ProcessingMode
TM = bp_mode.ProcessingMode
THS = bp_mode.ProcessingModeHeaderSendMode
TBS = bp_mode.ProcessingModeBodySendMode


CASES: dict[str, tuple] = {
    # ---- ProcessingRequest (Envoy -> llmux) -------------------------------------------
    "req.request_headers": (
        lambda: P.ProcessingRequest(
            request_headers=P.HttpHeaders(headers=o_headers(REQ_HEADERS), end_of_stream=False),
            metadata_context=B.Metadata(
                filter_metadata={k: o_struct(v) for k, v in METADATA_CONTEXT.items()}
            ),
            attributes=o_attrs(),
            protocol_config=P.ProtocolConfiguration(
                request_body_mode=OM.BUFFERED,
                response_body_mode=OM.FULL_DUPLEX_STREAMED,
                send_body_without_waiting_for_header_response=True,
            ),
        ),
        lambda: bp_ep.ProcessingRequest(
            request_headers=bp_ep.HttpHeaders(headers=t_headers(REQ_HEADERS), end_of_stream=False),
            metadata_context=bp_core.Metadata(
                filter_metadata={k: t_struct(v) for k, v in METADATA_CONTEXT.items()}
            ),
            attributes=t_attrs(),
            protocol_config=bp_ep.ProtocolConfiguration(
                request_body_mode=TBS.BUFFERED,
                response_body_mode=TBS.FULL_DUPLEX_STREAMED,
                send_body_without_waiting_for_header_response=True,
            ),
        ),
    ),
    "req.request_headers_eos": (
        lambda: P.ProcessingRequest(
            request_headers=P.HttpHeaders(headers=o_headers(REQ_HEADERS[:3]), end_of_stream=True),
            observability_mode=True,
        ),
        lambda: bp_ep.ProcessingRequest(
            request_headers=bp_ep.HttpHeaders(
                headers=t_headers(REQ_HEADERS[:3]), end_of_stream=True
            ),
            observability_mode=True,
        ),
    ),
    "req.request_body": (
        lambda: P.ProcessingRequest(
            request_body=P.HttpBody(body=REQ_BODY, end_of_stream=True), attributes=o_attrs()
        ),
        lambda: bp_ep.ProcessingRequest(
            request_body=bp_ep.HttpBody(body=REQ_BODY, end_of_stream=True), attributes=t_attrs()
        ),
    ),
    "req.response_headers": (
        lambda: P.ProcessingRequest(
            response_headers=P.HttpHeaders(headers=o_headers(RESP_HEADERS)), attributes=o_attrs()
        ),
        lambda: bp_ep.ProcessingRequest(
            response_headers=bp_ep.HttpHeaders(headers=t_headers(RESP_HEADERS)),
            attributes=t_attrs(),
        ),
    ),
    "req.response_body_chunk": (
        lambda: P.ProcessingRequest(response_body=P.HttpBody(body=SSE_CHUNK, end_of_stream=False)),
        lambda: bp_ep.ProcessingRequest(
            response_body=bp_ep.HttpBody(body=SSE_CHUNK, end_of_stream=False)
        ),
    ),
    "req.response_body_empty_eos": (
        lambda: P.ProcessingRequest(response_body=P.HttpBody(body=b"", end_of_stream=True)),
        lambda: bp_ep.ProcessingRequest(response_body=bp_ep.HttpBody(body=b"", end_of_stream=True)),
    ),
    "req.request_trailers": (
        lambda: P.ProcessingRequest(
            request_trailers=P.HttpTrailers(trailers=o_headers([("grpc-status", b"0", "")]))
        ),
        lambda: bp_ep.ProcessingRequest(
            request_trailers=bp_ep.HttpTrailers(trailers=t_headers([("grpc-status", b"0", "")]))
        ),
    ),
    # ---- ProcessingResponse (llmux -> Envoy) ------------------------------------------
    "resp.request_headers_replace": (
        lambda: P.ProcessingResponse(
            request_headers=P.HeadersResponse(
                response=P.CommonResponse(
                    status=P.CommonResponse.CONTINUE_AND_REPLACE,
                    header_mutation=P.HeaderMutation(
                        set_headers=o_set_headers(), remove_headers=REMOVE
                    ),
                    body_mutation=P.BodyMutation(body=NEW_BODY),
                    clear_route_cache=True,
                )
            ),
            mode_override=OM(
                request_header_mode=OM.SEND,
                response_header_mode=OM.SEND,
                request_body_mode=OM.BUFFERED,
                response_body_mode=OM.STREAMED,
                request_trailer_mode=OM.SKIP,
                response_trailer_mode=OM.SKIP,
            ),
            dynamic_metadata=o_struct(DYNAMIC_METADATA),
        ),
        lambda: bp_ep.ProcessingResponse(
            request_headers=bp_ep.HeadersResponse(
                response=bp_ep.CommonResponse(
                    status=bp_ep.CommonResponseResponseStatus.CONTINUE_AND_REPLACE,
                    header_mutation=bp_ep.HeaderMutation(
                        set_headers=t_set_headers(), remove_headers=REMOVE
                    ),
                    body_mutation=bp_ep.BodyMutation(body=NEW_BODY),
                    clear_route_cache=True,
                )
            ),
            mode_override=TM(
                request_header_mode=THS.SEND,
                response_header_mode=THS.SEND,
                request_body_mode=TBS.BUFFERED,
                response_body_mode=TBS.STREAMED,
                request_trailer_mode=THS.SKIP,
                response_trailer_mode=THS.SKIP,
            ),
            dynamic_metadata=t_struct(DYNAMIC_METADATA),
        ),
    ),
    "resp.request_headers_empty_continue": (
        lambda: P.ProcessingResponse(request_headers=P.HeadersResponse()),
        lambda: bp_ep.ProcessingResponse(request_headers=bp_ep.HeadersResponse()),
    ),
    "resp.request_headers_mode_override_full_duplex": (
        lambda: P.ProcessingResponse(
            request_headers=P.HeadersResponse(response=P.CommonResponse(clear_route_cache=True)),
            mode_override=OM(
                request_body_mode=OM.FULL_DUPLEX_STREAMED,
                response_body_mode=OM.BUFFERED_PARTIAL,
                response_trailer_mode=OM.SEND,
            ),
        ),
        lambda: bp_ep.ProcessingResponse(
            request_headers=bp_ep.HeadersResponse(
                response=bp_ep.CommonResponse(clear_route_cache=True)
            ),
            mode_override=TM(
                request_body_mode=TBS.FULL_DUPLEX_STREAMED,
                response_body_mode=TBS.BUFFERED_PARTIAL,
                response_trailer_mode=THS.SEND,
            ),
        ),
    ),
    "resp.request_body_replace": (
        lambda: P.ProcessingResponse(
            request_body=P.BodyResponse(
                response=P.CommonResponse(
                    header_mutation=P.HeaderMutation(
                        set_headers=[
                            OV(
                                header=B.HeaderValue(key="content-length", raw_value=b"57"),
                                append_action=OV.OVERWRITE_IF_EXISTS_OR_ADD,
                            )
                        ]
                    ),
                    body_mutation=P.BodyMutation(body=NEW_BODY),
                )
            ),
            dynamic_metadata=o_struct(DYNAMIC_METADATA),
        ),
        lambda: bp_ep.ProcessingResponse(
            request_body=bp_ep.BodyResponse(
                response=bp_ep.CommonResponse(
                    header_mutation=bp_ep.HeaderMutation(
                        set_headers=[
                            TV(
                                header=bp_core.HeaderValue(key="content-length", raw_value=b"57"),
                                append_action=TA.OVERWRITE_IF_EXISTS_OR_ADD,
                            )
                        ]
                    ),
                    body_mutation=bp_ep.BodyMutation(body=NEW_BODY),
                )
            ),
            dynamic_metadata=t_struct(DYNAMIC_METADATA),
        ),
    ),
    "resp.request_body_clear": (
        lambda: P.ProcessingResponse(
            request_body=P.BodyResponse(
                response=P.CommonResponse(body_mutation=P.BodyMutation(clear_body=True))
            )
        ),
        lambda: bp_ep.ProcessingResponse(
            request_body=bp_ep.BodyResponse(
                response=bp_ep.CommonResponse(body_mutation=bp_ep.BodyMutation(clear_body=True))
            )
        ),
    ),
    "resp.response_headers": (
        lambda: P.ProcessingResponse(
            response_headers=P.HeadersResponse(
                response=P.CommonResponse(
                    status=P.CommonResponse.CONTINUE,
                    header_mutation=P.HeaderMutation(
                        set_headers=o_set_headers()[:1], remove_headers=["content-length"]
                    ),
                )
            )
        ),
        lambda: bp_ep.ProcessingResponse(
            response_headers=bp_ep.HeadersResponse(
                response=bp_ep.CommonResponse(
                    status=bp_ep.CommonResponseResponseStatus.CONTINUE,
                    header_mutation=bp_ep.HeaderMutation(
                        set_headers=t_set_headers()[:1], remove_headers=["content-length"]
                    ),
                )
            )
        ),
    ),
    "resp.response_body": (
        lambda: P.ProcessingResponse(
            response_body=P.BodyResponse(
                response=P.CommonResponse(body_mutation=P.BodyMutation(body=SSE_CHUNK))
            ),
            dynamic_metadata=o_struct({"llmux": {"completion_tokens": 42}}),
        ),
        lambda: bp_ep.ProcessingResponse(
            response_body=bp_ep.BodyResponse(
                response=bp_ep.CommonResponse(body_mutation=bp_ep.BodyMutation(body=SSE_CHUNK))
            ),
            dynamic_metadata=t_struct({"llmux": {"completion_tokens": 42}}),
        ),
    ),
    "resp.response_body_streamed": (
        lambda: P.ProcessingResponse(
            response_body=P.BodyResponse(
                response=P.CommonResponse(
                    body_mutation=P.BodyMutation(
                        streamed_response=P.StreamedBodyResponse(body=SSE_CHUNK, end_of_stream=True)
                    )
                )
            )
        ),
        lambda: bp_ep.ProcessingResponse(
            response_body=bp_ep.BodyResponse(
                response=bp_ep.CommonResponse(
                    body_mutation=bp_ep.BodyMutation(
                        streamed_response=bp_ep.StreamedBodyResponse(
                            body=SSE_CHUNK, end_of_stream=True
                        )
                    )
                )
            )
        ),
    ),
    "resp.immediate_response": (
        lambda: P.ProcessingResponse(
            immediate_response=P.ImmediateResponse(
                status=S.HttpStatus(code=S.TooManyRequests),
                headers=P.HeaderMutation(
                    set_headers=[
                        OV(header=B.HeaderValue(key="content-type", raw_value=b"application/json")),
                        OV(header=B.HeaderValue(key="retry-after", raw_value=b"7")),
                    ],
                    remove_headers=["x-envoy-upstream-service-time"],
                ),
                body=ERROR_BODY,
                details="llmux_rate_limited",
            ),
            dynamic_metadata=o_struct({"llmux": {"rejected": "rate_limit"}}),
        ),
        lambda: bp_ep.ProcessingResponse(
            immediate_response=bp_ep.ImmediateResponse(
                status=bp_type.HttpStatus(code=bp_type.StatusCode.TooManyRequests),
                headers=bp_ep.HeaderMutation(
                    set_headers=[
                        TV(
                            header=bp_core.HeaderValue(
                                key="content-type", raw_value=b"application/json"
                            )
                        ),
                        TV(header=bp_core.HeaderValue(key="retry-after", raw_value=b"7")),
                    ],
                    remove_headers=["x-envoy-upstream-service-time"],
                ),
                body=ERROR_BODY,
                details="llmux_rate_limited",
            ),
            dynamic_metadata=t_struct({"llmux": {"rejected": "rate_limit"}}),
        ),
    ),
    "resp.immediate_response_grpc": (
        lambda: P.ProcessingResponse(
            immediate_response=P.ImmediateResponse(
                status=S.HttpStatus(code=S.BadGateway),
                grpc_status=P.GrpcStatus(status=14),
                details="llmux_upstream_unavailable",
            )
        ),
        lambda: bp_ep.ProcessingResponse(
            immediate_response=bp_ep.ImmediateResponse(
                status=bp_type.HttpStatus(code=bp_type.StatusCode.BadGateway),
                grpc_status=bp_ep.GrpcStatus(status=14),
                details="llmux_upstream_unavailable",
            )
        ),
    ),
    "resp.override_message_timeout": (
        lambda: P.ProcessingResponse(
            override_message_timeout=duration_pb2.Duration(seconds=2, nanos=500_000_000)
        ),
        lambda: bp_ep.ProcessingResponse(override_message_timeout=datetime.timedelta(seconds=2.5)),
    ),
    "resp.request_trailers": (
        lambda: P.ProcessingResponse(
            request_trailers=P.TrailersResponse(
                header_mutation=P.HeaderMutation(remove_headers=["grpc-message"])
            )
        ),
        lambda: bp_ep.ProcessingResponse(
            request_trailers=bp_ep.TrailersResponse(
                header_mutation=bp_ep.HeaderMutation(remove_headers=["grpc-message"])
            )
        ),
    ),
}


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def _assert_no_unknown_fields_ours(msg, path="") -> None:
    assert len(UnknownFieldSet(msg)) == 0, f"unknown fields in ours at {path or '<root>'}"
    for fd, value in msg.ListFields():
        if fd.type != FD.TYPE_MESSAGE:
            continue
        if fd.message_type.GetOptions().map_entry:
            if fd.message_type.fields_by_name["value"].type == FD.TYPE_MESSAGE:
                for k, v in value.items():
                    _assert_no_unknown_fields_ours(v, f"{path}.{fd.name}[{k}]")
        elif fd.is_repeated:
            for i, v in enumerate(value):
                _assert_no_unknown_fields_ours(v, f"{path}.{fd.name}[{i}]")
        else:
            _assert_no_unknown_fields_ours(value, f"{path}.{fd.name}")


def _assert_no_unknown_fields_theirs(msg, path="") -> None:
    assert msg._unknown_fields == b"", f"unknown fields in betterproto2 at {path or '<root>'}"
    for f in dataclasses.fields(msg):
        value = getattr(msg, f.name)
        values = (
            value.values()
            if isinstance(value, dict)
            else value
            if isinstance(value, list)
            else [value]
        )
        for i, v in enumerate(values):
            if isinstance(v, betterproto2.Message):
                _assert_no_unknown_fields_theirs(v, f"{path}.{f.name}[{i}]")


# --------------------------------------------------------------------------------------
# Round-trip tests
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_ours_to_envoy(case: str) -> None:
    build_ours, build_theirs = CASES[case]
    ours = build_ours()
    data = ours.SerializeToString()
    assert data, "message must not be empty"
    parsed = type(build_theirs()).parse(data)
    _assert_no_unknown_fields_theirs(parsed)
    assert parsed == build_theirs()
    # Same ProtoJSON view from both libraries (enum names, bytes, structs, durations).
    assert parsed.to_dict(casing=betterproto2.Casing.SNAKE) == json_format.MessageToDict(
        ours, preserving_proto_field_name=True
    )


@pytest.mark.parametrize("case", sorted(CASES))
def test_envoy_to_ours(case: str) -> None:
    build_ours, build_theirs = CASES[case]
    data = bytes(build_theirs())
    assert data, "message must not be empty"
    parsed = type(build_ours()).FromString(data)
    _assert_no_unknown_fields_ours(parsed)
    assert parsed == build_ours()
    # Re-serializing what we parsed must be accepted by the reference unchanged.
    assert type(build_theirs()).parse(parsed.SerializeToString()) == build_theirs()


# --------------------------------------------------------------------------------------
# Concrete spot checks (explicit values, not just equality of two builders)
# --------------------------------------------------------------------------------------


def test_request_headers_from_envoy_concrete_values() -> None:
    _, build_theirs = CASES["req.request_headers"]
    req = P.ProcessingRequest.FromString(bytes(build_theirs()))
    assert req.WhichOneof("request") == "request_headers"
    hdrs = {h.key: (h.raw_value, h.value) for h in req.request_headers.headers.headers}
    assert hdrs[":method"] == (b"POST", "")
    assert hdrs["authorization"] == (b"Bearer sk-test-\xc3\xa9\x00\xff", "")
    assert hdrs["x-legacy-string-value"] == (b"", "set-via-value")
    assert req.request_headers.end_of_stream is False

    attrs = req.attributes["envoy.filters.http.ext_proc"]
    assert attrs.fields["request.path"].string_value == "/v1/chat/completions"
    assert attrs.fields["request.size"].number_value == 1234
    assert attrs.fields["connection.mtls"].WhichOneof("kind") == "null_value"
    llmux = (
        attrs.fields["xds.upstream_host_metadata"]
        .struct_value.fields["filter_metadata"]
        .struct_value.fields["llmux"]
        .struct_value
    )
    assert llmux.fields["provider"].string_value == "openai"
    assert llmux.fields["weight"].number_value == 3
    assert llmux.fields["tls"].bool_value is True
    assert [v.string_value for v in llmux.fields["tags"].list_value.values] == ["a", "b"]

    assert req.metadata_context.filter_metadata["llmux"]["tenant"] == "acme"
    assert req.protocol_config.request_body_mode == M.ProcessingMode.BUFFERED
    assert req.protocol_config.response_body_mode == M.ProcessingMode.FULL_DUPLEX_STREAMED
    assert req.protocol_config.send_body_without_waiting_for_header_response is True


def test_response_to_envoy_concrete_values() -> None:
    build_ours, _ = CASES["resp.request_headers_replace"]
    resp = bp_ep.ProcessingResponse.parse(build_ours().SerializeToString())
    assert betterproto2.which_one_of(resp, "response")[0] == "request_headers"
    common = resp.request_headers.response
    assert common.status == bp_ep.CommonResponseResponseStatus.CONTINUE_AND_REPLACE
    assert common.clear_route_cache is True
    assert common.body_mutation.body == NEW_BODY
    assert betterproto2.which_one_of(common.body_mutation, "mutation")[0] == "body"
    sets = common.header_mutation.set_headers
    assert [(s.header.key, s.header.raw_value) for s in sets] == [
        ("x-llmux-provider", b"anthropic"),
        (":path", b"/v1/messages"),
        ("x-api-key", b"sk-ant-\x01\x02"),
    ]
    assert [s.append_action for s in sets] == [
        TA.OVERWRITE_IF_EXISTS_OR_ADD,
        TA.ADD_IF_ABSENT,
        TA.OVERWRITE_IF_EXISTS,
    ]
    assert [s.append for s in sets] == [None, None, False]  # BoolValue presence preserved
    assert sets[1].keep_empty_value is True
    assert common.header_mutation.remove_headers == REMOVE
    assert resp.mode_override.request_body_mode == TBS.BUFFERED
    assert resp.mode_override.response_body_mode == TBS.STREAMED
    assert resp.mode_override.request_trailer_mode == THS.SKIP
    assert resp.dynamic_metadata.to_dict() == {
        "llmux": {
            "provider": "anthropic",
            "model": "claude-sonnet",
            "stream": True,
            "prompt_tokens": 12.0,
            "route": {"attempt": 1.0, "fallbacks": ["openai", "bedrock"]},
        }
    }


def test_clear_body_and_immediate_response_concrete_values() -> None:
    clear = bp_ep.ProcessingResponse.parse(
        CASES["resp.request_body_clear"][0]().SerializeToString()
    )
    mutation = clear.request_body.response.body_mutation
    assert betterproto2.which_one_of(mutation, "mutation") == ("clear_body", True)

    imm = bp_ep.ProcessingResponse.parse(CASES["resp.immediate_response"][0]().SerializeToString())
    ir = imm.immediate_response
    assert ir.status.code == bp_type.StatusCode.TooManyRequests and int(ir.status.code) == 429
    assert ir.body == ERROR_BODY
    assert ir.details == "llmux_rate_limited"
    assert [(s.header.key, s.header.raw_value) for s in ir.headers.set_headers] == [
        ("content-type", b"application/json"),
        ("retry-after", b"7"),
    ]
    assert ir.grpc_status is None

    empty = bp_ep.ProcessingResponse.parse(
        CASES["resp.request_headers_empty_continue"][0]().SerializeToString()
    )
    # An empty HeadersResponse must still select the oneof (Envoy treats it as CONTINUE).
    assert betterproto2.which_one_of(empty, "response") == (
        "request_headers",
        bp_ep.HeadersResponse(),
    )


# --------------------------------------------------------------------------------------
# Schema: field numbers / types / oneofs and enum values vs. the reference
# --------------------------------------------------------------------------------------

_OUR_FILES = [P.DESCRIPTOR, B.DESCRIPTOR, S.DESCRIPTOR, M.DESCRIPTOR]
_BP_MODULES = {
    "envoy.service.ext_proc.v3": bp_ep,
    "envoy.config.core.v3": bp_core,
    "envoy.type.v3": bp_type,
    "envoy.extensions.filters.http.ext_proc.v3": bp_mode,
}
_SCALAR = {
    FD.TYPE_BOOL: "bool",
    FD.TYPE_BYTES: "bytes",
    FD.TYPE_STRING: "string",
    FD.TYPE_UINT32: "uint32",
    FD.TYPE_ENUM: "enum",
    FD.TYPE_MESSAGE: "message",
}


def _bp_name(desc) -> str:
    """betterproto2 flattens nested type names: ProcessingMode.BodySendMode -> ProcessingModeBodySendMode."""
    pkg = desc.file.package
    return desc.full_name[len(pkg) + 1 :].replace(".", "")


def _all_messages():
    for fdesc in _OUR_FILES:
        yield from fdesc.message_types_by_name.values()


def _all_enums():
    for fdesc in _OUR_FILES:
        yield from fdesc.enum_types_by_name.values()
        for m in fdesc.message_types_by_name.values():
            yield from m.enum_types


@pytest.mark.parametrize("msg", list(_all_messages()), ids=lambda m: m.full_name)
def test_message_schema_matches_envoy(msg) -> None:
    cls = getattr(_BP_MODULES[msg.file.package], _bp_name(msg))
    theirs = {f.name: f.metadata["betterproto"] for f in dataclasses.fields(cls)}
    ours = {f.name: f for f in msg.fields}
    # We declare the complete field set of every message we define (no silent subsetting
    # inside a message), so unknown-field loss cannot happen for these types.
    assert set(ours) == set(theirs)
    for name, fd in ours.items():
        meta = theirs[name]
        assert fd.number == meta.number, name
        is_map = fd.type == FD.TYPE_MESSAGE and fd.message_type.GetOptions().map_entry
        assert (meta.proto_type == "map") == is_map, name
        if not is_map:
            assert _SCALAR[fd.type] == meta.proto_type, name
            assert (fd.is_repeated) == meta.repeated, name
        real_oneof = fd.containing_oneof
        assert (real_oneof.name if real_oneof else None) == meta.group, name
        if fd.type in (FD.TYPE_MESSAGE, FD.TYPE_ENUM) and not is_map and meta.unwrap is None:
            ref = fd.message_type if fd.type == FD.TYPE_MESSAGE else fd.enum_type
            hint = next(f for f in dataclasses.fields(cls) if f.name == name).type
            bare = str(hint).replace(" | None", "").removeprefix("list[").removesuffix("]")
            assert bare.split(".")[-1] == _bp_name(ref), name


@pytest.mark.parametrize("enum", list(_all_enums()), ids=lambda e: e.full_name)
def test_enum_values_match_envoy(enum) -> None:
    cls = getattr(_BP_MODULES[enum.file.package], _bp_name(enum))
    assert {v.name: v.number for v in enum.values} == {e.name: e.value for e in cls}


def test_grpc_method_path() -> None:
    svc = P.DESCRIPTOR.services_by_name["ExternalProcessor"]
    method = svc.methods_by_name["Process"]
    assert (
        f"/{svc.full_name}/{method.name}" == "/envoy.service.ext_proc.v3.ExternalProcessor/Process"
    )
    assert method.input_type.full_name == "envoy.service.ext_proc.v3.ProcessingRequest"
    assert method.output_type.full_name == "envoy.service.ext_proc.v3.ProcessingResponse"
    assert method.client_streaming and method.server_streaming
    assert hasattr(pb.ext_proc_grpc, "ExternalProcessorServicer")
    assert hasattr(pb.ext_proc_grpc, "add_ExternalProcessorServicer_to_server")
