"""PDF documents: open with pypdf (repairing what it can), decrypt, select pages, extract text lazily.

pypdf is imported inside the functions that need it: it takes a quarter of a second to import,
and most commands (``--help``, text documents) never touch a PDF.
"""

from __future__ import annotations

import io
import logging
import re
import warnings as _warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from freqkv_cli.documents.document import Document, Page
from freqkv_cli.documents.pages import parse_page_range
from freqkv_cli.documents.sniff import one_line
from freqkv_cli.errors import InputError, UsageError

if TYPE_CHECKING:
    from pypdf import PdfReader

_logger = logging.getLogger(__name__)
# pypdf logs damage as warnings; with no handler of its own, Python's last-resort handler would
# print them raw on stderr wherever a pypdf call runs outside _quiet_pypdf().
logging.getLogger("pypdf").addHandler(logging.NullHandler())

_PROBE_FIRST = 3  # pages tried up front: enough to get past a cover or a blank title page
_PROBE_SPREAD = 5  # further pages, spread over the selection, tried before calling a PDF image-only
_REASON_CHARS = 120
_REPAIR_HINT = "re-download it, or repair it, e.g. qpdf in.pdf fixed.pdf"
_OCR_HINT = "run OCR first, e.g. ocrmypdf in.pdf out.pdf, and pass out.pdf"

_OBJECT_RE = re.compile(rb"(\d+)\s+(\d+)\s+obj\b")
_PAGE_TYPE_RE = re.compile(rb"/Type\s*/Page(?![A-Za-z0-9])")  # a /Page, not the /Pages tree


class _ListHandler(logging.Handler):
    def __init__(self, messages: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.messages = messages

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def _quiet_pypdf() -> Iterator[list[str]]:
    """Collect pypdf's log lines and warnings instead of letting them reach the user's terminal.

    The messages are also logged at DEBUG on this module's logger, for a --debug run.
    """
    messages: list[str] = []
    logger = logging.getLogger("pypdf")
    handler = _ListHandler(messages)
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with _warnings.catch_warnings(record=True) as caught:
            _warnings.simplefilter("always")
            try:
                yield messages
            finally:
                messages.extend(str(item.message) for item in caught)
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
        for message in messages:
            _logger.debug("pypdf: %s", message)


def _reason(exc: BaseException) -> str:
    text = one_line(str(exc)) or type(exc).__name__
    return text if len(text) <= _REASON_CHARS else text[: _REASON_CHARS - 3] + "..."


def open_pdf(name: str, data: bytes, *, password: str | None, pages: str | None) -> Document:
    """Open and check a PDF up front; text is extracted later, page by page, by ``Document.pages()``."""
    warnings: list[str] = []
    reader, salvaged = _open_reader(name, data, warnings)
    _decrypt(name, reader, password)
    total = _page_total(reader)
    if (total is None or total == 0) and not salvaged and not _is_encrypted(reader):
        # A broken page tree with intact page objects: rebuild the page list from those.
        rebuilt = _salvage(data)
        if rebuilt is not None:
            try:
                reader, salvaged = _read(rebuilt), True
            except Exception:
                pass  # keep the original reader and its verdict
            else:
                total = _page_total(reader)
    if total is None:
        raise InputError(f"{name}: damaged PDF, its page list cannot be read; {_REPAIR_HINT}")
    if total == 0:
        raise InputError(f"{name}: the PDF has no pages; check that it is the right file")
    if salvaged:
        warnings.append(
            "damaged PDF (cut short, or its page tree or cross-reference table is broken): "
            f"rebuilt the page list from the {total} page objects found; the page order may differ"
        )
    if pages is None:
        numbers = list(range(1, total + 1))
    else:
        try:
            numbers = parse_page_range(pages, total)
        except UsageError as exc:
            raise UsageError(f"{name}: {exc}") from None
    source = PdfSource(name, reader, numbers, damaged=salvaged or bool(warnings))
    source.probe(warnings)
    return Document(
        name=name, kind="pdf", page_count=len(numbers), warnings=warnings, total_pages=total, _source=source
    )


def _is_encrypted(reader: PdfReader) -> bool:
    try:
        with _quiet_pypdf():
            return bool(reader.is_encrypted)
    except Exception:
        return False


def _read(data: bytes) -> PdfReader:
    from pypdf import PdfReader

    with _quiet_pypdf():
        return PdfReader(io.BytesIO(data), strict=False)


def _open_reader(name: str, data: bytes, warnings: list[str]) -> tuple[PdfReader, bool]:
    """Return ``(reader, salvaged)``; ``salvaged`` when the page list had to be rebuilt by us."""
    from pypdf import PdfReader
    from pypdf.errors import DependencyError

    try:
        # strict=False: pypdf repairs bad xref offsets and similar damage instead of giving up.
        with _quiet_pypdf() as messages:
            reader = PdfReader(io.BytesIO(data), strict=False)
    except DependencyError as exc:
        raise _dependency_error(name, exc) from None
    except Exception as exc:  # pypdf raises many types (even IndexError, RecursionError) on bad input
        rebuilt = _salvage(data)
        if rebuilt is not None:
            try:
                return _read(rebuilt), True
            except Exception:
                pass  # report the original problem, it says more than the rebuilt file's
        raise InputError(
            f"{name}: damaged PDF that cannot be repaired ({_reason(exc)}); {_REPAIR_HINT}"
        ) from None
    if messages:
        more = f"; {len(messages) - 1} more" if len(messages) > 1 else ""
        warnings.append(
            f"damaged PDF structure, repaired on loading ({_reason(Exception(messages[0]))}{more})"
        )
    return reader, False


def _dependency_error(name: str, exc: Exception) -> InputError:
    return InputError(
        f"{name}: this PDF's encryption needs a missing package ({_reason(exc)}); pip install cryptography"
    )


def _decrypt(name: str, reader: PdfReader, password: str | None) -> None:
    from pypdf import PasswordType
    from pypdf.errors import DependencyError

    try:
        with _quiet_pypdf():
            encrypted = reader.is_encrypted
        if not encrypted:
            return  # a password given for a plain PDF is harmless (e.g. set in the environment)
        with _quiet_pypdf():
            if password and reader.decrypt(password) != PasswordType.NOT_DECRYPTED:
                return
            # Many PDFs are encrypted with an empty user password (only an owner password, to
            # restrict printing or copying): they open without asking, as in any viewer.
            if reader.decrypt("") != PasswordType.NOT_DECRYPTED:
                return
    except DependencyError as exc:
        raise _dependency_error(name, exc) from None
    except NotImplementedError as exc:
        raise InputError(
            f"{name}: unsupported PDF encryption ({_reason(exc)}); remove it first, "
            "e.g. qpdf --decrypt --password=PASSWORD in.pdf out.pdf"
        ) from None
    except Exception as exc:
        raise InputError(f"{name}: damaged PDF encryption data ({_reason(exc)}); {_REPAIR_HINT}") from None
    if password:
        raise InputError(f"{name}: wrong PDF password; check the value of --password or FREQKV_PDF_PASSWORD")
    raise InputError(
        f"{name}: the PDF is encrypted; pass its password with --password or FREQKV_PDF_PASSWORD"
    )


def _page_total(reader: PdfReader) -> int | None:
    """The number of pages, or None when the page tree cannot be read."""
    try:
        with _quiet_pypdf():
            return len(reader.pages)
    except Exception:
        return None


def _salvage(data: bytes) -> bytes | None:
    """Rebuild a readable PDF from one whose end (xref, trailer, page tree) is missing or broken.

    Typical case: a download cut short. The page objects that survive are found by scanning for
    ``/Type /Page`` dictionaries; a new catalog, page tree and trailer are appended, and pypdf's
    non-strict mode rebuilds the cross-reference table by scanning for objects (``startxref 0``
    is deliberately wrong to make it do so). Pages come in file order. None if no page is found.
    """
    matches = list(_OBJECT_RE.finditer(data))
    page_objects: dict[int, int] = {}  # object number -> generation, in file order
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(data)
        body = data[match.end() : min(end, match.end() + 4096)]
        stream_at = body.find(b"stream")
        if stream_at >= 0:
            body = body[:stream_at]  # only the dictionary: content streams may mention /Type /Page
        if _PAGE_TYPE_RE.search(body):
            page_objects[int(match.group(1))] = int(match.group(2))
    if not page_objects:
        return None
    catalog = max(int(match.group(1)) for match in matches) + 1
    tree = catalog + 1
    kids = b" ".join(b"%d %d R" % item for item in page_objects.items())
    tail = (
        b"\n%d 0 obj\n<< /Type /Catalog /Pages %d 0 R >>\nendobj\n" % (catalog, tree)
        + b"%d 0 obj\n<< /Type /Pages /Kids [%s] /Count %d >>\nendobj\n" % (tree, kids, len(page_objects))
        + b"trailer\n<< /Root %d 0 R /Size %d >>\nstartxref\n0\n%%%%EOF\n" % (catalog, tree + 1)
    )
    return data + tail


def _has_images(node: Any, depth: int = 0) -> bool:
    """True when a page (or form XObject) draws an image XObject: the mark of a scanned page."""
    try:
        resources = node.get("/Resources")
        resources = resources.get_object() if resources is not None else None
        xobjects = resources.get("/XObject") if resources is not None else None
        if xobjects is None:
            return False
        for ref in xobjects.get_object().values():
            xobject = ref.get_object()
            subtype = xobject.get("/Subtype")
            if subtype == "/Image":
                return True
            if subtype == "/Form" and depth < 3 and _has_images(xobject, depth + 1):
                return True
    except Exception:  # a damaged resource dictionary only means we cannot tell
        return False
    return False


class PdfSource:
    """The selected pages of an open PDF; text is extracted as the caller iterates."""

    def __init__(self, name: str, reader: PdfReader, numbers: list[int], *, damaged: bool = False) -> None:
        self._name = name
        self._damaged = damaged  # repaired or rebuilt on opening: no text means damage, not a scan
        self._reader = reader
        self._numbers = numbers
        self._probed: dict[int, str | None] = {}  # page number -> text (None: unreadable)
        self._unreadable: set[int] = set()
        self._saw_images = False

    def _extract(self, number: int, warnings: list[str]) -> str | None:
        """The text of one page, or None (with a warning, once) when it cannot be read."""
        try:
            with _quiet_pypdf():
                page = self._reader.pages[number - 1]
                text = page.extract_text()
                if not text.strip() and not self._saw_images:
                    self._saw_images = _has_images(page)  # reads objects too: pypdf may complain
        except Exception as exc:  # damaged streams raise anything from PdfReadError to KeyError
            if number not in self._unreadable:
                self._unreadable.add(number)
                warnings.append(f"page {number} unreadable, skipped: {_reason(exc)}")
            return None
        return text.replace("\r\n", "\n").replace("\r", "\n")

    def probe(self, warnings: list[str]) -> None:
        """Extract a few pages now, so that an image-only PDF fails before any model loads."""
        first = self._numbers[:_PROBE_FIRST]
        rest = self._numbers[_PROBE_FIRST:]
        step = max(1, len(rest) // _PROBE_SPREAD)
        spread = rest[step - 1 :: step][:_PROBE_SPREAD] if rest else []
        for number in first + spread:
            text = self._extract(number, warnings)
            self._probed[number] = text
            if text and text.strip():
                return
        if self._saw_images:
            if len(self._probed) == 1:
                tried = f"page {next(iter(self._probed))} holds"
            else:
                tried = f"the {len(self._probed)} pages tried hold"
            raise InputError(f"{self._name}: no text layer, {tried} only images (a scan?); {_OCR_HINT}")
        if len(self._probed) == len(self._numbers):
            raise self._no_text_error()

    def iter_pages(self, warnings: list[str]) -> Iterator[Page]:
        any_text = False
        for number in self._numbers:
            text = self._probed[number] if number in self._probed else self._extract(number, warnings)
            if text is None:
                continue
            any_text = any_text or bool(text.strip())
            yield Page(number, text)
        if not any_text:
            raise self._no_text_error()

    def _no_text_error(self) -> InputError:
        if self._unreadable and self._unreadable >= set(self._numbers):
            return InputError(f"{self._name}: damaged PDF, no page could be read; {_REPAIR_HINT}")
        if self._saw_images:
            return InputError(f"{self._name}: no text layer, the pages are images (a scan?); {_OCR_HINT}")
        if self._damaged:
            return InputError(
                f"{self._name}: damaged PDF (cut short, or its structure is broken): no text could be "
                f"read from the pages that survive; {_REPAIR_HINT}"
            )
        return InputError(
            f"{self._name}: no text found in the selected pages (blank, or text drawn as shapes); "
            "check --pages, or run OCR, e.g. ocrmypdf --force-ocr in.pdf out.pdf"
        )
