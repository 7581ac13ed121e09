"""The text of an HTML (or XHTML) page, as a reader sees it: no tags, scripts or styles;
block elements on lines of their own, paragraphs apart; entities decoded.

The standard library's ``html.parser`` is enough for that (BeautifulSoup, with no faster
parser installed, drives this same parser; see docs/DESIGN.md on dependencies). It never fails on
bad markup: whatever it cannot parse stays text.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

# Their content is not text for a reader (a site's menus included, as browsers' reader views do).
_HIDDEN = frozenset(
    {"script", "style", "template", "noscript", "svg", "math", "head", "iframe", "object", "nav"}
)
# Each starts a new paragraph.
_PARAGRAPHS = frozenset(
    {
        "p", "div", "section", "article", "aside", "header", "footer", "main", "nav", "blockquote",
        "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "dl", "table", "figure", "figcaption",
        "pre", "hr", "address", "details", "summary", "form", "fieldset", "body",
    }
)  # fmt: skip
# Each starts a new line.
_LINES = frozenset({"br", "li", "dt", "dd", "tr", "caption", "option", "legend"})
_CELLS = frozenset({"td", "th"})
_SPACES = re.compile(r"[ \t\r\n\f\v]+")


class _TextCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title: list[str] = []
        self.hidden = 0  # depth inside elements whose content is not shown
        self.pre = 0
        self.in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self.in_title = True
        if tag in _HIDDEN:
            self.hidden += 1
        elif tag in _PARAGRAPHS:
            self.parts.append("\n\n")
        elif tag in _LINES:
            self.parts.append("\n- " if tag == "li" else "\n")
        elif tag in _CELLS:
            self.parts.append("\t")
        if tag == "pre":
            self.pre += 1
        if tag == "img":  # an image's words, when it has any
            alt = dict(attrs).get("alt")
            if alt and not self.hidden:
                self.parts.append(f" {alt} ")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _HIDDEN:  # <br/>, <hr/>, <img/>: no content to hide
            self.handle_starttag(tag, attrs)
            if tag == "pre":
                self.pre -= 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self.in_title = False
        if tag in _HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        elif tag in _PARAGRAPHS:
            self.parts.append("\n\n")
        if tag == "pre":
            self.pre = max(0, self.pre - 1)

    def handle_data(self, data: str) -> None:
        if self.in_title:
            self.title.append(data)
        if self.hidden:
            return
        self.parts.append(data if self.pre else _SPACES.sub(" ", data))


def html_to_text(markup: str, *, title: bool = True) -> str:
    """The readable text of ``markup``; with ``title``, its <title> first when the body does not
    start with it (an EPUB's chapters have titles that only repeat the book's or the heading)."""
    collector = _TextCollector()
    collector.feed(markup)
    collector.close()
    text = _tidy("".join(collector.parts))
    heading = " ".join("".join(collector.title).split()) if title else ""
    if heading and not text.startswith(heading):
        text = f"{heading}\n\n{text}" if text else heading
    return text


def _tidy(text: str) -> str:
    """Spaces at line ends and runs of blank lines out: paragraphs one blank line apart."""
    lines = [line.strip(" \t") for line in text.split("\n")]
    out: list[str] = []
    for line in lines:
        if line.strip() or (out and out[-1]):
            out.append(line if line.strip() else "")
    return "\n".join(out).strip()
