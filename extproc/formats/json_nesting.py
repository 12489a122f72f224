"""How deeply a JSON body nests: the one guard every client body passes before a codec.

JSON decoders recurse; a body nesting ~1,000 levels deep in a free-form field (tool
parameters, unknown fields) would raise RecursionError inside any codec. This scan
counts `[`/`{` nesting outside strings at C speed (regex, translate, accumulate) and
raises the usual invalid_request, so the client gets a 400 in its own format.
Pure: bytes in, a verdict out.
"""

from __future__ import annotations

import re
from itertools import accumulate

from extproc import ir

MAX_DEPTH = 128  # far beyond any real request; far below the decoders' recursion limits

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = [1 if b in b"[{" else -1 for b in range(256)]


def depth(body: bytes) -> int:
    """The deepest `[`/`{` nesting outside JSON strings (an upper bound on broken JSON)."""
    brackets = _STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


def check(body: bytes) -> None:
    """Raise invalid_request when `body` nests deeper than MAX_DEPTH."""
    # Fewer openers than the limit cannot nest deeper: most bodies stop at two counts.
    if body.count(b"[") + body.count(b"{") > MAX_DEPTH and depth(body) > MAX_DEPTH:
        raise ir.invalid_request(f"the JSON body nests deeper than {MAX_DEPTH} levels")
