"""Fuzzing the document readers (issue #19): whatever the bytes, ``open_document`` and the pages it
yields give text or one of the project's own errors (InputError, UsageError), never another
exception, a hang, or a line of their own on stdout or stderr (pypdf's log and warnings included).

Inputs: random bytes, random bytes behind a PDF header, real PDFs (samples/ and tests/data/)
mutated by flips, overwrites, cuts, deletions, insertions of PDF syntax, and text in every encoding
the reader knows with NULs and control bytes mixed in. Hypothesis runs derandomized (the same
examples on every run, so CI cannot flake) with a bounded number of examples: about a minute in
all on a 2-core machine. FUZZ_EXAMPLES=N multiplies the budget by N for a longer local hunt.
"""

from __future__ import annotations

import codecs
import contextlib
import io
import logging
import os
import signal
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from freqkv_cli.documents import open_document, parse_page_range
from freqkv_cli.errors import InputError, UsageError

TESTS = Path(__file__).parent
SEED_FILES = [TESTS.parent / "samples" / "botchan-excerpt.pdf", *sorted((TESTS / "data").glob("*.pdf"))]
SEEDS = {path.name: path.read_bytes() for path in SEED_FILES}
SCALE = max(1, int(os.environ.get("FUZZ_EXAMPLES", "1")))
PDF_HEADERS = [b"%PDF-1.4\n", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", b"junk%PDF-2.0"]
SECONDS_PER_INPUT = 20  # a hang is a failure, not a stuck CI run

PDF_TOKENS = [
    b"obj", b"endobj", b"stream\n", b"endstream", b"xref", b"startxref", b"trailer", b"%%EOF",
    b"<<", b">>", b"[", b"]", b"9 0 R", b"/Type /Page", b"/Type /Pages", b"/Kids [", b"/Count -1",
    b"/Length 999999", b"/Filter /FlateDecode", b"/Filter /ASCIIHexDecode", b"<zz>", b"(\\", b"/Encrypt",
    b"/XObject << /Im1 9 0 R >>", b"/Subtype /Image", b"\x00", b"\xff\xfe",
]  # fmt: skip


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=examples * SCALE,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def _time_limit(seconds: int) -> Iterator[None]:
    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"an input took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def read_quietly(data: bytes, pages: str | None = None) -> str:
    """Open ``data`` as standard input and read every page; 'read' or 'refused'. Fails on any other
    exception, on output, and on a log record or warning that escaped the readers."""
    records = _Records()
    root = logging.getLogger()
    root.addHandler(records)  # pypdf logs that reach the root would reach a user's terminal
    out, err = io.StringIO(), io.StringIO()
    try:
        with (
            _time_limit(SECONDS_PER_INPUT),
            warnings.catch_warnings(record=True) as caught,
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            warnings.simplefilter("always")
            try:
                document = open_document("-", stdin=io.BytesIO(data), pages=pages)
                for page in document.pages():
                    assert isinstance(page.text, str)
                outcome = "read"
            except InputError as exc:
                assert str(exc) and "\n" not in str(exc), repr(str(exc))  # one line
                outcome = "refused"
            except UsageError as exc:
                assert str(exc)
                outcome = "refused"
    finally:
        root.removeHandler(records)
    assert out.getvalue() == "" and err.getvalue() == ""
    assert [str(w.message) for w in caught] == []
    assert [r.getMessage() for r in records.records] == []
    return outcome


@st.composite
def mutated_pdf(draw: st.DrawFn) -> bytes:
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "overwrite", "cut", "delete", "insert", "token", "duplicate"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=64))
            data[at : at + len(chunk)] = chunk
        elif kind == "cut":
            del data[max(1, at) :]
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 512))]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "token":
            data[at:at] = draw(st.sampled_from(PDF_TOKENS))
        else:
            data[at:at] = data[at : at + draw(st.integers(1, 256))]
    return bytes(data) or b"%"


@st.composite
def text_bytes(draw: st.DrawFn) -> tuple[bytes, bool]:
    """Encoded text, and whether it holds a NUL character."""
    text = draw(st.text(max_size=400))
    if draw(st.booleans()):
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from(["\x00", "\x01", "\x1b[31m", "\r\n", "\x7f"])) + text[at:]
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-32", "cp1252"]))
    data = text.encode(encoding, errors="replace")
    if draw(st.booleans()):  # long enough that the end is judged apart from the head
        data = b"x" * 9000 + data
    # UTF-16-LE text that starts with NUL begins with FF FE 00 00: the UTF-32-LE byte-order mark
    ambiguous = encoding == "utf-16" and data.startswith(codecs.BOM_UTF32_LE)
    return data, "\x00" in text and not ambiguous


@fuzz_settings(1000)
@given(st.binary(max_size=4096))
def test_random_bytes(data: bytes) -> None:
    read_quietly(data)


@fuzz_settings(1000)
@given(
    st.binary(max_size=4096),
    st.sampled_from([b"%PDF-1.4\n", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", b"junk%PDF-2.0"]),
)
def test_random_bytes_behind_a_pdf_header(data: bytes, header: bytes) -> None:
    read_quietly(header + data)


@fuzz_settings(4000)
@given(mutated_pdf(), st.sampled_from([None, None, None, "1", "2-3", "1,3-"]))
def test_mutated_real_pdfs(data: bytes, pages: str | None) -> None:
    read_quietly(data, pages)


@fuzz_settings(1000)
@given(text_bytes())
def test_text_in_every_encoding_with_nuls_and_controls(case: tuple[bytes, bool]) -> None:
    data, has_nul = case
    outcome = read_quietly(data)
    if has_nul:
        assert outcome == "refused"  # one rule: text never holds a NUL, wherever it is


@fuzz_settings(500)
@given(st.text(alphabet="0123456789-–, x", max_size=16), st.integers(1, 50))
def test_page_ranges(spec: str, count: int) -> None:
    try:
        pages = parse_page_range(spec, count)
    except UsageError:
        return
    assert pages == sorted(set(pages)) and all(1 <= page <= count for page in pages)


CHILD = textwrap.dedent(
    """
    import io, random, sys
    from pathlib import Path
    from freqkv_cli.documents import open_document
    from freqkv_cli.errors import InputError, UsageError

    seeds = [Path(p).read_bytes() for p in sys.argv[1:]]
    rnd = random.Random(19)
    for index in range(600):
        data = bytearray(seeds[index % len(seeds)])
        for _ in range(rnd.randint(1, 4)):
            at = rnd.randrange(len(data))
            data[at : at + 16] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 16)))
        try:
            for page in open_document("-", stdin=io.BytesIO(bytes(data))).pages():
                pass
        except (InputError, UsageError):
            pass
    """
)


def test_no_raw_library_line_in_a_process_without_log_handlers() -> None:
    """As in the CLI: no logging configured, so a pypdf warning logged outside our quieting
    would be printed raw by Python's last-resort handler."""
    result = subprocess.run(
        [sys.executable, "-c", CHILD, *map(str, SEED_FILES)], capture_output=True, timeout=300
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr == b"" and result.stdout == b""
