"""The docs stay true to the code: the settings reference is current, and every link resolves."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from cachesvc import settings_doc
from cachesvc.migrations import PROJECT_ROOT
from cachesvc.settings import _group, _setting, env_name, walk

DOCS = sorted([PROJECT_ROOT / "README.md", *(PROJECT_ROOT / "docs").glob("*.md")])

# [text](target): inline links, not images' alt text nor code spans (those are stripped first).
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
CODE_SPAN = re.compile(r"`[^`\n]*`")


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, -N for repeats."""
    seen: dict[str, int] = {}
    found = set()
    for line in FENCE.sub("", path.read_text()).splitlines():
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        slug = re.sub(r"[^\w\- ]", "", match.group(1).replace("`", "").lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def links(path: Path) -> list[str]:
    text = CODE_SPAN.sub("", FENCE.sub("", path.read_text()))
    return LINK.findall(text)


def test_settings_doc_is_current():
    current = (PROJECT_ROOT / "docs" / "settings.md").read_text()
    assert current == settings_doc.render(), (
        f"docs/settings.md is not what cachesvc/settings.py renders; regenerate it: {settings_doc.COMMAND}"
    )


def test_settings_doc_shows_no_secret_default():
    rendered = settings_doc.render()
    secrets = [f for _, f in walk() if f.metadata.get("secret")]
    assert {env_name(f) for f in secrets} >= {"CACHESVC_JWT_SECRET", "CACHESVC_DATABASE_URL", "CACHESVC_READ_DATABASE_URL"}
    for f in secrets:
        if f.default:
            assert str(f.default) not in rendered, env_name(f)


@dataclass(frozen=True)
class _Replica:
    read_pool_size: int = _setting(10, help="replica pool")


@dataclass(frozen=True)
class _Grouped:
    port: int = _setting(8080, help="port")
    replica: _Replica = _group(_Replica, "replica")
    jwt_secret: str = _setting("x" * 40, secret=True, help="secret")


def test_settings_doc_renders_a_section_per_group():
    rendered = settings_doc.render(_Grouped)
    assert "## replica\n\n| variable | default | meaning |" in rendered
    assert "| `CACHESVC_READ_POOL_SIZE` | `10` | replica pool |" in rendered
    assert "## service" in rendered and "| `CACHESVC_PORT` | `8080` | port |" in rendered
    assert "x" * 40 not in rendered


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(PROJECT_ROOT)))
def test_relative_links_resolve(doc: Path):
    broken = []
    for target in links(doc):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: … are not checked here
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.exists():
            broken.append(f"{target}: no file {path}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.relative_to(PROJECT_ROOT)}")
    assert broken == []


def test_the_link_checker_sees_a_broken_link(tmp_path: Path):
    (tmp_path / "a.md").write_text("# Title\n\n## Two words: here\n")
    assert anchors(tmp_path / "a.md") == {"title", "two-words-here"}
    (tmp_path / "b.md").write_text("[ok](a.md#two-words-here) `[no](x.md)` [bad](a.md#nope)\n")
    assert links(tmp_path / "b.md") == ["a.md#two-words-here", "a.md#nope"]


def test_readme_stays_short():
    assert len((PROJECT_ROOT / "README.md").read_text().splitlines()) <= 250
