"""Zip-packaged documents: EPUB books and Word (.docx) files, read as text.

EPUB: the zip's ``META-INF/container.xml`` names the package file, whose spine lists the
chapters in reading order; each chapter is XHTML, read by :mod:`html_text`. The standard
library does all of it (ebooklib is AGPL and brings lxml, 12 MB, to do the same).

DOCX: mammoth's raw-text extraction (pure Python, BSD, 0.8 MB with its one dependency):
paragraphs, lists, tables and text boxes in document order (docs/DESIGN.md, dependencies).
"""

from __future__ import annotations

import io
import posixpath
import zipfile
import zlib
from urllib.parse import unquote
from xml.etree import ElementTree

from freqkv_cli.documents.html_text import html_to_text
from freqkv_cli.documents.sniff import one_line
from freqkv_cli.errors import InputError

# Past this many bytes unpacked, a zip is refused: a few MB of zip can unpack to many GB.
MAX_UNPACKED = 1 << 30
_EPUB_MIMETYPE = b"application/epub+zip"
_CONTAINER = "META-INF/container.xml"
_XHTML_TYPES = ("application/xhtml+xml", "text/html")
_DAMAGED = "re-download it, or open and save it again in its editor"
# What a damaged zip raises while read: a bad header, a corrupt deflate stream, an entry that is
# encrypted or compressed a way zipfile does not know (RuntimeError, NotImplementedError), cut short.
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, OSError, ValueError, RuntimeError, EOFError, KeyError)


def open_zip(name: str, data: bytes) -> zipfile.ZipFile:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except _ZIP_ERRORS as exc:
        raise InputError(f"{name}: the file is damaged ({one_line(str(exc))}); {_DAMAGED}") from None
    if sum(info.file_size for info in archive.infolist()) > MAX_UNPACKED:
        raise InputError(f"{name}: unpacks to more than {MAX_UNPACKED >> 30} GiB; not read")
    return archive


def package_kind(archive: zipfile.ZipFile) -> str | None:
    """``"epub"``, ``"docx"``, or None for another zip (an .odt, a .xlsx, an archive)."""
    names = set(archive.namelist())
    try:
        mimetype = _read(archive, "mimetype").strip() if "mimetype" in names else b""
    except _ZIP_ERRORS:
        mimetype = b""  # judged by its other entries; reading them says what is damaged
    if mimetype == _EPUB_MIMETYPE:
        return "epub"
    if _CONTAINER in names and any(n.endswith(".opf") for n in names):
        return "epub"  # a mimetype entry missing or wrong: still a book
    if "word/document.xml" in names:
        return "docx"
    return None


def epub_text(name: str, archive: zipfile.ZipFile) -> str:
    """The chapters of an EPUB in spine order, one blank line apart."""
    try:
        package_path = _package_path(archive)
        package = ElementTree.fromstring(_read(archive, package_path))
        folder = posixpath.dirname(package_path)
        manifest = {
            item.get("id"): item
            for item in package.iter()
            if _local(item.tag) == "item" and item.get("id") is not None
        }
        order = [ref.get("idref") for ref in package.iter() if _local(ref.tag) == "itemref"]
        chapters: list[str] = []
        for idref in order:
            item = manifest.get(idref)
            if item is None or item.get("media-type") not in _XHTML_TYPES or item.get("href") is None:
                continue
            path = posixpath.normpath(posixpath.join(folder, unquote(item.get("href", ""))))
            markup = _read(archive, path).decode("utf-8", errors="replace")
            text = html_to_text(markup, title=False)
            if text:
                chapters.append(text)
    except (ElementTree.ParseError, *_ZIP_ERRORS) as exc:
        raise InputError(f"{name}: a damaged EPUB ({one_line(str(exc))}); {_DAMAGED}") from None
    return "\n\n".join(chapters)


def docx_text(name: str, data: bytes) -> str:
    """The text of a Word document (its bytes): paragraphs one blank line apart."""
    import mammoth  # imported here: most runs read no Word file

    try:
        result = mammoth.extract_raw_text(io.BytesIO(data))
    except Exception as exc:  # mammoth raises what its XML and zip readers raise
        reason = one_line(str(exc))[:120]
        raise InputError(f"{name}: a damaged Word document ({reason}); {_DAMAGED}") from None
    return str(result.value)


def _package_path(archive: zipfile.ZipFile) -> str:
    container = ElementTree.fromstring(_read(archive, _CONTAINER))
    for element in container.iter():
        if _local(element.tag) == "rootfile" and element.get("full-path"):
            return str(element.get("full-path"))
    raise KeyError("container.xml names no package file")


def _read(archive: zipfile.ZipFile, path: str) -> bytes:
    return archive.read(path)


def _local(tag: str) -> str:
    """An XML tag without its namespace: ``{http://www.idpf.org/2007/opf}item`` -> ``item``."""
    return tag.rsplit("}", 1)[-1]
