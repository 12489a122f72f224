"""Single import point for the generated Envoy ext_proc v3 protobuf/gRPC stubs.

    from extproc.transport.pb import ext_proc_pb2, ext_proc_grpc, base_pb2, http_status_pb2, processing_mode_pb2

The stubs live in the gitignored package ``extproc/_proto`` and are generated from
``proto/`` by ``python -m extproc._build_proto``.
"""

from __future__ import annotations

try:
    from extproc._proto.envoy.config.core.v3 import base_pb2
    from extproc._proto.envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
    from extproc._proto.envoy.service.ext_proc.v3 import (
        external_processor_pb2 as ext_proc_pb2,
    )
    from extproc._proto.envoy.service.ext_proc.v3 import (
        external_processor_pb2_grpc as ext_proc_grpc,
    )
    from extproc._proto.envoy.type.v3 import http_status_pb2
except ImportError as exc:  # pragma: no cover - exercised only without generated stubs
    raise ImportError(
        "llmux's Envoy ext_proc protobuf stubs are missing or out of date "
        f"({exc}). Generate them with `python -m extproc._build_proto` "
        "(run from the repository root)."
    ) from exc

__all__ = [
    "base_pb2",
    "ext_proc_grpc",
    "ext_proc_pb2",
    "http_status_pb2",
    "processing_mode_pb2",
]
