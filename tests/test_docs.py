"""The documentation: the MkDocs site builds with warnings as errors, and no link or image is dead.

The site is built into a temporary folder (never the checkout's ``site/``). Links are read from
README.md and every page under docs/: a relative target must name an existing file, an anchor a
heading of the page it points to, and an http(s) link must be well-formed (it is not fetched:
the tests run without network).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
README_MAX_LINES = 250

FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.DOTALL)
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]"                 # [text] or ![alt]
                         r"\(\s*<?([^)\s>]*)>?(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")  # (target "title")
REFERENCE_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
HTML_TARGET = re.compile(r"<(?:a|img)\b[^>]*?\b(?:href|src)\s*=\s*[\"']([^\"']+)[\"']", re.IGNORECASE)
HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+(.+?)[ \t#]*$", re.MULTILINE)


def markdown_files() -> list[Path]:
    """README.md and every page of the site: the files whose links users follow."""
    return [REPO / "README.md", *sorted(DOCS.rglob("*.md"))]


def unfenced(text: str) -> str:
    """The text with fenced code blocks blanked: a ``# comment`` there is no heading."""
    return FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def prose(text: str) -> str:
    """The text with code blocks and code spans blanked: a link there is not one."""
    return CODE_SPAN.sub(lambda m: " " * len(m.group(0)), unfenced(text))


def link_targets(text: str) -> list[str]:
    """Every link and image target of a markdown text, inline, reference-style or HTML."""
    body = prose(text)
    return [m.group(1) for pattern in (INLINE_LINK, REFERENCE_DEF, HTML_TARGET)
            for m in pattern.finditer(body)]


def slugify(heading: str) -> str:
    """A heading's anchor as MkDocs' toc extension writes it (also GitHub's, for these pages)."""
    text = re.sub(r"<[^>]+>", "", heading)                     # inline HTML
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)     # links keep their text
    text = text.replace("`", "")
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(path: Path) -> set[str]:
    """The anchors of a page's headings; a repeated heading also gets its numbered variants."""
    found: set[str] = set()
    headings = [slugify(h) for h in HEADING.findall(unfenced(path.read_text(encoding="utf-8")))]
    for i, slug in enumerate(headings):
        repeats = headings[:i].count(slug)
        found.add(slug if repeats == 0 else f"{slug}_{repeats}")   # MkDocs
        if repeats:
            found.add(f"{slug}-{repeats}")                         # GitHub
    return found


def broken_link(source: Path, target: str) -> str | None:
    """Why ``target`` (a link in ``source``) does not resolve, or None when it does."""
    if not target:
        return "empty link target"
    parts = urlsplit(target)
    if parts.scheme:
        if parts.scheme not in ("http", "https"):
            return f"scheme {parts.scheme!r} is neither http nor https"
        if "." not in parts.netloc or any(c.isspace() for c in target):
            return "malformed URL"
        return None
    if target.startswith("/"):
        return "absolute path: links must be relative to the file, on GitHub and on the site"
    page = (source.parent / unquote(parts.path)).resolve() if parts.path else source
    if not page.exists():
        return f"{page.relative_to(REPO) if page.is_relative_to(REPO) else page} does not exist"
    if not page.is_relative_to(REPO):
        return "points outside the repository"
    if parts.fragment and page.suffix == ".md" and parts.fragment not in anchors(page):
        return f"{page.name} has no heading with anchor #{parts.fragment}"
    return None


def test_every_link_and_image_resolves() -> None:
    problems = []
    counted = 0
    for path in markdown_files():
        for target in link_targets(path.read_text(encoding="utf-8")):
            counted += 1
            reason = broken_link(path, target)
            if reason:
                problems.append(f"{path.relative_to(REPO)}: ({target}): {reason}")
    assert not problems, "\n".join(problems)
    assert counted > 20, f"only {counted} links found: the link parser is broken"


def test_the_readme_links_the_site_and_shows_the_headline_plot() -> None:
    targets = link_targets((REPO / "README.md").read_text(encoding="utf-8"))
    assert any(t.endswith(".png") for t in targets), "the README shows the headline plot"
    assert any(t.startswith("docs/api.md") for t in targets), targets


def test_readme_is_a_users_page() -> None:
    lines = (REPO / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines; depth belongs in docs/ (issue 25: at most ~250)")


@pytest.mark.parametrize(("source", "target", "reason"), [
    ("README.md", "docs/index.md", None),
    ("README.md", "docs/own-model.md#validation", None),
    ("README.md", "docs/own-model.md#no-such-heading", "has no heading"),
    ("README.md", "docs/missing.md", "does not exist"),
    ("docs/index.md", "zoo.md", None),
    ("docs/index.md", "../README.md", None),
    ("README.md", "/etc/passwd", "absolute path"),
    ("README.md", "https://github.com/microsoft/nni/issues/5726", None),
    ("README.md", "ftp://example.org/x", "neither http nor https"),
    ("README.md", "https://localhost", "malformed"),
])
def test_the_link_checker_itself(source: str, target: str, reason: str | None) -> None:
    found = broken_link(REPO / source, target)
    assert (found is None) if reason is None else (found is not None and reason in found), found


def test_links_in_code_are_not_links() -> None:
    text = "see `[a](missing.md)`\n```\n[b](gone.md)\n# not a heading\n```\n[c](zoo.md) ![d](x.png)\n"
    assert link_targets(text) == ["zoo.md", "x.png"]


def test_slugs_match_mkdocs() -> None:
    from markdown.extensions.toc import slugify as mkdocs_slugify

    for heading in ("config.yml (NNI 3 format)", "`allocation: local` on the other landscapes",
                    "Kubernetes, AML and the others (not tested)", "Issue 11's targets"):
        assert slugify(heading) == mkdocs_slugify(heading.replace("`", ""), "-")


def test_the_site_builds_strict(tmp_path: Path) -> None:
    if importlib.util.find_spec("mkdocs") is None:
        pytest.fail("mkdocs is not installed: it is pinned in requirements.lock (make venv)")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}   # mkdocs-material's banner, not a warning
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
         str(REPO / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "index.html").is_file()
    api = (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8")
    for name in ("nni_prune_tuners.PruneTPETuner", "nni_prune_tuners.PruneEarlyStopAssessor",
                 "nni_prune_tuners.trial.Pruner"):
        assert f'id="{name}"' in api, f"the API reference lacks {name}"
