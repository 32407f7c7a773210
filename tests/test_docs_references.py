"""The repository explains itself: it cites only what it contains, and its links resolve.

Two rules, over the repository's files (tracked, or new and not ignored by git):

1. Code, tests and docs cite no document that is not in the repository: a
   file named by its name (``NOTES.md``, ``slides.txt``) must be one of the
   repository's files, a relative path must not climb out of the repository,
   and numbered sections ("§N"), numbered lessons and bare references to an
   issue tracker ("issue 12", "the performance issue") leave a reader with
   nothing to open. What the code relies on is stated in ``docs/`` (the
   architecture in ``docs/design.md``, other implementations in
   ``docs/peers.md``); a peer's tracker is cited as a full link.
2. Every relative link of the Markdown pages (``docs/`` and ``README.md``)
   leads to a file that exists, and its ``#anchor`` to an id the target page
   has. ``mkdocs build --strict`` fails on a missing file in ``docs/`` but only
   logs a missing anchor, and never reads ``README.md``; so the pages are
   rendered here with the site's own Markdown settings (read from
   ``mkdocs.yml``) and the ids compared.
"""

from __future__ import annotations

import functools
import html
import importlib
import re
import subprocess
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

SCANNED_SUFFIXES = {".py", ".md", ".yml", ".yaml", ".toml", ".sh", ".cfg", ".ini", ".txt"}
SCANNED_NAMES = {"Makefile", "run"}  # run: .ci/run

# Each rule: (what it finds, pattern); these hold whatever the repository contains.
EXTERNAL_REFERENCES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("a numbered section of a document (§N)", re.compile(r"§\s*\d")),
    ("a numbered lesson of a note", re.compile(r"\blessons?\s+\d+\b", re.IGNORECASE)),
    ("an issue of a tracker by number (link the issue instead)",
     re.compile(r"\bissues?\s+#?\d+", re.IGNORECASE)),
    ("an issue as the source of a fact ('the ... issue')",
     re.compile(r"\b(?:the|this|that|our)\s+(?:[\w-]+\s+)?issue(?:'s)?\b(?!\s+trackers?\b)",
                re.IGNORECASE)),
)
# A document cited by name: one named in capitals, the convention of notes and project
# documents (README.md, NOTES.md, SEMINAR-slides.txt; lower-case names such as results.md
# are files a program writes); and a relative path, which must stay inside the repository.
DOCUMENT_NAME = re.compile(r"(?<![\w.-])([A-Z]{3,}[\w-]*\.(?:md|txt|rst))\b")
PLACEHOLDERS = frozenset({"NAME.md", "NAME.json"})  # results/NAME.md: a pattern, not a file
RELATIVE_PATH = re.compile(r"(?<![\w.])((?:\.\./)+[\w.-]+(?:/[\w.-]+)*)")


def external_references(line: str, source: Path | None = None,
                        files: frozenset[str] = frozenset()) -> list[str]:
    """What in ``line`` points outside the repository, by description.

    ``source`` is the file the line is in (relative paths resolve from its folder);
    ``files`` the repository's files, relative to its root, with ``/`` separators.
    """
    found = [what for what, pattern in EXTERNAL_REFERENCES if pattern.search(line)]
    names = {Path(f).name for f in files}
    for match in DOCUMENT_NAME.finditer(line):
        if match.group(1) not in names | PLACEHOLDERS:
            found.append(f"a document that is not in the repository ({match.group(1)})")
    folder = (source or ROOT / "x").parent
    for match in RELATIVE_PATH.finditer(line):
        if not (folder / match.group(1)).resolve().is_relative_to(ROOT):
            found.append(f"a path outside the repository ({match.group(1)})")
    return found


REPO_FILES = frozenset({"README.md", "docs/design.md", "docs/api/core.md"})


@pytest.mark.parametrize(
    "line",
    [
        "see NOTES.md §4",
        "(ROADMAP.md)",
        "the rule of section § 5",
        "(lesson 9)",
        "as in ``SEMINAR-slides.txt``",
        "read ../../outside/notes.md",
        "tracked in issue 12",
        "fixed in Issue #237",
        "A faster fused path (the performance issue) replaces",
        "The issue's targets, each with its measurement",
        "as the issue that asked for these experiments specifies",
    ],
)
def test_the_scan_finds_each_kind_of_outside_reference(line):
    assert external_references(line, ROOT / "docs" / "index.md", REPO_FILES), line


@pytest.mark.parametrize(
    "line",
    [
        "read the released sources and issue trackers of the common implementations",
        "groups the pairs by device and dtype and issues one launch per group",
        "Collectives issued inside a with-block",
        "see docs/design.md, 'Numerical rules'",
        "[core](../api/core.md) and the [README](README.md)",
        "writes results/NAME.md for each experiment, and results.md for the demo",
        "[kozistr/pytorch_optimizer#237](https://github.com/kozistr/pytorch_optimizer/issues/237)",
        "the design of the kernel",
    ],
)
def test_the_scan_leaves_prose_and_links_alone(line):
    assert external_references(line, ROOT / "docs" / "api" / "numpy.md", REPO_FILES) == [], line


def tracked_files() -> list[Path]:
    """The repository's text files that the rules cover: tracked, or new and not ignored."""
    result = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"git ls-files failed in {ROOT} (this test needs a git checkout): "
                    f"{result.stderr.decode(errors='replace').strip()}")
    paths = [ROOT / name for name in result.stdout.decode().split("\0") if name]
    return [p for p in paths
            if p.is_file() and (p.suffix in SCANNED_SUFFIXES or p.name in SCANNED_NAMES)]


def test_no_reference_to_a_document_outside_the_repository():
    this_file = Path(__file__).resolve()  # its examples are outside references on purpose
    paths = tracked_files()
    files = frozenset(p.relative_to(ROOT).as_posix() for p in paths)
    scanned = [p for p in paths if p.resolve() != this_file]
    assert any(p.name == "index.md" for p in scanned), "the scan must cover docs/"
    assert any(p.suffix == ".py" for p in scanned), "the scan must cover the code"
    found = []
    for path in scanned:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            for what in external_references(line, path, files):
                found.append(f"{path.relative_to(ROOT)}:{number}: {what}: {line.strip()}")
    assert not found, (
        "references to documents that are not in the repository (cite a page of "
        "docs/, e.g. docs/design.md, or link a peer's issue in full):\n" + "\n".join(found)
    )


# --- links ------------------------------------------------------------------------------


@functools.cache
def site_markdown_settings() -> tuple[list, dict]:
    """``(extensions, extension_configs)`` exactly as ``mkdocs build`` renders the pages."""
    from mkdocs.config import load_config

    config = load_config(str(ROOT / "mkdocs.yml"))
    return list(config.markdown_extensions), dict(config.mdx_configs)


@functools.cache
def render(path: Path) -> str:
    import markdown

    extensions, configs = site_markdown_settings()
    return markdown.markdown(path.read_text(encoding="utf-8"),
                             extensions=extensions, extension_configs=configs)


@functools.cache
def ids_of(path: Path) -> frozenset[str]:
    return frozenset(html.unescape(i) for i in re.findall(r'\bid="([^"]*)"', render(path)))


def links_of(path: Path) -> list[str]:
    """Every link target of a rendered page (``<a href>``, ``<img src>``), code excluded."""
    return [html.unescape(target) for target in
            re.findall(r'<(?:a\b[^>]*?\bhref|img\b[^>]*?\bsrc)="([^"]*)"', render(path))]


def is_api_anchor(anchor: str) -> bool:
    """Whether ``anchor`` names an importable object, as mkdocstrings' ids on API pages do."""
    module, _, rest = anchor.partition(".")
    try:
        obj = importlib.import_module(module)
    except ImportError:
        return False
    for part in rest.split(".") if rest else []:
        try:
            obj = getattr(obj, part)
        except AttributeError:
            try:
                obj = importlib.import_module(f"{obj.__name__}.{part}")
            except (ImportError, AttributeError):
                return False
    return True


def broken(page: Path, target: str) -> str | None:
    """Why the link ``target`` on ``page`` leads nowhere, or None if it resolves."""
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return None  # another site: not this repository's business
    file = (page.parent / unquote(parts.path)).resolve() if parts.path else page
    if not file.exists():
        return f"no file {file.relative_to(ROOT) if file.is_relative_to(ROOT) else file}"
    if not parts.fragment or file.suffix != ".md":
        return None
    if parts.fragment in ids_of(file):
        return None
    api_page = any(line.startswith(":::") for line in file.read_text(encoding="utf-8").splitlines())
    if api_page and is_api_anchor(parts.fragment):
        return None
    return f"no heading or id #{parts.fragment} in {file.relative_to(ROOT)}"


def markdown_pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def test_the_link_check_finds_a_missing_file_and_a_missing_anchor():
    page = DOCS / "index.md"
    assert broken(page, "algorithm.md") is None
    assert broken(page, "algorithm.md#the-two-sided-lerp") is None
    assert broken(page, "design.md#tolerances") is None
    assert broken(page, "https://example.org/missing") is None
    assert broken(page, "no-such-page.md") is not None
    assert broken(page, "algorithm.md#no-such-heading") is not None
    assert broken(page, "api/core.md#lookahead_core.lookahead") is None
    assert broken(page, "api/core.md#lookahead_core.no_such_function") is not None


def test_every_relative_link_of_the_pages_resolves():
    found = []
    for page in markdown_pages():
        for target in links_of(page):
            why = broken(page, target)
            if why:
                found.append(f"{page.relative_to(ROOT)}: ({target}): {why}")
    assert not found, "links that lead nowhere:\n" + "\n".join(found)


# Code cites a page as docs/<page>.md, optionally with a section: docs/design.md, 'Errors'.
PAGE_CITATION = re.compile(r"\b(docs/[\w/.-]+?\.md)\b(?:,?\s+'([^']+)')?")


def headings_of(path: Path) -> list[str]:
    """The text of every heading of a rendered page, tags and permalink signs removed."""
    texts = re.findall(r"<h[1-6][^>]*>(.*?)</h[1-6]>", render(path), flags=re.DOTALL)
    return [" ".join(html.unescape(re.sub(r"<[^>]+>", "", t)).replace("¶", "").split())
            for t in texts]


def test_every_page_and_section_the_code_cites_exists():
    cited = 0
    found = []
    for path in tracked_files():
        if path.suffix == ".md" and path.is_relative_to(DOCS):
            continue  # pages link each other with Markdown links, checked above
        text = " ".join(path.read_text(encoding="utf-8").split())  # citations may wrap
        for page, section in PAGE_CITATION.findall(text):
            cited += 1
            target = ROOT / page
            where = f"{path.relative_to(ROOT)} cites {page}" + (f", '{section}'" if section else "")
            if not target.is_file():
                found.append(f"{where}: no such page")
            elif section and not any(h.lower().startswith(section.lower())
                                     for h in headings_of(target)):
                found.append(f"{where}: no such heading (headings: {headings_of(target)})")
    assert cited >= 10, f"only {cited} citations found: is the pattern still right?"
    assert not found, "citations of pages or sections that do not exist:\n" + "\n".join(found)


def test_every_page_outside_the_generated_results_is_in_the_site_navigation():
    from mkdocs.config import load_config

    def pages(nav) -> set[str]:
        if isinstance(nav, str):
            return {nav}
        if isinstance(nav, dict):
            return set().union(*(pages(v) for v in nav.values()))
        return set().union(*(pages(item) for item in nav))

    in_nav = pages(load_config(str(ROOT / "mkdocs.yml")).nav)
    on_disk = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    missing = sorted(p for p in on_disk - in_nav if not p.startswith("results/"))
    assert {"design.md", "peers.md"} <= in_nav
    assert not missing, f"pages not reachable from the site's navigation: {missing}"
