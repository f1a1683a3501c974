"""The README's links into docs/ (which `mkdocs build --strict` does not see: the README is not a page
of the site) lead to a page and a heading that exist, and every page of docs/ is in mkdocs.yml's nav."""

from __future__ import annotations

import re
import unicodedata

import yaml

from helpers.cli import REPO


def slug(heading: str) -> str:
    """A heading's anchor as Python-Markdown's toc (MkDocs) and GitHub make it for these headings."""
    text = unicodedata.normalize("NFKD", heading).encode("ascii", "ignore").decode()
    return re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", text).strip().lower())


def anchors(page: str) -> set[str]:
    text = re.sub(r"```.*?```", "", (REPO / page).read_text(), flags=re.DOTALL)  # `# comments` in code are not headings
    return {slug(m) for m in re.findall(r"^#{1,6} (.+)$", text, flags=re.MULTILINE)}


def test_the_readme_links_to_pages_and_headings_that_exist():
    links = re.findall(r"\]\(((?:docs/)[^)#\s]+)(?:#([^)\s]+))?\)", (REPO / "README.md").read_text())
    assert len(links) >= 10
    broken = [f"{page}#{anchor}" for page, anchor in links
              if not (REPO / page).is_file() or (anchor and page.endswith(".md") and anchor not in anchors(page))]
    assert not broken, broken


def test_every_docs_page_is_in_the_nav():
    nav = yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"]
    listed = {page for entry in nav for page in entry.values()}
    assert listed == {p.name for p in (REPO / "docs").glob("*.md")}
