"""WAL positions (``pg_lsn``) as PostgreSQL prints them, and as byte positions.

A write's consistency token is one (``16/B374D848``); the replica monitor compares them as
integers. No project imports: the HTTP layer validates tokens with ``LSN_RE`` and ``parse_lsn``.
"""

from __future__ import annotations

import re

LSN_RE = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")


def parse_lsn(text: str) -> int:
    """``16/B374D848`` -> a byte position; ValueError if it is not one."""
    match = LSN_RE.match(text.strip())
    if not match:
        raise ValueError(f"not a WAL position: {text!r}")
    return (int(match[1], 16) << 32) | int(match[2], 16)


def format_lsn(position: int) -> str:
    """A byte position as PostgreSQL prints a pg_lsn."""
    return f"{position >> 32:X}/{position & 0xFFFFFFFF:X}"
