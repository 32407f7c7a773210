"""MkDocs hook: typeset the site's math as MathML at build time.

`pymdownx.arithmatex` (generic mode) wraps every formula of the Markdown pages and of the
docstrings that mkdocstrings renders in ``<span class="arithmatex">\\(...\\)</span>`` or
``<div class="arithmatex">\\[...\\]</div>``. A browser script (MathJax from a CDN) used to
typeset those spans, so a reader without network saw raw TeX. Here `latex2mathml` turns
each one into MathML Core, which Chromium (>= 109), Firefox and Safari render natively:
the built site needs no script and no network to show its formulas.

A formula the converter cannot render faithfully fails the build (`PluginError`, naming
the page and the TeX) instead of silently staying raw or losing symbols.
"""

from __future__ import annotations

import html
import re
import unicodedata
import xml.etree.ElementTree as ET

from latex2mathml.converter import convert
from mkdocs.exceptions import PluginError

MATHML_NS = "http://www.w3.org/1998/Math/MathML"
ET.register_namespace("", MATHML_NS)  # serialise <math xmlns=...>, not <ns0:math>

# Arithmatex's generic output, with the TeX HTML-escaped inside.
_ARITHMATEX = re.compile(
    r'<(?P<tag>span|div) class="arithmatex">(?P<body>.*?)</(?P=tag)>', re.DOTALL
)
_INLINE = re.compile(r"\\\((?P<tex>.*?)\\\)", re.DOTALL)
_DISPLAY = re.compile(r"\A\s*\\\[(?P<tex>.*)\\\]\s*\Z", re.DOTALL)
_TAG = re.compile(r"\\tag(?P<star>\*?)\s*\{(?P<label>[^{}]*)\}")
# latex2mathml reads \operatorname{...} only with letters inside; with anything else
# (`arg\,min`) it silently drops the name. Catch that before converting.
_BAD_OPERATORNAME = re.compile(r"\\operatorname\*?\s*\{[^{}]*[^a-zA-Z\s*{}][^{}]*\}")
# `aligned` (amsmath, inside display math) is what `align*` is as a whole environment;
# latex2mathml knows only the latter, with the same & / \\ semantics.
_ALIASES = ((r"\begin{aligned}", r"\begin{align*}"), (r"\end{aligned}", r"\end{align*}"))
# MathML Core honours mathvariant only as "normal" on <mi>; for text, CSS does the job.
_TEXT_STYLES = {
    "bold": "font-weight: bold",
    "italic": "font-style: italic",
    "bold-italic": "font-weight: bold; font-style: italic",
    "monospace": "font-family: var(--md-code-font-family, monospace)",
    "normal": "",
}


class UnsupportedTeX(ValueError):
    """A formula that latex2mathml cannot turn into faithful MathML Core."""


def split_tag(tex: str) -> tuple[str, str | None]:
    """Remove a display formula's ``\\tag{label}``; return the TeX and the shown label.

    The label is rendered beside the formula (as MathJax did, eq. numbers like (0.2)),
    not inline in it. More than one tag is an error, as in amsmath.
    """
    tags = list(_TAG.finditer(tex))
    if not tags:
        return tex, None
    if len(tags) > 1:
        raise UnsupportedTeX(f"tex: one \\tag per formula expected, got {len(tags)}")
    tag = tags[0]
    label = tag["label"].strip() if tag["star"] else f"({tag['label'].strip()})"
    return tex[: tag.start()] + tex[tag.end() :], label


def _apply_text_styles(root: ET.Element) -> None:
    """Move mathvariant to CSS where MathML Core ignores it; reject what CSS cannot do."""
    for element in root.iter():
        variant = element.attrib.get("mathvariant")
        if variant is None:
            continue
        local_name = element.tag.rpartition("}")[2]
        if local_name == "mi" and variant == "normal":
            continue
        if local_name != "mtext" or variant not in _TEXT_STYLES:
            # e.g. `\mathcal N` without braces gives <mi mathvariant="script">, which
            # browsers draw as a plain N; the braced form gives the Unicode letter.
            raise UnsupportedTeX(
                f"tex: mathvariant={variant!r} on <{local_name}> is not rendered by "
                "MathML Core browsers (the braced \\mathcal{N}, \\mathbf{x} give Unicode letters)"
            )
        del element.attrib["mathvariant"]
        if _TEXT_STYLES[variant]:
            element.set("style", _TEXT_STYLES[variant])


def _fix_operator_identifiers(root: ET.Element) -> None:
    """Make relation and operator symbols that latex2mathml emits as <mi> into <mo>.

    It writes \\sim as <mi>~</mi>, \\pm and \\Longrightarrow as <mi> too, which the
    browser sets as identifiers, without operator spacing. Geometric shapes
    (\\square as end of proof) stay identifiers.
    """
    for element in root.iter(f"{{{MATHML_NS}}}mi"):
        text = element.text or ""
        if len(text) != 1 or unicodedata.category(text) != "Sm" or 0x25A0 <= ord(text) <= 0x25FF:
            continue
        element.tag = f"{{{MATHML_NS}}}mo"
        element.text = "\u223c" if text == "~" else text  # TILDE OPERATOR, as TeX's \\sim


def _list_entry(values: str | None, index: int, default: str) -> str:
    """The index-th entry of a MathML attribute list (spacings, alignments); the last repeats."""
    if not values:
        return default
    entries = values.split()
    return entries[min(index, len(entries) - 1)]


def _half(length: str) -> str:
    return f"calc({length} / 2)"


def _polyfill_tables(root: ET.Element) -> None:
    """Repeat the table attributes MathML Core dropped as CSS on the cells.

    Chromium ignores columnalign/columnspacing/rowspacing (Firefox and Safari honour
    them, so they stay), and aligns a cell's content only by the -webkit- values of
    text-align: without this, `align*` rows would gap at the = sign and Algorithm 1's
    `array{l}` would lose its indentation. Defaults are MathML 3's (0.8em, 1ex).
    """
    for table in root.iter(f"{{{MATHML_NS}}}mtable"):
        column_spacing = table.get("columnspacing")
        row_spacing = table.get("rowspacing")
        rows = [row for row in table if row.tag == f"{{{MATHML_NS}}}mtr"]
        for r, row in enumerate(rows):
            cells = [cell for cell in row if cell.tag == f"{{{MATHML_NS}}}mtd"]
            last_row = r == len(rows) - 1
            for c, cell in enumerate(cells):
                last_column = c == len(cells) - 1
                table_align = _list_entry(table.get("columnalign"), c, "center")
                align = cell.get("columnalign") or table_align
                left = "0" if c == 0 else _half(_list_entry(column_spacing, c - 1, "0.8em"))
                right = "0" if last_column else _half(_list_entry(column_spacing, c, "0.8em"))
                top = "0" if r == 0 else _half(_list_entry(row_spacing, r - 1, "1ex"))
                bottom = "0" if last_row else _half(_list_entry(row_spacing, r, "1ex"))
                cell.set(
                    "style",
                    f"text-align: {align}; text-align: -webkit-{align}; "
                    f"padding: {top} {right} {bottom} {left}",
                )


def tex_to_mathml(tex: str, display: bool) -> str:
    """Convert one formula's TeX (no delimiters) to a ``<math>`` element string.

    Raises UnsupportedTeX when the converter fails, emits malformed MathML, or leaves
    an unknown command (``\\foo``) in the output as text.
    """
    if not isinstance(tex, str):
        raise TypeError(f"tex: expected str, got {type(tex).__name__}")
    bad_operator = _BAD_OPERATORNAME.search(tex)
    if bad_operator:
        raise UnsupportedTeX(
            f"tex: {bad_operator.group()} must hold letters only (write e.g. "
            "\\operatorname*{argmin})"
        )
    for latex_name, converter_name in _ALIASES:
        tex = tex.replace(latex_name, converter_name)
    try:
        mathml = convert(tex, display="block" if display else "inline")
    except Exception as error:  # latex2mathml raises its own exception family
        failure = f"{type(error).__name__} {error}".strip()
        raise UnsupportedTeX(f"tex: latex2mathml failed: {failure}") from error
    try:
        root = ET.fromstring(mathml)
    except ET.ParseError as error:  # e.g. a bare & from an environment it does not know
        raise UnsupportedTeX(f"tex: latex2mathml produced malformed MathML ({error})") from error
    unknown = sorted({e.text for e in root.iter() if e.text and "\\" in e.text})
    if unknown:
        raise UnsupportedTeX(f"tex: commands unknown to latex2mathml: {', '.join(unknown)}")
    _apply_text_styles(root)
    _fix_operator_identifiers(root)
    _polyfill_tables(root)
    return ET.tostring(root, encoding="unicode")


def _render_element(tag: str, body: str) -> str:
    """Arithmatex element (tag, escaped body) -> the same element holding MathML."""
    source = html.unescape(body)
    if tag == "div":
        match = _DISPLAY.match(source)
        if match is None:
            raise UnsupportedTeX(f"tex: expected \\[...\\] in a display block, got {source!r}")
        tex, label = split_tag(match["tex"])
        mathml = tex_to_mathml(tex, display=True)
        if label is None:
            return f'<div class="arithmatex">{mathml}</div>'
        return (
            f'<div class="arithmatex arithmatex-tagged">{mathml}'
            f'<span class="arithmatex-tag">{html.escape(label)}</span></div>'
        )
    match = _INLINE.fullmatch(source.strip())
    if match is None:
        raise UnsupportedTeX(f"tex: expected \\(...\\) in an inline span, got {source!r}")
    if _TAG.search(match["tex"]):
        raise UnsupportedTeX("tex: \\tag is only allowed in display math")
    return f'<span class="arithmatex">{tex_to_mathml(match["tex"], display=False)}</span>'


def render_math(page_html: str, where: str) -> str:
    """Replace every arithmatex element of `page_html` by MathML.

    Collects all failures of the page and raises one PluginError listing them, so a
    strict build stops with every bad formula named (page `where` and its TeX).
    """
    failures: list[str] = []

    def replace(match: re.Match[str]) -> str:
        try:
            return _render_element(match["tag"], match["body"])
        except UnsupportedTeX as error:
            failures.append(f"  {html.unescape(match['body']).strip()!r}: {error}")
            return match.group()

    rendered = _ARITHMATEX.sub(replace, page_html)
    if failures:
        raise PluginError(f"math in {where} cannot become MathML:\n" + "\n".join(failures))
    return rendered


def tex_to_plain_text(title: str) -> str:
    """Inline math in a heading's TOC title (``Adaptive \\(\\alpha\\)``) -> ``Adaptive α``.

    The table of contents shows headings as escaped text, where markup cannot go.
    """

    def plain(match: re.Match[str]) -> str:
        mathml = tex_to_mathml(html.unescape(match["tex"]), display=False)
        return html.escape("".join(ET.fromstring(mathml).itertext()), quote=False)

    return _INLINE.sub(plain, title)


def _plain_toc_titles(items) -> None:
    for item in items:
        item.title = tex_to_plain_text(item.title)
        _plain_toc_titles(item.children)


def on_page_content(page_html: str, page, config, files) -> str:
    """MkDocs event: the page body (Markdown and mkdocstrings output) as HTML."""
    rendered = render_math(page_html, where=page.file.src_uri)
    try:
        _plain_toc_titles(page.toc)
    except UnsupportedTeX as error:
        raise PluginError(f"math in a heading of {page.file.src_uri}: {error}") from error
    return rendered
