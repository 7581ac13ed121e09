"""The documents layer: cheap up-front checks, encodings, PDFs (encrypted, damaged, scanned), laziness.

Test files live in tests/data (sources in docs/DATA.md); synthetic ones come from
tests/data/make_synthetic.py, whose output is checked against the committed files below.
"""

from __future__ import annotations

import importlib.util
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pypdf
import pytest

import freqkv_cli.documents.text as text_module
from freqkv_cli.documents import Document, Page, open_document, parse_page_range
from freqkv_cli.errors import FreqKVError, InputError, UsageError

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
SAMPLES = ROOT / "samples"

_spec = importlib.util.spec_from_file_location("make_synthetic", DATA / "make_synthetic.py")
assert _spec is not None and _spec.loader is not None
synthetic = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(synthetic)


def data(name: str) -> str:
    return str(DATA / name)


def fails(error: type[FreqKVError], path: str, *fragments: str, **kwargs: object) -> str:
    """Open ``path``, expect ``error``, check the message is one line naming the file and the problem."""
    with pytest.raises(error) as excinfo:
        open_document(path, **kwargs)  # type: ignore[arg-type]
    message = str(excinfo.value)
    assert "\n" not in message and "\r" not in message
    name = "<stdin>" if path == "-" else path
    assert message.startswith(f"{name}: ")
    for fragment in fragments:
        assert fragment in message
    return message


def texts(document: Document) -> dict[int, str]:
    return {page.number: page.text for page in document.pages()}


# --- cheap checks on any input ---------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    fails(InputError, str(tmp_path / "nope.txt"), "no such file")


def test_directory(tmp_path: Path) -> None:
    fails(InputError, str(tmp_path), "is a directory")


def test_permission_denied_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "secret.txt"
    path.write_text("hello")

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    # root reads any file, so simulate the refusal where the file is opened.
    monkeypatch.setattr(text_module, "open", refuse, raising=False)
    fails(InputError, str(path), "permission denied")


@pytest.mark.parametrize(
    ("name", "fragment"), [("empty.txt", "the file is empty"), ("whitespace-only.txt", "only whitespace")]
)
def test_nothing_to_read(name: str, fragment: str) -> None:
    fails(InputError, data(name), fragment)


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("binary.bin", "NUL bytes"),
        ("control-chars.txt", "control characters"),
        ("pikepdf-congress.pdf.jpg", "JPEG image"),  # made in the test from bytes, see below
    ],
)
def test_binary_files(name: str, fragment: str, tmp_path: Path) -> None:
    path = DATA / name
    if not path.exists():  # a JPEG: keep the magic-number table honest without shipping an image
        path = tmp_path / name
        path.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(200))
    message = fails(InputError, str(path), fragment, "not a document freqkv reads")
    assert "convert it" in message


def test_a_zip_named_docx_without_a_word_document_is_damaged() -> None:
    fails(InputError, data("fake.docx"), "a damaged Word document")


def test_binary_refused_from_its_first_bytes() -> None:
    class HeadOnly(io.BytesIO):
        """A stream of a 'huge video': reading past the first block fails the test."""

        def read(self, size: int | None = -1) -> bytes:
            assert size is not None and size > 0, "read the whole input before judging its head"
            return super().read(size)

    fails(InputError, "-", "GIF image", stdin=HeadOnly(b"GIF89a" + bytes(100_000)))


def test_pdf_extension_without_pdf_content() -> None:
    fails(InputError, data("not-a-pdf.pdf"), "not a PDF", "%PDF-")


def test_pdf_recognised_by_header_not_extension(tmp_path: Path) -> None:
    path = tmp_path / "book.txt"
    shutil.copy(DATA / "synthetic-text-3pages.pdf", path)
    document = open_document(str(path))
    assert document.kind == "pdf"
    assert document.page_count == 3


def test_pdf_with_junk_before_header() -> None:
    junk = b"HTTP/1.1 200 OK\r\n\r\n" + (DATA / "synthetic-text-3pages.pdf").read_bytes()
    document = open_document("-", stdin=io.BytesIO(junk))
    assert document.kind == "pdf"
    assert len(texts(document)) == 3


def test_pathlike_accepted() -> None:
    assert open_document(DATA / "latin1.txt").name == str(DATA / "latin1.txt")


# --- standard input --------------------------------------------------------------------------


def test_stdin_text() -> None:
    document = open_document("-", stdin=io.BytesIO("caf\u00e9\r\nline two\n".encode()))
    assert document.name == "<stdin>"
    assert document.kind == "text"
    assert document.text() == "caf\u00e9\nline two\n"


def test_stdin_pdf() -> None:
    document = open_document("-", stdin=io.BytesIO((DATA / "synthetic-text-3pages.pdf").read_bytes()))
    assert (document.name, document.kind, document.page_count) == ("<stdin>", "pdf", 3)


def test_stdin_empty() -> None:
    fails(InputError, "-", "standard input is empty", stdin=io.BytesIO(b""))


def test_stdin_terminal() -> None:
    class Terminal(io.BytesIO):
        def isatty(self) -> bool:
            return True

    fails(InputError, "-", "nothing is piped in", stdin=Terminal(b"would block"))


# --- text encodings --------------------------------------------------------------------------

ENCODINGS = [
    # file, expected text, encoding, fragment of the expected warning (None: no warning)
    ("latin1.txt", synthetic.LATIN1_TEXT, "cp1252", "latin-1 fallback"),
    ("cp1252.txt", synthetic.CP1252_TEXT, "cp1252", "latin-1 fallback"),
    ("utf8-bom.txt", synthetic.UNICODE_TEXT, "utf-8", None),
    ("utf8-crlf.txt", synthetic.UNICODE_TEXT, "utf-8", None),
    ("utf16-le-bom.txt", synthetic.UNICODE_TEXT, "utf-16-le", None),
    ("utf16-be-bom.txt", synthetic.UNICODE_TEXT, "utf-16-be", None),
    ("utf16-le-no-bom.txt", synthetic.LATIN1_TEXT, "utf-16-le", "no byte-order mark"),
    ("utf8-one-bad-byte.txt", synthetic.UNICODE_TEXT + "broken \ufffd byte\n", "utf-8", "invalid UTF-8"),
]


@pytest.mark.parametrize(("name", "expected", "encoding", "warning"), ENCODINGS)
def test_encodings_round_trip(name: str, expected: str, encoding: str, warning: str | None) -> None:
    document = open_document(data(name))
    assert (document.kind, document.page_count, document.encoding) == ("text", None, encoding)
    assert list(document.pages()) == [Page(1, expected)]
    assert document.text() == expected
    if warning is None:
        assert document.warnings == []
    else:
        assert len(document.warnings) == 1 and warning in document.warnings[0]


def test_utf32_by_bom(tmp_path: Path) -> None:
    path = tmp_path / "utf32.txt"
    path.write_bytes("\ufeff\u574a\u3063\u3061\u3083\u3093 Botchan\n".encode("utf-32-le"))
    assert open_document(str(path)).text() == "\u574a\u3063\u3061\u3083\u3093 Botchan\n"


def test_latin1_bytes_undefined_in_cp1252(tmp_path: Path) -> None:
    path = tmp_path / "c1.txt"
    path.write_bytes(b"caf\xe9 \x81")  # 0x81 is undefined in Windows-1252: plain Latin-1 then
    document = open_document(str(path))
    assert (document.text(), document.encoding) == ("caf\u00e9 \x81", "latin-1")


def test_pages_option_is_for_pdfs_only() -> None:
    fails(UsageError, data("latin1.txt"), "--pages applies only to PDFs", pages="1-2")


# --- encrypted PDFs --------------------------------------------------------------------------

# name -> user password: RC4 40-bit (R2), AES-128 (R4), AES-256 (R6, user "foo", owner "bar")
ENCRYPTED = {
    "pypdf-r2-user-password.pdf": "asdfzxcv",
    "pypdf-r4-aes-user-password.pdf": "asdfzxcv",
    "pypdf-r6-both-passwords.pdf": "foo",
}


@pytest.mark.parametrize("name", ENCRYPTED)
def test_encrypted_without_password(name: str) -> None:
    fails(InputError, data(name), "encrypted", "--password", "FREQKV_PDF_PASSWORD")


@pytest.mark.parametrize("name", ENCRYPTED)
def test_encrypted_wrong_password(name: str) -> None:
    fails(InputError, data(name), "wrong PDF password", password="letmein")


@pytest.mark.parametrize(("name", "password"), ENCRYPTED.items())
def test_encrypted_with_password(name: str, password: str) -> None:
    document = open_document(data(name), password=password)
    assert document.kind == "pdf" and document.page_count == 1
    assert document.text() == "pdf encryption test\npassword: asdfzxcv"
    assert document.warnings == []


def test_encrypted_with_owner_password() -> None:
    assert "pdf encryption test" in open_document(data("pypdf-r6-both-passwords.pdf"), password="bar").text()


def test_owner_password_only_opens_without_asking() -> None:
    # Encrypted to restrict copying, with an empty user password: viewers open it silently.
    for password in (None, "irrelevant"):
        document = open_document(data("pypdf-r6-owner-password.pdf"), password=password)
        assert "pdf encryption test" in document.text()


def test_password_for_plain_pdf_is_ignored() -> None:
    document = open_document(data("synthetic-text-3pages.pdf"), password="unused")
    assert document.page_count == 3 and document.warnings == []


# --- damaged PDFs ----------------------------------------------------------------------------


def test_damaged_content_stream_skips_that_page() -> None:
    document = open_document(data("pikepdf-content-stream-errors.pdf"))
    pages = texts(document)
    assert sorted(pages) == [1, 2, 4]
    assert all("Potato" in text for text in pages.values())
    assert len(document.warnings) == 1 and document.warnings[0].startswith("page 3 unreadable")
    # iterating again neither repeats the warning nor loses pages
    assert sorted(texts(document)) == [1, 2, 4] and len(document.warnings) == 1


def test_bad_xref_is_repaired() -> None:
    good = texts(open_document(data("synthetic-text-3pages.pdf")))
    document = open_document(data("synthetic-bad-xref.pdf"))
    assert texts(document) == good
    assert any("repaired on loading" in warning for warning in document.warnings)


def test_missing_startxref_is_rebuilt() -> None:
    good = texts(open_document(data("synthetic-text-3pages.pdf")))
    document = open_document(data("synthetic-no-startxref.pdf"))
    assert texts(document) == good
    assert any("rebuilt the page list" in warning for warning in document.warnings)


def test_broken_page_tree_is_rebuilt() -> None:
    good = (DATA / "synthetic-text-3pages.pdf").read_bytes()
    broken = good.replace(b"/Kids [", b"/Kidz [", 1)  # the page tree lists no pages
    document = open_document("-", stdin=io.BytesIO(broken))
    assert texts(document) == texts(open_document(data("synthetic-text-3pages.pdf")))
    assert any("rebuilt the page list" in warning for warning in document.warnings)


def test_truncated_pdf_yields_pages_before_the_cut() -> None:
    document = open_document(data("synthetic-truncated.pdf"))
    pages = texts(document)
    assert sorted(pages) == [1, 2, 3, 4]
    expected = synthetic.page_texts(4)
    for number, text in pages.items():
        assert expected[number - 1].splitlines()[0] in text
        assert expected[number - 1].splitlines()[-1] in text
    assert any("rebuilt the page list" in warning for warning in document.warnings)
    assert any(warning.startswith("page 5 unreadable") for warning in document.warnings)


@pytest.mark.parametrize("name", ["synthetic-garbage-after-header.pdf", "pikepdf-fuzz-378014596.pdf"])
def test_unrepairable_pdf(name: str) -> None:
    fails(InputError, data(name), "damaged PDF", "qpdf")


def test_all_pages_unreadable(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: object, *args: object, **kwargs: object) -> str:
        raise pypdf.errors.PdfReadError("Unexpected end of stream")

    monkeypatch.setattr(pypdf.PageObject, "extract_text", broken)
    message = fails(InputError, data("synthetic-text-3pages.pdf"), "no page could be read")
    assert "damaged PDF" in message


def test_pdf_without_pages(tmp_path: Path) -> None:
    path = tmp_path / "empty.pdf"
    path.write_bytes(synthetic.build_pdf([]))
    fails(InputError, str(path), "no pages")


# --- scanned (image-only) and blank PDFs -----------------------------------------------------


@pytest.mark.parametrize("name", ["synthetic-image-only.pdf", "pikepdf-congress.pdf"])
def test_image_only_pdf_fails_up_front(name: str) -> None:
    # open_document itself raises: the user hears it before any model loads.
    fails(InputError, data(name), "no text layer", "ocrmypdf")


def test_image_cover_then_text_is_accepted() -> None:
    document = open_document(data("synthetic-cover-then-text.pdf"))
    pages = texts(document)
    assert [number for number, text in pages.items() if text.strip()] == [4, 5]
    assert "CHAPTER I" in pages[4]


def test_blank_pdf() -> None:
    fails(InputError, data("synthetic-blank.pdf"), "no text found")


def test_no_text_found_only_at_the_end(tmp_path: Path) -> None:
    # Too many pages to probe them all, none with an image: nothing to say up front, so the
    # error comes once iteration has seen every page.
    path = tmp_path / "blank20.pdf"
    path.write_bytes(synthetic.build_pdf([(None, False)] * 20))
    document = open_document(str(path))
    seen = []
    with pytest.raises(InputError, match="no text found"):
        for page in document.pages():
            seen.append(page.number)
    assert seen == list(range(1, 21))


def test_scan_detected_at_the_end(tmp_path: Path) -> None:
    # Blank probe pages, scanned pages elsewhere: the end-of-iteration error names OCR.
    pages = [(None, False)] * 20
    pages[9] = (None, True)
    path = tmp_path / "mixed.pdf"
    path.write_bytes(synthetic.build_pdf(pages))
    document = open_document(str(path))
    with pytest.raises(InputError, match="ocrmypdf"):
        document.text()


# --- page selection and laziness -------------------------------------------------------------


def test_page_selection() -> None:
    document = open_document(data("synthetic-text-3pages.pdf"), pages="2-")
    assert (document.page_count, document.total_pages) == (2, 3)
    assert sorted(texts(document)) == [2, 3]
    assert document.text().startswith(synthetic.page_texts(3)[1].splitlines()[0])


def test_page_selection_out_of_range_names_the_file() -> None:
    message = fails(UsageError, data("synthetic-text-3pages.pdf"), "past the end", "3 pages", pages="2-9")
    assert "'2-9'" in message


def test_pages_are_extracted_lazily(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    original = pypdf.PageObject.extract_text

    def counting(self: pypdf.PageObject, *args: object, **kwargs: object) -> str:
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pypdf.PageObject, "extract_text", counting)
    document = open_document(str(SAMPLES / "botchan-excerpt.pdf"))
    assert document.page_count == 12
    assert len(calls) == 1  # the probe of page 1, which has text
    pages = document.pages()
    first = next(pages)
    assert first.number == 1 and first.text.startswith("BOTCHAN (MASTER DARLING)")
    assert len(calls) == 1  # page 1 came from the probe
    assert next(pages).number == 2 and len(calls) == 2
    assert [page.number for page in pages] == list(range(3, 13))
    assert len(calls) == 12


def test_pypdf_noise_is_silenced(capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    for name in ("synthetic-bad-xref.pdf", "synthetic-truncated.pdf", "pikepdf-content-stream-errors.pdf"):
        open_document(data(name)).text()
    assert capfd.readouterr().err == ""
    assert not [record for record in caplog.records if record.name.startswith("pypdf")]


def test_text_documents_do_not_import_pypdf() -> None:
    # pypdf takes ~0.25 s to import; a text document should not pay for it.
    code = (
        "import sys; from freqkv_cli.documents import open_document; "
        f"open_document({str(SAMPLES / 'botchan.txt')!r}); assert 'pypdf' not in sys.modules"
    )
    subprocess.run(
        [sys.executable, "-c", code], check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )


# --- parse_page_range ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "count", "expected"),
    [
        ("3-5", 10, [3, 4, 5]),
        ("1,3,5-7", 10, [1, 3, 5, 6, 7]),
        ("5-", 7, [5, 6, 7]),
        ("-3", 10, [1, 2, 3]),
        ("7", 7, [7]),
        (" 2 - 4 , 1 ", 10, [1, 2, 3, 4]),
        ("4-6,1-5", 10, [1, 2, 3, 4, 5, 6]),  # overlaps merge, order is the document's
        ("2\u20134", 10, [2, 3, 4]),  # en dash
        ("1-1", 1, [1]),
    ],
)
def test_parse_page_range(spec: str, count: int, expected: list[int]) -> None:
    assert parse_page_range(spec, count) == expected


@pytest.mark.parametrize(
    ("spec", "count", "fragment"),
    [
        ("", 10, "empty"),
        ("  ", 10, "empty"),
        ("1,,3", 10, "stray comma"),
        ("3,", 10, "stray comma"),
        ("abc", 10, "cannot read 'abc'"),
        ("1-2-3", 10, "cannot read"),
        ("-", 10, "cannot read"),
        ("3 5", 10, "cannot read"),
        ("1.5", 10, "cannot read"),
        ("0", 10, "numbered from 1"),
        ("0-3", 10, "numbered from 1"),
        ("5-3", 10, "runs backwards"),
        ("11", 10, "past the end"),
        ("8-12", 10, "past the end"),
        ("12-", 10, "past the end"),
        ("2", 1, "has 1 page;"),
    ],
)
def test_parse_page_range_rejects(spec: str, count: int, fragment: str) -> None:
    with pytest.raises(UsageError) as excinfo:
        parse_page_range(spec, count)
    message = str(excinfo.value)
    assert "\n" not in message and fragment in message and f"'{spec}'" in message


# --- shipped files ---------------------------------------------------------------------------


def test_synthetic_files_match_their_generator() -> None:
    for name, content in synthetic.synthetic_files().items():
        assert (DATA / name).read_bytes() == content, f"{name} is stale: run tests/data/make_synthetic.py"


def test_sample_novel() -> None:
    document = open_document(str(SAMPLES / "botchan.txt"))
    text = document.text()
    assert document.warnings == [] and document.encoding == "utf-8"
    assert len(text.split()) > 45_000
    assert text.startswith("BOTCHAN (MASTER DARLING)") and text.rstrip().endswith("--(THE END)--")
    assert "Gutenberg" not in text  # header and licence were stripped, see docs/DATA.md


def test_sample_pdf_matches_the_novel() -> None:
    novel = " ".join((SAMPLES / "botchan.txt").read_text(encoding="utf-8").split())
    document = open_document(str(SAMPLES / "botchan-excerpt.pdf"))
    assert document.page_count == 12 and document.warnings == []
    for page in document.pages():
        words = page.text.split()
        assert len(words) > 150
        assert " ".join(words[:12]) in novel  # extracted text is the novel's, in order
