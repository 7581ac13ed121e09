"""The `freqkv` command: a thin Typer app over the library. Errors become one line + an exit code."""

from __future__ import annotations

import os
import sys

import typer

try:  # typer >= 0.16 vendors click; older versions use click itself
    from typer import _click  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover
    import click as _click

from ..errors import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OUT_OF_MEMORY,
    EXIT_USAGE,
    FreqKVError,
)
from .commands.calibrate import calibrate
from .commands.chat import chat
from .commands.count import count
from .commands.eval_needle import needle
from .commands.eval_ppl import ppl
from .commands.finetune import finetune
from .commands.info import info
from .commands.qa import qa
from .commands.spectrum import spectrum
from .commands.summarize import summarize

EPILOG = (
    "Exit codes: 0 ok · 1 internal error · 2 usage · 3 unreadable input · 4 model · 5 out of memory · "
    "130 interrupted. FREQKV_DEBUG=1 shows tracebacks; FREQKV_THREADS=N sets CPU threads."
)

app = typer.Typer(
    name="freqkv",
    help="Read, summarize, question and chat with documents far longer than a model's window, "
    "in constant memory (FreqKV: the KV cache is compressed in the frequency domain whenever it fills). "
    "Answers go to stdout; progress and memory readouts to stderr.",
    epilog=EPILOG,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
eval_app = typer.Typer(
    help="Measure what a cache policy costs on your model and text: long-text perplexity (ppl) "
    "and needle-in-a-haystack retrieval (needle), every policy side by side.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
for command in (summarize, qa, chat, count, info, spectrum, finetune, calibrate):
    app.command(epilog=EPILOG)(command)
for command in (ppl, needle):
    eval_app.command(epilog=EPILOG)(command)
app.add_typer(eval_app, name="eval")


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"freqkv: error: {message}\n")
    return code


def _quiet_libraries() -> None:
    """Library chatter (progress bars, advice) would mix with our stderr readouts."""
    threads = os.environ.get("FREQKV_THREADS")
    if threads and threads.isdigit() and int(threads) > 0:  # e.g. 1 on a busy machine
        import torch

        torch.set_num_threads(int(threads))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TQDM_DISABLE", "1")  # the GGUF reader's own progress bar
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a hub at run time
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def run(argv: list[str] | None = None) -> int:
    """Run the app; returns the exit code (tests call this)."""
    debug = bool(os.environ.get("FREQKV_DEBUG"))
    _quiet_libraries()
    try:
        app(args=argv, prog_name="freqkv", standalone_mode=False)
        return 0
    except typer.Exit as exc:  # --help and the like
        return exc.exit_code
    except typer.Abort:
        return _fail("interrupted", EXIT_INTERRUPTED)
    except _click.exceptions.NoArgsIsHelpError:  # `freqkv` alone: the help was printed
        return EXIT_USAGE
    except _click.exceptions.ClickException as exc:  # bad flags: one line, not a usage box
        return _fail(_usage_message(exc), EXIT_USAGE)
    except FreqKVError as exc:
        if debug:
            raise
        return _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)
    except BrokenPipeError:
        # A closed pipe (e.g. `| head`) is the reader's choice, not an error.
        sys.stderr.close()
        return 0
    except MemoryError:
        return _fail("out of memory: try a smaller --window or a smaller model", EXIT_OUT_OF_MEMORY)
    except Exception as exc:
        if _is_device_oom(exc):
            return _fail(
                "the GPU ran out of memory: try a smaller --window (e.g. half), --dtype bfloat16, "
                "or --device cpu",
                EXIT_OUT_OF_MEMORY,
            )
        if debug:
            raise
        first = str(exc).strip().splitlines()
        detail = first[0][:300] if first else ""
        return _fail(
            f"internal error: {type(exc).__name__}: {detail} (FREQKV_DEBUG=1 shows more)", EXIT_FAILURE
        )


def _usage_message(exc: Exception) -> str:
    message = exc.format_message().replace("\n", " ")  # type: ignore[attr-defined]
    param = getattr(exc, "param", None)
    if param is not None and getattr(param, "opts", None):
        hint = "/".join(param.opts)
        if hint not in message:
            message = f"{hint}: {message}"
    return message


def _is_device_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()
