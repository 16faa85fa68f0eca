"""``docs/settings.md``, rendered from the settings' own metadata (name, default, help).

Regenerate it after changing a setting::

    python -m cachesvc.settings_doc > docs/settings.md

``tests/test_docs.py`` fails while the file differs from what ``render()`` returns. The
service's own settings come first, then a section per group (``Settings.database``,
``.replica``, …), each setting under the variable it is read from. A secret shows no default.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from cachesvc.settings import PREFIX, Settings, env_name, walk

COMMAND = "python -m cachesvc.settings_doc > docs/settings.md"

HEADER = f"""\
# Settings

<!-- Generated from cachesvc/settings.py by `{COMMAND}`: do not edit by hand. -->

Configuration comes only from `{PREFIX}*` environment variables, read once at start-up into
one settings object. Any variable may be given as `<NAME>_FILE` instead: the path of a file
holding the value (stripped), the way container orchestrators and systemd credentials hand
secrets over. `cachesvc settings` prints the effective values with secrets masked (a DSN shows
all but its password). The defaults
suit the local stack that `scripts/dev` starts; there is no built-in JWT secret.
"""

FOOTER = """\
Outside the settings object, the local stack (`scripts/dev`, the tests and the benchmarks)
reads `CACHESVC_PG_BINDIR`: the directory of PostgreSQL's server binaries when they are not
under `/usr/lib/postgresql/<N>/bin`.
"""


def _default(f: dataclasses.Field) -> object:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _render_default(f: dataclasses.Field) -> str:
    if f.metadata.get("secret"):
        return "(secret: not shown)"
    value = _default(f)
    if value is None or value == "":
        return "(none)"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, Path):
        value = str(value)
    return f"`{value}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _groups(cls: type) -> list[tuple[str, list[dataclasses.Field]]]:
    """(section title, its settings) in declaration order: the service's own, then a group each."""
    titles = {f.name: f.metadata["group"] for f in dataclasses.fields(cls) if "group" in f.metadata}
    groups: dict[str, list[dataclasses.Field]] = {}
    for group, f in walk(cls):
        groups.setdefault(titles[group] if group else "service", []).append(f)
    return list(groups.items())


def _table(fields: list[dataclasses.Field]) -> list[str]:
    lines = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for f in fields:
        lines.append(f"| `{env_name(f)}` | {_render_default(f)} | {_cell(f.metadata.get('help', ''))} |")
    return lines


def render(cls: type = Settings) -> str:
    """The whole of ``docs/settings.md``."""
    lines = [HEADER]
    for title, fields in _groups(cls):
        lines += [f"## {title}", ""] + _table(fields) + [""]
    lines.append(FOOTER)
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(), end="")
