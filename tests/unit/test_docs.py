"""The docs stay true to their sources: generated pages are current, and links lead somewhere.

Two pages of ``docs/`` restate facts owned elsewhere (the settings model, the benchmark results);
their generated blocks are rebuilt here in memory and compared, so a changed setting or a new
benchmark run without ``make docs`` fails the suite rather than leaving the page wrong.
"""

from __future__ import annotations

import difflib
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
from pydantic import SecretStr
from pydantic.fields import FieldInfo

from k2_etl.config import Settings, env_name

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("*/README.md")])


def _generator() -> ModuleType:
    """docs/generate.py, loaded from its file (``docs`` is a folder of pages, not a package)."""
    name = "k2_docs_generate"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "docs" / "generate.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the class is built
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.mark.parametrize("page", sorted(_generator().PAGES))
def test_generated_page_is_current(page: str) -> None:
    generate = _generator()
    text = (ROOT / "docs" / page).read_text()
    fresh = generate.regenerate(page, text)
    diff = "".join(list(difflib.unified_diff(text.splitlines(True), fresh.splitlines(True), "page", "sources"))[:40])
    if text != fresh:
        pytest.fail(f"docs/{page} is stale: run `make docs` and commit the result\n{diff}", pytrace=False)


def test_every_setting_is_documented_and_secrets_have_no_value() -> None:
    page = _generator().settings_block()
    for name, info in Settings.model_fields.items():
        assert info.description, f"{env_name(name)} has no description: its Field needs one (docs/settings.md)"
        assert f"### `{env_name(name)}`" in page
    secret = FieldInfo(annotation=SecretStr, default=SecretStr("hunter2"))
    assert _generator()._default(secret) == "set (not shown)"


def _without_code(text: str) -> str:
    """Markdown without fenced blocks and code spans, where brackets and '#' are not syntax."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def _anchors(path: Path) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces as '-',
    and '-1', '-2'... after a repeated one."""
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    anchors: set[str] = set()
    counts: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6} +(.+?) *$", text, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        repeat = counts.get(slug, 0)
        counts[slug] = repeat + 1
        anchors.add(f"{slug}-{repeat}" if repeat else slug)
    return anchors


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_lead_somewhere(page: Path) -> None:
    broken: list[str] = []
    for target in re.findall(r"\]\(([^)\s]+)\)", _without_code(page.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...: not ours to check
            continue
        file, _, anchor = target.partition("#")
        linked = (page.parent / file).resolve() if file else page
        if not linked.exists():
            broken.append(f"{target}: no file {linked.relative_to(ROOT) if linked.is_relative_to(ROOT) else linked}")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            broken.append(f"{target}: no heading #{anchor} in {linked.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)} links nowhere:\n" + "\n".join(broken)
