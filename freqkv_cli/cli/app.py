"""The `freqkv` command: a thin Typer app over the library. Errors become one line + an exit code."""

from __future__ import annotations

import os
import sys

# Read by tqdm when it is first imported (transformers imports it below): the GGUF reader's bar.
# Libraries' own progress bars are for developers (FREQKV_DEBUG=1); users see ours.
if not os.environ.get("FREQKV_DEBUG"):
    os.environ.setdefault("TQDM_DISABLE", "1")

import errno
import functools
import logging
import warnings
from collections.abc import Callable
from dataclasses import fields
from typing import Any

import typer

from ..config import load_config
from ..errors import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OUT_OF_MEMORY,
    EXIT_USAGE,
    FreqKVError,
    OutputError,
    is_out_of_memory,
)
from . import messages
from .defaults import default_map
from .help_format import polish_help
from .messages import as_flags
from .tree import build_app

# Commands whose cache flags resolve against the model (its freqkv.json, its native window).
CACHE_COMMANDS = ("summarize", "qa", "read", "chat", "info")
log = logging.getLogger("freqkv_cli")


def checked_early(command: Callable[..., None]) -> Callable[..., None]:
    """Run the checks that need a model's files but none of its weights before ``command``: a GGUF
    or safetensors file cut short, cache flags the model cannot take (against its config.json or
    GGUF metadata). They come before the minutes a load or a first conversion can take."""
    cache_flags = command.__name__ in CACHE_COMMANDS

    @functools.wraps(command)
    def run_checked(**values: Any) -> None:
        spec = values.get("model")
        if isinstance(spec, str):
            from ..models.early_checks import check_model_files

            check_model_files(spec)
            if cache_flags:
                _check_cache_flags(spec, values)
        command(**values)

    return run_checked


def _check_cache_flags(spec: str, values: dict[str, Any]) -> None:
    from ..memory.file_format import is_memory_file
    from ..models.early_checks import check_cache_settings
    from .options import CacheChoice

    given_paths = values.get("paths") or values.get("inputs") or [values.get("path")]  # qa: inputs
    path = given_paths[0]
    if isinstance(path, str) and path != "-" and is_memory_file(path):
        return  # a saved memory keeps its own settings (and refuses cache flags itself)
    given = {f.name: values[f.name] for f in fields(CacheChoice) if f.init and f.name in values}
    settings = CacheChoice(**given).settings
    for warning in check_cache_settings(
        spec, settings, base=values.get("base"), untuned=bool(values.get("untuned"))
    ):
        log.warning("%s", warning)


# -- messages ------------------------------------------------------------------------------------
class _LineEnd:
    """Standard error, remembering whether what was written last ended its line: a progress
    bar drawn without a terminal leaves the cursor after its last character."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.at_line_start = True

    def write(self, text: str) -> int:
        written = self._stream.write(text)
        if text:
            self.at_line_start = text.endswith(("\n", "\r"))
        return written

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _write_error_line(text: str) -> None:
    stream = sys.stderr
    if stream is None:  # 2>&-: nowhere to say it; the exit code still does
        return
    try:
        if not getattr(stream, "at_line_start", True):
            stream.write("\n")
        stream.write(text + "\n")
        stream.flush()
    except (OSError, ValueError):
        pass


def _fail(message: str, code: int) -> int:
    line = " ".join(as_flags(message).split())  # one line, whatever the message held
    _write_error_line(f"freqkv: error: {line}")
    return code


class _WarningLine(logging.Handler):
    """The library's warnings (a rebuilt model cache, an adapter without freqkv.json), one line each."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        line = " ".join(as_flags(record.getMessage()).split())
        _write_error_line(f"warning: {line}")


def _quiet_libraries(debug: bool) -> None:
    """Library chatter (progress bars, advice) would mix with our stderr readouts."""
    threads = os.environ.get("FREQKV_THREADS")
    if threads and threads.isdigit() and int(threads) > 0:  # e.g. 1 on a busy machine
        if "torch" in sys.modules:  # a library caller, a test
            sys.modules["torch"].set_num_threads(int(threads))
        else:  # read when torch starts, if this run needs it (--help does not)
            os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = threads
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a hub at run time
    if debug:
        return
    warnings.simplefilter("ignore")  # deprecation notes from transformers and torch are for developers
    # Read when transformers is first imported; importing it here would cost `--help` a second.
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "transformers" in sys.modules:  # imported before this run (a library caller, a test)
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


def run(argv: list[str] | None = None) -> int:
    """Run the app; returns the exit code (tests call this)."""
    debug = bool(os.environ.get("FREQKV_DEBUG"))
    stderr = sys.stderr
    if stderr is not None:
        sys.stderr = _LineEnd(stderr)  # type: ignore[assignment]
    handler = _WarningLine()
    log.addHandler(handler)
    # Dependencies that log without a handler of their own (bitsandbytes' "Failed to load CPU
    # gemm_4bit_forward ...") would reach stderr through logging's last resort: not for users.
    unhandled = logging.NullHandler() if not debug else logging.StreamHandler()
    logging.getLogger().addHandler(unhandled)
    try:
        with warnings.catch_warnings():
            code = _run(argv, debug)
    except KeyboardInterrupt:  # a second Ctrl-C while the first one was being reported
        code = _fail("interrupted", EXIT_INTERRUPTED)
    finally:
        messages.end_run()
        logging.getLogger().removeHandler(unhandled)
        log.removeHandler(handler)
        sys.stderr = stderr
    if code == EXIT_INTERRUPTED and argv is None:
        _ignore_interrupts()  # the console script: exiting now, a third Ctrl-C must not make a traceback
    return code


def _ignore_interrupts() -> None:
    import contextlib
    import signal

    with contextlib.suppress(ValueError):  # not the main thread
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run(argv: list[str] | None, debug: bool) -> int:
    try:
        if sys.stdout is None:  # started with >&-: every answer would be lost
            raise OutputError("standard output is closed (>&-): redirect it to a file or to /dev/null")
        _quiet_libraries(debug)
        # standalone_mode=False: Typer returns the exit code of typer.Exit, and of Ctrl-C (130).
        given = sys.argv[1:] if argv is None else argv
        command = polish_help(typer.main.get_command(build_app(given, checked_early)))
        messages.use_flags_of(command)
        defaults = default_map(load_config(), given)  # below flags, env
        result = command(args=argv, prog_name="freqkv", standalone_mode=False, default_map=defaults)
        code = result if isinstance(result, int) else 0
        if code == EXIT_INTERRUPTED:
            return _fail("interrupted", EXIT_INTERRUPTED)
        _flush_stdout()
        return code
    except typer.Exit as exc:  # --help and the like
        return exc.exit_code
    except typer.Abort:
        return _fail("interrupted", EXIT_INTERRUPTED)
    except typer.TyperException as exc:  # click's errors, as typer re-exports them
        if type(exc).__name__ == "NoArgsIsHelpError":  # `freqkv` alone: the help was printed
            return EXIT_USAGE
        return _fail(_usage_message(exc), EXIT_USAGE)  # bad flags: one line, not a usage box
    except FreqKVError as exc:
        if debug:
            raise
        return _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)
    except SystemExit as exc:
        # Typer turns a broken pipe into sys.exit(1) inside its own handler of the OSError.
        if isinstance(exc.__context__, BrokenPipeError):
            return _broken_pipe()
        raise
    except BrokenPipeError:
        return _broken_pipe()
    except OSError as exc:
        if exc.errno in _OUTPUT_ERRNOS:
            _drop_stdout()
            where = f"'{exc.filename}'" if exc.filename else "the output"
            return _fail(f"cannot write {where}: {exc.strerror}", OutputError.exit_code)
        return _internal_error(exc, debug)
    except Exception as exc:
        return _internal_error(exc, debug)


# A full disk, a quota, a read-only file system, a file too large: where the output goes, not a bug.
_OUTPUT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


def _internal_error(exc: BaseException, debug: bool) -> int:
    if is_out_of_memory(exc):
        if "cuda" in str(exc).lower() or "mps" in str(exc).lower():
            # bf16 is already the default on CUDA: what frees memory is fewer weight bytes, weights
            # elsewhere, or a smaller window.
            message = (
                "the GPU ran out of memory: try --quantize int4 (or int8), --device-map auto, "
                "a smaller --window (e.g. half), or --device cpu"
            )
        else:
            message = "out of memory: try a smaller --window or a smaller model"
        return _fail(message, EXIT_OUT_OF_MEMORY)
    if debug:
        raise exc
    first = str(exc).strip().splitlines()
    detail = first[0][:300] if first else ""
    return _fail(f"internal error: {type(exc).__name__}: {detail} (FREQKV_DEBUG=1 shows more)", EXIT_FAILURE)


def _flush_stdout() -> None:
    """Flush now, so that a full disk is reported here and not by the interpreter at exit."""
    if sys.stdout is not None:
        sys.stdout.flush()


def _drop_stdout() -> None:
    """Point standard output at /dev/null: what is still buffered must not fail again at exit."""
    stdout = getattr(sys.stdout, "wrapped", sys.stdout)  # Typer wraps it after a broken pipe
    if stdout is None or stdout is not sys.__stdout__:
        return  # a test's capture: leave it be
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def _broken_pipe() -> int:
    """The reader closed the pipe (e.g. `| head -1`): its choice, not an error, so exit 0."""
    _drop_stdout()
    return 0


def _usage_message(exc: Exception) -> str:
    text = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    message = text.replace("\n", " ")
    param = getattr(exc, "param", None)
    if param is not None and getattr(param, "opts", None):
        hint = "/".join(param.opts)
        if hint not in message:
            message = f"{hint}: {message}"
    return message
