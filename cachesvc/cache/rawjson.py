"""Which well-formed JSON texts PostgreSQL's jsonb refuses for their escapes.

Guarantee: for a well-formed JSON text (as msgspec has validated it), ``jsonb_refuses`` is
True exactly when ``text::jsonb`` fails in a UTF-8 database because of an escape: a
``\\u0000``, or a UTF-16 surrogate escape that is not a high one immediately followed by a
low one, in any string (object keys included). An escape starts at a backslash preceded by
an even number of backslashes, so ``\\\\u0000`` (an escaped backslash, then ``u0000``) is
plain text that jsonb takes. The one other refusal, a number beyond numeric's range
(``1e200000``), is left to PostgreSQL (the store then keeps the text): looking for such
numbers here measured 12-16 ms per MB of body, against 1-2 ms per MB for this check.

No project imports.
"""

from __future__ import annotations

import re

# `\u0000` or a surrogate escape, if its backslash is not itself escaped (_escaped).
_SUSPECT_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F][0-9a-fA-F]{2})")


def jsonb_refuses(text: str) -> bool:
    """True if ``text`` (well-formed JSON) holds an escape that jsonb refuses."""
    if "\\u" not in text:
        return False
    unpaired_high_end = -1  # where an unpaired high surrogate escape ends, if one is open
    for match in _SUSPECT_ESCAPE.finditer(text):
        start, end = match.span()
        if _escaped(text, start):
            continue
        code = int(text[start + 2:end], 16)
        if code == 0:
            return True
        if code <= 0xDBFF:  # high surrogate: a low one must follow at once
            if unpaired_high_end != -1:
                return True
            unpaired_high_end = end
        elif unpaired_high_end == start:  # low surrogate completing the pair
            unpaired_high_end = -1
        else:
            return True
    return unpaired_high_end != -1


def _escaped(text: str, index: int) -> bool:
    """Whether the backslash at ``index`` follows an odd number of backslashes."""
    before = index
    while before > 0 and text[before - 1] == "\\":
        before -= 1
    return (index - before) % 2 == 1
