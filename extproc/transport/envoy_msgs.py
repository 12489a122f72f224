"""Neutral values <-> ext_proc protobuf messages (the generated upb classes).

Owns every detail of the ext_proc wire shape: header maps, attribute structs,
mutations, mode overrides, immediate responses. No decisions are made here.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from extproc.envoy.contract import DIALECT_KEY, DIALECT_NAMESPACE, SUBSET_KEY, TARGET_KEY
from extproc.phases.actions import Action, Continue, Respond
from extproc.transport.pb import base_pb2, ext_proc_pb2, processing_mode_pb2

ProcessingRequest = ext_proc_pb2.ProcessingRequest
ProcessingResponse = ext_proc_pb2.ProcessingResponse
_BODY_MODES = {
    "STREAMED": processing_mode_pb2.ProcessingMode.STREAMED,
    "BUFFERED": processing_mode_pb2.ProcessingMode.BUFFERED,
    "NONE": processing_mode_pb2.ProcessingMode.NONE,
}
_HEADER_MODES = {
    "SEND": processing_mode_pb2.ProcessingMode.SEND,
    "SKIP": processing_mode_pb2.ProcessingMode.SKIP,
}
_PM = processing_mode_pb2.ProcessingMode
_BASE_MODE = _PM(  # ext_proc_filters._processing_mode; only the router filter takes overrides
    request_header_mode=_PM.SEND,
    response_header_mode=_PM.SEND,
    request_body_mode=_PM.BUFFERED,
    response_body_mode=_PM.NONE,
    request_trailer_mode=_PM.SKIP,
    response_trailer_mode=_PM.SKIP,
)
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def header_dict(headers: ext_proc_pb2.HttpHeaders) -> dict[str, str]:
    """Envoy sends raw_value bytes (and value for older configs); keys are lower case."""
    return {
        h.key: h.raw_value.decode("utf-8", "replace") if h.raw_value else h.value
        for h in headers.headers.headers
    }


def upstream_target(request: ext_proc_pb2.ProcessingRequest) -> int | None:
    """The target index from `xds.upstream_host_metadata` (set on the endpoint)."""
    attributes = request.attributes.get("envoy.filters.http.ext_proc")
    if attributes is None:
        return None
    metadata = attributes.fields.get("xds.upstream_host_metadata")
    if metadata is None:
        return None
    # Envoy 1.40 sends the Metadata message in protobuf text format, as a string.
    return _target_from_text(metadata.string_value)


@functools.lru_cache(maxsize=4096)  # one distinct string per endpoint
def _target_from_text(text: str) -> int | None:
    match = _TARGET.search(text)
    return int(match.group(1)) if match else None


_TARGET = re.compile(r'key: "' + TARGET_KEY + r'" value \{ number_value: (\d+)')


def _fill_common(common: ext_proc_pb2.CommonResponse, action: Continue) -> None:
    common.SetInParent()  # present even when empty: a plain CONTINUE
    if action.set_headers or action.remove_headers:
        mutation = common.header_mutation
        for key, value in action.set_headers:
            option = mutation.set_headers.add()  # filled in place: no message to copy
            option.header.key = key
            option.header.raw_value = value.encode()
            option.append_action = _OVERWRITE
        mutation.remove_headers.extend(action.remove_headers)
    if action.body is not None:
        common.body_mutation.body = action.body
    if action.clear_route_cache:
        common.clear_route_cache = True


def response_for(phase: str, action: Action) -> ext_proc_pb2.ProcessingResponse:
    """The ProcessingResponse answering `phase` (the ProcessingRequest oneof name)."""
    if isinstance(action, Respond):
        return _immediate(action)
    response = ProcessingResponse()
    target: Any = getattr(response, phase)
    _fill_common(target.response, action)
    if action.dialect is not None:
        ours = response.dynamic_metadata.fields[DIALECT_NAMESPACE].struct_value
        ours.fields[DIALECT_KEY].string_value = action.dialect
    if action.eligible_mask is not None:
        lb = response.dynamic_metadata.fields["envoy.lb"].struct_value
        lb.fields[SUBSET_KEY].string_value = str(action.eligible_mask)
    if action.response_body_mode is not None or action.response_header_mode is not None:
        # An override replaces the whole mode: restate what the filters are configured with.
        mode = response.mode_override
        mode.CopyFrom(_BASE_MODE)
        if action.response_header_mode is not None:
            mode.response_header_mode = _HEADER_MODES[action.response_header_mode]
        if action.response_body_mode is not None:
            mode.response_body_mode = _BODY_MODES[action.response_body_mode]
    return response


def more_time(seconds: float) -> ext_proc_pb2.ProcessingResponse:
    """Not an answer: asks Envoy to wait `seconds` for the answer it waits for.

    Bounded by the filter's `max_message_timeout`.
    """
    response = ProcessingResponse()
    response.override_message_timeout.FromMilliseconds(max(1, int(seconds * 1000)))
    return response


def _immediate(action: Respond) -> ext_proc_pb2.ProcessingResponse:
    response = ProcessingResponse()
    immediate = response.immediate_response
    immediate.status.code = action.status  # type: ignore[assignment]
    immediate.body = action.body
    for key, value in action.headers:
        immediate.headers.set_headers.add(
            header=base_pb2.HeaderValue(key=key, raw_value=value.encode()),
            append_action=_OVERWRITE,
        )
    return response
