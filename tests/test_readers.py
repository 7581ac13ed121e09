"""HTML, EPUB and Word documents, each made here as its kind is made in the wild, read as text;
damaged, empty and wrong-kind ones refused in one line with exit 3, as PDFs are."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from freqkv_cli.documents import open_document
from freqkv_cli.errors import EXIT_INPUT, EXIT_USAGE, InputError, UsageError

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>The Lindenfeld treaty</title>
  <style>p { color: red; }</style>
  <script>var hidden = "not text for a reader";</script>
</head>
<body>
  <nav><a href="/">Home</a></nav>
  <h1>The Lindenfeld treaty</h1>
  <p>It was signed on 14&nbsp;March 1847 by Count Aurel Vasko &amp; the merchant
     Ilse Brandt.</p>
  <ul><li>The toll was nine silver pieces</li><li>then four</li></ul>
  <table><tr><th>town</th><th>toll</th></tr><tr><td>Oberhaven</td><td>4</td></tr></table>
  <p>A feast followed<br>in the town hall.</p>
</body>
</html>
"""

CONTAINER = """<?xml version="1.0" encoding="UTF-8"?>
<container version="1.0" xmlns="urn:oasis:names:tc:opendocument:xmlns:container">
  <rootfiles>
    <rootfile full-path="OEBPS/content.opf" media-type="application/oebps-package+xml"/>
  </rootfiles>
</container>
"""
# The manifest lists the chapters out of order, the spine in reading order; a stylesheet and a
# navigation document are not read.
PACKAGE = """<?xml version="1.0" encoding="UTF-8"?>
<package xmlns="http://www.idpf.org/2007/opf" version="3.0" unique-identifier="id">
  <metadata xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:title>Two chapters</dc:title></metadata>
  <manifest>
    <item id="css" href="style.css" media-type="text/css"/>
    <item id="two" href="text/chapter%202.xhtml" media-type="application/xhtml+xml"/>
    <item id="one" href="text/chapter1.xhtml" media-type="application/xhtml+xml"/>
  </manifest>
  <spine><itemref idref="one"/><itemref idref="two"/></spine>
</package>
"""
CHAPTER = """<?xml version="1.0" encoding="UTF-8"?>
<html xmlns="http://www.w3.org/1999/xhtml"><head><title>Two chapters</title>
<link rel="stylesheet" href="../style.css"/></head>
<body><h2>{heading}</h2><p>{body}</p></body></html>
"""

WORD = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
CONTENT_TYPES = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
    '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
    '<Default Extension="xml" ContentType="application/xml"/>'
    '<Override PartName="/word/document.xml" '
    'ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/>'
    "</Types>"
)
RELATIONSHIPS = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
    '<Relationship Id="rId1" Target="word/document.xml" '
    'Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument"/>'
    "</Relationships>"
)


def write_epub(path: Path, chapters: list[tuple[str, str]] | None = None) -> Path:
    """An EPUB 3 as the format asks: an uncompressed ``mimetype`` entry first, then the rest."""
    chapters = chapters or [("Chapter 1", "The ferry left at dawn."), ("Chapter 2", "It came back at dusk.")]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as book:
        book.writestr(zipfile.ZipInfo("mimetype"), "application/epub+zip", compress_type=zipfile.ZIP_STORED)
        book.writestr("META-INF/container.xml", CONTAINER)
        book.writestr("OEBPS/content.opf", PACKAGE)
        book.writestr("OEBPS/style.css", "h2 { font-weight: bold; }")
        names = ["OEBPS/text/chapter1.xhtml", "OEBPS/text/chapter 2.xhtml"]
        for name, (heading, body) in zip(names, chapters, strict=True):
            book.writestr(name, CHAPTER.format(heading=heading, body=body))
    return path


def write_docx(path: Path, paragraphs: list[str], table: list[list[str]] | None = None) -> Path:
    """A Word document with the parts Word itself writes for text: content types, the package
    relationships and the main document (paragraphs of runs, a table)."""

    def paragraph(text: str) -> str:
        return f'<w:p><w:r><w:t xml:space="preserve">{text}</w:t></w:r></w:p>'

    body = "".join(paragraph(text) for text in paragraphs)
    if table:
        rows = "".join(
            "<w:tr>" + "".join(f"<w:tc>{paragraph(cell)}</w:tc>" for cell in row) + "</w:tr>" for row in table
        )
        body += f"<w:tbl>{rows}</w:tbl>"
    document = (
        f'<?xml version="1.0" encoding="UTF-8"?><w:document xmlns:w="{WORD}">'
        f"<w:body>{body}</w:body></w:document>"
    )
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as package:
        package.writestr("[Content_Types].xml", CONTENT_TYPES)
        package.writestr("_rels/.rels", RELATIONSHIPS)
        package.writestr("word/document.xml", document)
    return path


def cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "freqkv_cli", *args],
        input=stdin,
        capture_output=True,
        timeout=180,
        env={**os.environ, "NO_COLOR": "1"},
    )


def one_error_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("freqkv: error: "), lines
    return lines[0]


# -- HTML --------------------------------------------------------------------------------------
def test_an_html_page_is_read_as_its_text(tmp_path: Path) -> None:
    path = tmp_path / "treaty.html"
    path.write_text(PAGE)
    document = open_document(path)
    text = document.text()
    assert document.kind == "html" and document.page_count is None
    assert "<" not in text and "color" not in text and "not text for a reader" not in text
    assert "14\xa0March 1847 by Count Aurel Vasko & the merchant Ilse Brandt." in text  # one line
    assert text.startswith("The Lindenfeld treaty") and text.count("The Lindenfeld treaty") == 1
    assert "- The toll was nine silver pieces\n- then four" in text
    assert "town\ttoll\nOberhaven\t4" in text
    assert "A feast followed\nin the town hall." in text


def test_html_is_known_by_its_content_whatever_its_name(tmp_path: Path) -> None:
    saved = tmp_path / "download"  # no extension, as `curl -o` leaves it
    saved.write_text(PAGE)
    assert open_document(saved).kind == "html"
    fragment = tmp_path / "part.htm"  # a fragment: no <html>, but named as a page
    fragment.write_text("<div><p>Only <b>this</b> line.</p></div>")
    assert open_document(fragment).text() == "Only this line."
    markdown = tmp_path / "notes.md"  # Markdown with an inline tag stays as written
    markdown.write_text("# Notes\n\nPress <kbd>Ctrl</kbd> to go on.\n")
    document = open_document(markdown)
    assert document.kind == "text" and "<kbd>" in document.text()


def test_an_html_page_without_text_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "app.html"
    path.write_text("<!doctype html><html><head><script>render()</script></head><body> </body></html>")
    with pytest.raises(InputError, match=re.escape("app.html: an HTML page with no text in it")):
        open_document(path)


def test_pages_are_refused_for_html(tmp_path: Path) -> None:
    path = tmp_path / "page.html"
    path.write_text(PAGE)
    with pytest.raises(UsageError, match="applies only to PDFs, and this is an HTML page"):
        open_document(path, pages="1")


# -- EPUB --------------------------------------------------------------------------------------
def test_an_epub_is_read_chapter_by_chapter_in_spine_order(tmp_path: Path) -> None:
    document = open_document(write_epub(tmp_path / "ferry.epub"))
    assert document.kind == "epub"
    assert document.text() == "Chapter 1\n\nThe ferry left at dawn.\n\nChapter 2\n\nIt came back at dusk."


def test_a_damaged_epub_is_refused_in_one_line(tmp_path: Path) -> None:
    book = write_epub(tmp_path / "ferry.epub").read_bytes()
    cut = tmp_path / "cut.epub"
    cut.write_bytes(book[: len(book) // 2])  # a download cut short: the zip's directory is gone
    with pytest.raises(InputError, match=re.escape("cut.epub: the file is damaged")):
        open_document(cut)
    no_package = tmp_path / "no-package.epub"
    with zipfile.ZipFile(no_package, "w") as zipped:
        zipped.writestr("mimetype", "application/epub+zip")
    with pytest.raises(InputError, match=re.escape("no-package.epub: a damaged EPUB")):
        open_document(no_package)


def test_an_epub_of_images_only_has_no_text(tmp_path: Path) -> None:
    path = write_epub(tmp_path / "comic.epub", [("", '<img src="p1.png"/>'), ("", "")])
    with pytest.raises(InputError, match=re.escape("comic.epub: an EPUB book with no text in it")):
        open_document(path)


# -- DOCX --------------------------------------------------------------------------------------
def test_a_word_document_is_read_with_its_tables(tmp_path: Path) -> None:
    path = write_docx(
        tmp_path / "minutes.docx",
        ["Minutes of the harbour board", "The budget for the new pier was approved."],
        table=[["item", "cost"], ["pier", "4,000"]],
    )
    document = open_document(path)
    assert document.kind == "docx" and document.page_count is None
    text = document.text()
    assert text.startswith("Minutes of the harbour board\n\nThe budget for the new pier was approved.")
    assert all(cell in text for cell in ("item", "cost", "pier", "4,000"))


def test_a_damaged_or_empty_word_document_is_refused(tmp_path: Path) -> None:
    whole = write_docx(tmp_path / "minutes.docx", ["Some text."]).read_bytes()
    cut = tmp_path / "cut.docx"
    cut.write_bytes(whole[:300])
    with pytest.raises(InputError, match=re.escape("cut.docx: the file is damaged")):
        open_document(cut)
    empty = write_docx(tmp_path / "empty.docx", [])
    with pytest.raises(InputError, match=re.escape("empty.docx: a Word document with no text in it")):
        open_document(empty)


def test_another_zip_is_refused_as_not_a_document(tmp_path: Path) -> None:
    path = tmp_path / "photos.zip"
    with zipfile.ZipFile(path, "w") as zipped:
        zipped.writestr("readme.txt", "holiday")
    with pytest.raises(InputError, match="neither an EPUB nor a Word document, not a document freqkv reads"):
        open_document(path)


# -- the command line: the same readers, the documented exit codes ------------------------------
def test_count_reads_each_kind_and_refuses_bad_ones_with_exit_3(tiny: str, tmp_path: Path) -> None:
    page = tmp_path / "treaty.html"
    page.write_text(PAGE)
    book = write_epub(tmp_path / "ferry.epub")
    minutes = write_docx(tmp_path / "minutes.docx", ["The pier was approved."])
    for path, kind in ((page, "html"), (book, "epub"), (minutes, "docx")):
        result = cli("count", str(path), "-m", tiny, "--json")
        assert result.returncode == 0 and result.stderr == b"", result.stderr
        data = json.loads(result.stdout)
        assert data["kind"] == kind and data["characters"] == len(open_document(path).text())
    cut = tmp_path / "cut.docx"
    cut.write_bytes(minutes.read_bytes()[:200])
    result = cli("count", str(cut), "-m", tiny)
    assert result.returncode == EXIT_INPUT and "cut.docx: the file is damaged" in one_error_line(result)
    result = cli("count", str(page), "-m", tiny, "--pages", "2")
    assert result.returncode == EXIT_USAGE and "an HTML page; drop --pages" in one_error_line(result)
    result = cli("count", "-", "-m", tiny, "--json", stdin=book.read_bytes())  # an EPUB piped in
    assert result.returncode == 0 and json.loads(result.stdout)["kind"] == "epub"


def test_damaged_packages_only_ever_raise_input_errors(tmp_path: Path) -> None:
    """Bytes flipped all over a real EPUB and a real Word file (headers, deflate streams, the
    directory): each read either succeeds or is refused in our words, never a raw exception."""
    import random

    generator = random.Random(18)
    packages = [
        write_epub(tmp_path / "ferry.epub").read_bytes(),
        write_docx(tmp_path / "minutes.docx", ["The pier was approved."], [["a", "b"]]).read_bytes(),
    ]
    refused = 0
    for trial in range(300):
        data = bytearray(packages[trial % 2])
        for _ in range(generator.randint(1, 8)):
            data[generator.randrange(len(data))] = generator.randrange(256)
        path = tmp_path / f"mutated-{trial}"
        path.write_bytes(bytes(data))
        try:
            document = open_document(path)
            document.text()
        except InputError as exc:
            assert "\n" not in str(exc) and str(exc).startswith(str(path))
            refused += 1
    assert refused > 30  # most flips land in compressed data or the directory
