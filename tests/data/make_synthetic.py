"""Write the synthetic test documents in tests/data (see docs/DATA.md).

Run from anywhere: ``python tests/data/make_synthetic.py``. Output is deterministic (fixed seeds,
no timestamps), and tests/test_documents.py checks that the committed files match it.
The PDFs are written by hand, object by object, so that each kind of damage is exactly the one
intended; their text comes from samples/botchan.txt.
"""

from __future__ import annotations

import io
import random
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
BOTCHAN = HERE.parent.parent / "samples" / "botchan.txt"

LINES_PER_PAGE = 48
# Text documents in several encodings; tests compare the decoded text with these.
LATIN1_TEXT = (
    "Le café était plein ; l'élève naïf commanda une crème brûlée.\nÆrøskøbing, 1½ pints, £5, «déjà vu».\n"
)
CP1252_TEXT = (
    "\u201cCurly quotes\u201d \u2014 an em dash, \u20ac5 and \u2018single\u2019 ones.\nSecond line.\n"
)
UNICODE_TEXT = (
    "Botchan \u2014 \u574a\u3063\u3061\u3083\u3093 (1906), na\u00efve caf\u00e9 \u2713\nSecond line.\n"
)


def botchan_lines(first: int, count: int) -> list[str]:
    """``count`` lines of the sample novel's Chapter I, starting ``first`` lines in."""
    lines = BOTCHAN.read_text(encoding="utf-8").splitlines()
    start = lines.index("CHAPTER I") + first
    return lines[start : start + count]


def page_texts(pages: int) -> list[str]:
    return ["\n".join(botchan_lines(n * LINES_PER_PAGE, LINES_PER_PAGE)) for n in range(pages)]


def _pdf_string(line: str) -> bytes:
    escaped = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    return b"(" + escaped.encode("cp1252", errors="replace") + b")"


def build_pdf(pages: list[tuple[str | None, bool]], *, xref_shift: int = 0) -> bytes:
    """A PDF with one page per ``(text or None, draws an image)``; Helvetica text, 8x8 grey image.

    ``xref_shift`` adds that much to every cross-reference offset, to make a bad xref table.
    Objects are written page by page (page, content, image), so cutting the file short loses
    only the last pages.
    """
    objects: list[bytes] = [b"<< /Type /Catalog /Pages 2 0 R >>", b"", b""]
    objects[2] = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"
    kids: list[int] = []
    for text, image in pages:
        page_number = len(objects) + 1
        content_number = page_number + 1
        operations: list[bytes] = []
        if image:
            operations.append(b"q 451 0 0 451 72 200 cm /Im1 Do Q")
        if text:
            shown = b" ".join(_pdf_string(line) + b" '" for line in text.splitlines())
            operations.append(b"BT /F1 11 Tf 13 TL 72 790 Td " + shown + b" ET")
        stream = b"\n".join(operations)
        xobjects = b" /XObject << /Im1 %d 0 R >>" % (page_number + 2) if image else b""
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] "
            b"/Resources << /Font << /F1 3 0 R >>%s >> /Contents %d 0 R >>" % (xobjects, content_number)
        )
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))
        if image:
            pixels = bytes(range(0, 256, 4))
            objects.append(
                b"<< /Type /XObject /Subtype /Image /Width 8 /Height 8 /ColorSpace /DeviceGray "
                b"/BitsPerComponent 8 /Length %d >>\nstream\n%s\nendstream" % (len(pixels), pixels)
            )
        kids.append(page_number)
    references = b" ".join(b"%d 0 R" % kid for kid in kids)
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (references, len(kids))

    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets: list[int] = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref_at = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % (offset + xref_shift)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref_at)
    return bytes(out)


def truncated_pdf() -> bytes:
    """Six text pages, cut in the middle of page 5's content stream (a download cut short)."""
    whole = build_pdf([(text, False) for text in page_texts(6)])
    fifth_page_text = page_texts(6)[4].splitlines()[20]
    cut = whole.index(_pdf_string(fifth_page_text))
    return whole[:cut]


def no_startxref_pdf() -> bytes:
    """Three text pages whose file ends after the trailer: no ``startxref`` and no ``%%EOF``."""
    whole = build_pdf([(text, False) for text in page_texts(3)])
    return whole[: whole.rindex(b"startxref")]


def synthetic_files() -> dict[str, bytes]:
    """File name -> content of every synthetic test file."""
    noise = random.Random(20240501)
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as archive:
        info = zipfile.ZipInfo("word/document.xml", date_time=(2024, 1, 1, 0, 0, 0))
        archive.writestr(info, "<w:document>not really a docx</w:document>")
    return {
        "synthetic-text-3pages.pdf": build_pdf([(text, False) for text in page_texts(3)]),
        "synthetic-bad-xref.pdf": build_pdf([(text, False) for text in page_texts(3)], xref_shift=7),
        "synthetic-no-startxref.pdf": no_startxref_pdf(),
        "synthetic-truncated.pdf": truncated_pdf(),
        "synthetic-garbage-after-header.pdf": b"%PDF-1.7\n" + noise.randbytes(4096),
        "synthetic-image-only.pdf": build_pdf([(None, True)] * 4),
        "synthetic-blank.pdf": build_pdf([(None, False)] * 2),
        "synthetic-cover-then-text.pdf": build_pdf([(None, True)] * 3 + [(t, False) for t in page_texts(2)]),
        "not-a-pdf.pdf": b"<!DOCTYPE html>\n<html><body><h1>404 Not Found</h1></body></html>\n",
        "latin1.txt": LATIN1_TEXT.encode("latin-1"),
        "cp1252.txt": CP1252_TEXT.encode("cp1252"),
        "utf8-bom.txt": b"\xef\xbb\xbf" + UNICODE_TEXT.encode("utf-8"),
        "utf8-crlf.txt": UNICODE_TEXT.replace("\n", "\r\n").encode("utf-8"),
        "utf8-one-bad-byte.txt": UNICODE_TEXT.encode("utf-8") + b"broken \xff byte\n",
        "utf16-le-bom.txt": b"\xff\xfe" + UNICODE_TEXT.encode("utf-16-le"),
        "utf16-be-bom.txt": b"\xfe\xff" + UNICODE_TEXT.encode("utf-16-be"),
        "utf16-le-no-bom.txt": LATIN1_TEXT.encode("utf-16-le"),
        "binary.bin": noise.randbytes(2048),
        "control-chars.txt": bytes(
            noise.choice(b"\x01\x02\x03\x04\x05\x06\x0e\x0fabcd") for _ in range(1024)
        ),
        "fake.docx": zipped.getvalue(),
        "empty.txt": b"",
        "whitespace-only.txt": b"  \n\t\r\n   \n",
    }


def main(out_dir: Path = HERE) -> None:
    for name, content in synthetic_files().items():
        (out_dir / name).write_bytes(content)
        print(f"{name}: {len(content)} bytes")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
