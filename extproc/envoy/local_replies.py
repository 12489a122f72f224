"""Envoy's own replies in the client's API format (HCM `local_reply_config`).

Envoy answers some requests itself — upstream connect failure or timeout, no healthy
target, a body over the buffer limit (413), a slow body (408), the ext_proc being down.
Mappers give those replies the error shape of the client's dialect, which the router
phase names in dynamic metadata (or, before it ran, the path suggests). Plain dicts.
"""

from __future__ import annotations

from typing import Any

from extproc.envoy.contract import DIALECT_KEY, DIALECT_NAMESPACE

# Envoy's own local replies (upstream connect failure, timeout, no healthy host)
# are reshaped into the client's error format. Replies the ext_proc sends itself
# carry no response flag and are left alone.
_ENVOY_FAILURE_FLAGS = [
    "UF",
    "UH",
    "UT",
    "URX",
    "UO",
    "UC",
    "UR",
    "UPE",
    "LR",
    "NR",
    "UMSDR",
    "LH",
    "DT",
    "SI",
]

_ERROR_BODIES: dict[str, dict[str, Any]] = {
    "openai": {
        "error": {
            "message": "%LOCAL_REPLY_BODY%",
            "type": "upstream_error",
            "param": None,
            "code": "%RESPONSE_CODE%",
        }
    },
    "anthropic": {"type": "error", "error": {"type": "api_error", "message": "%LOCAL_REPLY_BODY%"}},
    "gemini": {
        "error": {
            "code": "%RESPONSE_CODE%",
            "message": "%LOCAL_REPLY_BODY%",
            "status": "UNAVAILABLE",
        }
    },
    "ollama": {"error": "%LOCAL_REPLY_BODY%"},
}


def _status_filter(code: int) -> dict[str, Any]:
    return {
        "status_code_filter": {
            "comparison": {
                "op": "EQ",
                "value": {"default_value": code, "runtime_key": f"llmux.{code}"},
            }
        }
    }


# The ext_proc filter's own failure (the ext_proc down or too slow) answers with this
# status; no other local reply uses it, so the mappers below can shape it too.
EXTPROC_FAILURE_STATUS = 502

# Before the router phase ran there is no dialect metadata: guess from the path.
_PATH_DIALECTS: dict[str, list[dict[str, Any]]] = {
    "anthropic": [{"prefix": "/v1/messages"}],
    "gemini": [
        {"contains": ":generateContent"},
        {"contains": ":streamGenerateContent"},
        {"contains": "EmbedContent"},
        {"prefix": "/v1beta/"},
    ],
    "ollama": [{"prefix": "/api/"}],
}


def _path_filter(dialect: str) -> dict[str, Any]:
    matches = [
        {"header_filter": {"header": {"name": ":path", "string_match": m}}}
        for m in _PATH_DIALECTS[dialect]
    ]
    return matches[0] if len(matches) == 1 else {"or_filter": {"filters": matches}}


def _mapper(match: dict[str, Any], dialect: str) -> dict[str, Any]:
    return {
        "filter": match,
        "body_format_override": {
            "json_format": _ERROR_BODIES[dialect],
            "content_type": "application/json",
        },
    }


def local_reply_config() -> dict[str, Any]:
    """Envoy's own replies in the client's error format.

    Shaped: Envoy's failures (by response flag), the 413 (body over the buffer limit)
    and 408 (slow body) it answers before the ext_proc sees a body, and the reply when
    the ext_proc itself fails. The ext_proc's own immediate responses are left alone.
    """
    envoy_failure = {
        "or_filter": {
            "filters": [
                {"response_flag_filter": {"flags": _ENVOY_FAILURE_FLAGS}},
                _status_filter(413),
                _status_filter(408),
                _status_filter(EXTPROC_FAILURE_STATUS),
            ]
        }
    }
    mappers = []
    for dialect in ("anthropic", "gemini", "ollama"):
        by_metadata = {
            "metadata_filter": {
                "matcher": {
                    "filter": DIALECT_NAMESPACE,
                    "path": [{"key": DIALECT_KEY}],
                    "value": {"string_match": {"exact": dialect}},
                }
            }
        }
        mappers.append(_mapper({"and_filter": {"filters": [envoy_failure, by_metadata]}}, dialect))
    for dialect in ("anthropic", "gemini", "ollama"):
        processor_down = _status_filter(EXTPROC_FAILURE_STATUS)
        match = {"and_filter": {"filters": [processor_down, _path_filter(dialect)]}}
        mappers.append(_mapper(match, dialect))
    mappers.append(_mapper(envoy_failure, "openai"))
    return {"mappers": mappers}
