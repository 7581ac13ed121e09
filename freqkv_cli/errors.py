"""Errors the library raises on purpose, each with the exit code the CLI maps it to.

The library never prints or exits; the CLI turns a `FreqKVError` into one line on
stderr and its `exit_code`.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1  # an unexpected error (a bug): reported in one line, details with --debug
EXIT_USAGE = 2  # bad flags or arguments (also what Typer/click use)
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
    """The session already holds --ctx tokens."""

    exit_code = EXIT_INPUT
