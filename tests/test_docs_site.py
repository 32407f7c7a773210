"""The built documentation site works offline: no asset from another host, and every
formula typeset as MathML at build time (docs_hooks/mathml.py) instead of by a CDN script.

One strict build of the real site (a few seconds) serves all checks on it.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest

pytest.importorskip("mkdocs", reason="docs extra not installed")
pytest.importorskip("latex2mathml", reason="docs extra not installed")

ROOT = Path(__file__).resolve().parents[1]
HOOK = ROOT / "docs_hooks" / "mathml.py"
MATHML = "{http://www.w3.org/1998/Math/MathML}"
EXTERNAL = re.compile(r"^\s*(https?:)?//", re.IGNORECASE)
# What MathJax would have typeset: arithmatex's delimiters, and $ right before a command.
RAW_TEX = re.compile(r"\\\(|\\\)|\\\[|\\\]|\$\$|\$\\[A-Za-z]")


def build_site(config: Path, site_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config),
         "--site-dir", str(site_dir)],
        cwd=config.parent, capture_output=True, text=True, timeout=300,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    site_dir = tmp_path_factory.mktemp("site")
    result = build_site(ROOT / "mkdocs.yml", site_dir)
    assert result.returncode == 0, result.stderr[-4000:]
    return site_dir


@pytest.fixture(scope="module")
def pages(site) -> dict[str, str]:
    found = {str(p.relative_to(site)): p.read_text(encoding="utf-8") for p in site.rglob("*.html")}
    assert "algorithm/index.html" in found and "theory/index.html" in found
    return found


@pytest.fixture(scope="module")
def hook():
    spec = importlib.util.spec_from_file_location("docs_hooks_mathml", HOOK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class PageScan(HTMLParser):
    """Collects what a browser would fetch, the visible text, and what each arithmatex
    element holds first."""

    SKIP_TEXT = {"code", "pre", "script", "style", "math"}
    FETCHED = {"script": "src", "img": "src", "iframe": "src", "source": "src",
               "audio": "src", "video": "src", "embed": "src", "object": "data"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.fetched: list[str] = []
        self.text: list[str] = []
        self.arithmatex_first_child: list[str | None] = []
        self._skip_depth = 0
        self._awaiting_child = False

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if self._awaiting_child:
            self.arithmatex_first_child[-1] = tag
            self._awaiting_child = False
        if tag in self.FETCHED and attributes.get(self.FETCHED[tag]):
            self.fetched.append(attributes[self.FETCHED[tag]])
        # Any <link> that loads (stylesheet, icon, preload) or opens a connection
        # (preconnect, dns-prefetch) reaches the network; `canonical` would be a plain link.
        if tag == "link" and attributes.get("rel") != "canonical" and attributes.get("href"):
            self.fetched.append(attributes["href"])
        for label in ("aria-label", "title", "alt"):
            if attributes.get(label):
                self.text.append(attributes[label])
        if "arithmatex" in (attributes.get("class") or "").split():
            self.arithmatex_first_child.append(None)
            self._awaiting_child = True
        if tag in self.SKIP_TEXT:
            self._skip_depth += 1

    def handle_endtag(self, tag):
        if self._awaiting_child:  # the element closed with no child element
            self._awaiting_child = False
        if tag in self.SKIP_TEXT and self._skip_depth:
            self._skip_depth -= 1

    def handle_data(self, data):
        if self._awaiting_child and data.strip():
            self.arithmatex_first_child[-1] = "#text"
            self._awaiting_child = False
        if not self._skip_depth:
            self.text.append(data)


@pytest.fixture(scope="module")
def scans(pages) -> dict[str, PageScan]:
    result = {}
    for name, text in pages.items():
        scan = PageScan()
        scan.feed(text)
        result[name] = scan
    return result


def display_formulas_in(markdown: str) -> int:
    """Count $$ ... $$ blocks of a Markdown page, outside fenced code."""
    count, in_fence = 0, False
    for line in markdown.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            in_fence = not in_fence
        elif not in_fence and line.strip() == "$$":
            count += 1
    assert count % 2 == 0, "unbalanced $$"
    return count // 2


# --- the real site ---------------------------------------------------------------------


def test_no_page_loads_anything_from_another_host(scans):
    external = {name: [url for url in scan.fetched if EXTERNAL.match(url)]
                for name, scan in scans.items()}
    assert {name: urls for name, urls in external.items() if urls} == {}
    # the stylesheets the pages do load are local: it is these the check above looked at
    assert any(url.endswith("assets/mathml.css") for url in scans["index.html"].fetched)


def test_no_stylesheet_imports_anything_from_another_host(site):
    remote = re.compile(r"""(@import\s+|url\(\s*)["']?(https?:)?//""", re.IGNORECASE)
    offenders = [str(p.relative_to(site)) for p in site.rglob("*.css")
                 if remote.search(p.read_text(encoding="utf-8", errors="replace"))]
    assert offenders == []


def test_no_raw_tex_left_in_any_page(scans):
    leftovers = {}
    for name, scan in scans.items():
        hits = sorted({m.group() for m in RAW_TEX.finditer("".join(scan.text))})
        if hits:
            leftovers[name] = hits
    assert leftovers == {}


def test_every_arithmatex_element_holds_mathml(scans):
    first_children = {name: scan.arithmatex_first_child for name, scan in scans.items()}
    not_math = {name: kids for name, kids in first_children.items()
                if any(kid != "math" for kid in kids)}
    assert not_math == {}
    # the math is really there: the pages with most of it, and a docstring's
    assert len(first_children["theory/index.html"]) > 100
    assert len(first_children["algorithm/index.html"]) > 50
    assert len(first_children["api/core/index.html"]) >= 1


@pytest.mark.parametrize("page", ["algorithm", "theory", "performance", "numpy"])
def test_each_display_formula_of_the_source_is_a_block_math(pages, page):
    expected = display_formulas_in((ROOT / "docs" / f"{page}.md").read_text(encoding="utf-8"))
    built = pages[f"{page}/index.html"]
    blocks = re.findall(r'<div class="arithmatex[^"]*">\s*<math\b[^>]*display="block"', built)
    assert expected > 0 and len(blocks) == expected


def test_proposition_1_fraction_has_the_expected_structure(pages):
    """Eq. (0.3) of docs/algorithm.md, read off its TeX by hand:

    \\frac{(\\theta_{t,0} - \\theta^*)^\\top A\\, (\\theta_{t,0} - \\theta_{t,k})}
          {(\\theta_{t,0} - \\theta_{t,k})^\\top A\\, (\\theta_{t,0} - \\theta_{t,k})}
    """
    match = re.search(
        r'<div class="arithmatex arithmatex-tagged">(<math\b(?:(?!</math>).)*</math>)'
        r'<span class="arithmatex-tag">\(0\.3\)</span></div>',
        pages["algorithm/index.html"], re.DOTALL,
    )
    assert match, "eq. (0.3) with its tag beside it"
    root = ET.fromstring(match.group(1))
    assert root.get("display") == "block"
    fractions = [f for f in root.iter(f"{MATHML}mfrac") if len(f) == 2]
    assert len(fractions) == 1
    numerator, denominator = fractions[0]

    def flat(element) -> str:
        return "".join("".join(element.itertext()).split())

    assert flat(numerator) == "(θt,0−θ*)⊤A(θt,0−θt,k)"
    assert flat(denominator) == "(θt,0−θt,k)⊤A(θt,0−θt,k)"
    first_subscript = next(numerator.iter(f"{MATHML}msub"))
    base, index = first_subscript
    assert (base.tag, base.text) == (f"{MATHML}mi", "θ")
    assert flat(index) == "t,0"
    # the transpose is a superscript of the parenthesised difference, not a stray symbol
    superscripts = [flat(sup[1]) for sup in numerator.iter(f"{MATHML}msup")]
    assert "⊤" in superscripts
    # argmin is one operator, not the letters a, r, g, ...
    operators = [o.text for o in root.iter(f"{MATHML}mo")]
    assert "argmin" in operators


def test_heading_math_reads_as_text_in_the_table_of_contents(pages):
    theory = pages["theory/index.html"]
    assert 'aria-label="Adaptive α"' in theory
    assert "Adaptive \\(" not in theory


# --- the hook on its own ---------------------------------------------------------------


@pytest.mark.parametrize(
    "tex, reason",
    [
        (r"\foo x", r"\foo"),                              # a command latex2mathml lacks
        (r"\alpha^{", "latex2mathml failed"),              # unbalanced
        (r"\operatorname*{arg\,min}_x f", "letters only"),  # would silently lose the name
        (r"\mathcal N", "mathvariant"),                    # browsers would draw a plain N
    ],
)
def test_hook_rejects_what_it_cannot_render(hook, tex, reason):
    with pytest.raises(hook.UnsupportedTeX, match=re.escape(reason)):
        hook.tex_to_mathml(tex, display=False)


def test_hook_rejects_non_string_tex(hook):
    with pytest.raises(TypeError, match="tex"):
        hook.tex_to_mathml(3, display=False)


def test_hook_sets_aligned_rows_as_a_table_aligned_at_the_relation(hook):
    mathml = hook.tex_to_mathml(r"\begin{aligned} a &= b \\ cc &= d \end{aligned}", display=True)
    root = ET.fromstring(mathml)
    rows = list(root.iter(f"{MATHML}mtr"))
    assert len(rows) == 2
    left_cells = [row[0] for row in rows]
    # right-aligned left-hand sides, in the attribute (Firefox) and in CSS (Chromium)
    assert [c.get("columnalign") for c in left_cells] == ["right", "right"]
    assert all("-webkit-right" in c.get("style") for c in left_cells)
    assert ["".join(c.itertext()) for c in left_cells] == ["a", "cc"]


def test_hook_places_the_equation_tag_beside_the_formula(hook):
    page = '<div class="arithmatex">\\[\nx = 1 \\tag{4.2}\n\\]</div>'
    rendered = hook.render_math(page, where="page.md")
    assert rendered.endswith('<span class="arithmatex-tag">(4.2)</span></div>')
    math = ET.fromstring(re.search(r"<math.*</math>", rendered).group())
    assert "".join(math.itertext()) == "x=1"  # the label is not typeset inside


def test_hook_names_every_bad_formula_of_a_page(hook):
    from mkdocs.exceptions import PluginError

    page = ('<p><span class="arithmatex">\\(\\foo\\)</span> and '
            '<span class="arithmatex">\\(\\bar{x}\\)</span> and '
            '<span class="arithmatex">\\(\\baz\\)</span></p>')
    with pytest.raises(PluginError) as caught:
        hook.render_math(page, where="guide.md")
    message = str(caught.value)
    assert "guide.md" in message and r"\foo" in message and r"\baz" in message
    assert r"\bar" not in message


def test_strict_build_fails_on_a_formula_the_converter_cannot_handle(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text("Fine $\\alpha$, broken $\\notacommand{x}$.\n")
    (tmp_path / "mkdocs.yml").write_text(textwrap.dedent(f"""\
        site_name: t
        markdown_extensions:
          - pymdownx.arithmatex:
              generic: true
        hooks:
          - {HOOK.as_posix()}
        """))
    result = build_site(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0
    assert "notacommand" in result.stderr and "index.md" in result.stderr
