"""Errors the library raises on purpose, each with the exit code the CLI maps it to.

The library never prints or exits; the CLI turns a `FreqKVError` into one line on
stderr and its `exit_code`.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1  # an unexpected error (a bug): reported in one line, details with --debug
EXIT_USAGE = 2  # bad flags or arguments (also what Typer/click use); output that cannot be written
EXIT_INPUT = 3  # the document cannot be read: missing, empty, binary, encrypted, image-only, broken
EXIT_MODEL = 4  # the model cannot be loaded: not a model folder, unsupported architecture, missing package
EXIT_OUT_OF_MEMORY = 5  # the device ran out of memory
EXIT_INTERRUPTED = 130  # Ctrl-C


class FreqKVError(Exception):
    """Base class: a problem with a clear one-line explanation for the user."""

    exit_code = EXIT_FAILURE


class UsageError(FreqKVError):
    """A bad option value (size, ratio, page range, ...)."""

    exit_code = EXIT_USAGE


class InputError(FreqKVError):
    """A document that cannot be read."""

    exit_code = EXIT_INPUT


class OutputError(UsageError):
    """Output that cannot be written: a closed standard output (``>&-``), a full disk
    (``>/dev/full``), a read-only folder. The user's redirection or --out, hence a usage code."""


class ModelError(FreqKVError):
    """A model that cannot be loaded or is not supported."""

    exit_code = EXIT_MODEL


class OutOfMemoryError(FreqKVError):
    """The device ran out of memory; the message suggests a smaller window."""

    exit_code = EXIT_OUT_OF_MEMORY


class Interrupted(FreqKVError):
    """The user pressed Ctrl-C; what was already written stays written."""

    exit_code = EXIT_INTERRUPTED


class ContextLimitError(FreqKVError):
    """The session already holds `ctx` tokens."""

    exit_code = EXIT_INPUT


_OUT_OF_MEMORY_WORDS = ("out of memory", "can't allocate memory", "cannot allocate memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """True for every way the host or a device says it ran out of memory: MemoryError, torch's
    OutOfMemoryError (CUDA, MPS), the CPU allocator's "can't allocate memory" RuntimeError."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    if isinstance(exc, OSError) and exc.errno == 12:  # ENOMEM
        return True
    if isinstance(exc, FreqKVError):
        return False
    text = str(exc).lower()
    return any(words in text for words in _OUT_OF_MEMORY_WORDS)


def _safetensors_error() -> type[Exception]:
    from safetensors import SafetensorError

    return SafetensorError


# What a failed write of weights raises: the OS's error, or safetensors' own (its Rust writer
# reports a full disk as "I/O error: No space left on device", not as an OSError).
WRITE_ERRORS: tuple[type[Exception], ...] = (OSError, _safetensors_error())


def write_failure(exc: BaseException) -> str:
    """The reason a write failed, in a few words: the OS's text, or the first line of another's."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__
