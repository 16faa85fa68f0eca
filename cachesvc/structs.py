"""The one msgspec Struct base of every JSON body the service reads or writes.

camelCase on the wire (``rename="camel"``), unknown fields refused, keyword-only fields. The
same Structs validate requests, encode responses and give /openapi.json its JSON Schema.
"""

from __future__ import annotations

import msgspec


class Struct(msgspec.Struct, rename="camel", forbid_unknown_fields=True, kw_only=True):
    pass
