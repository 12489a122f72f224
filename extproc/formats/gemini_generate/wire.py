"""Gemini generateContent: what its client side and provider side share.

Wire shapes (msgspec Structs), name tables and small helpers used by both
sides. Translates no whole message and does no I/O.
"""

from __future__ import annotations

import msgspec

from extproc import ir
from extproc.formats.gemini_json import DECODER, Json

STREAM_CONTENT_TYPE = "text/event-stream"

_ENCODER = msgspec.json.Encoder()


def _model_name(model: str) -> str:
    return model.removeprefix("models/")


def _args_object(arguments: str) -> Json | None:
    """Tool-call arguments as the object Gemini wants; None when they are not one."""
    if not arguments.strip():
        return {}
    try:
        value = DECODER.decode(arguments)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _encode_part(part: ir.Part, where: str = "content") -> Json:
    if isinstance(part, ir.TextPart):
        return {"text": part.text}
    if isinstance(part, ir.ImagePart):
        return _encode_image(part, where)
    if part.source_format == "gemini":
        return part.raw  # a Gemini part the IR does not model, going back to Gemini
    raise ir.invalid_request(
        f"{where}: content of type {part.raw.get('type', 'unknown')!r} from {part.source_format} "
        "is not supported by the gemini provider"
    )


def _encode_image(part: ir.ImagePart, where: str) -> Json:
    if part.data is not None:
        if not part.media_type:
            raise ir.invalid_request(f"{where}: inline image data needs a media type")
        return {"inlineData": {"mimeType": part.media_type, "data": part.data}}
    url = part.url or ""
    if url.startswith("data:"):
        head, _, data = url.partition(",")
        mime = head[5:].split(";", 1)[0]
        if not head.endswith(";base64") or not mime or not data:
            raise ir.invalid_request(f"{where}: image data URLs must be base64 with a media type")
        return {"inlineData": {"mimeType": mime, "data": data}}
    if url.startswith(("https://generativelanguage.googleapis.com/", "gs://")):
        return {"fileData": {"mimeType": part.media_type or "image/jpeg", "fileUri": url}}
    raise ir.invalid_request(
        f"{where}: image URLs are not supported by the gemini provider; send base64 data"
    )
