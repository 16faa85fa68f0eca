"""What a key is, for cache entries and feature entities alike.

A key travels in a URL path, so it must reach the service as it was sent, through any URL
client: 1-512 characters, none of them a control character (C0, DEL, C1), and no dot segment.
A dot segment is a ``/``- or ``\\``-separated part that is ``.`` or ``..``, also spelled with
``%2e``: URL parsers remove it (``/v1/cache/chapter/..`` becomes ``/v1/cache/``), so such a
key would name another route.

``PATTERN`` is the JSON Schema (ECMA-262) pattern of /openapi.json. Python's ``re`` reads it
the same way only under ``fullmatch``: with ``match`` or ``search``, ``$`` also matches before
a final newline. Lengths are counted in code points, as JSON Schema's ``maxLength`` counts them.
``Key`` is the type of a key in a JSON body; ``is_valid`` is the check every handler makes.
"""

from __future__ import annotations

import re
from typing import Annotated

import msgspec

MAX_LENGTH = 512

DOT_SEGMENT = r"(?:^|[/\\])(?:\.|%2[Ee]){1,2}(?:[/\\]|$)"
PATTERN = rf"^(?![\s\S]*{DOT_SEGMENT})[^\x00-\x1f\x7f-\x9f]+$"
SEGMENT_PATTERN = rf"^(?![\s\S]*{DOT_SEGMENT})[^/\x00-\x1f\x7f-\x9f]+$"  # a key that is one path segment
DESCRIPTION = (
    f"1-{MAX_LENGTH} characters, no control characters, and no '/'- or '\\'-separated part "
    "that is '.' or '..' (also spelled %2e)"
)

_KEY = re.compile(PATTERN)

# A key in a JSON body. msgspec checks the pattern with re.search, so handlers check again with is_valid.
Key = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_LENGTH, pattern=PATTERN, description=DESCRIPTION)]


def is_valid(key: str) -> bool:
    return len(key) <= MAX_LENGTH and _KEY.fullmatch(key) is not None
