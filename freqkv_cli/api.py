"""The Python API: summarize, ask and chat in a few calls, with the model loaded once.

    import freqkv_cli as freqkv

    print(freqkv.summarize("samples/botchan.txt", max_new_tokens=80))
    model = freqkv.load("default", window=1024)              # load once, use many times
    for piece in model.ask("report.pdf", "Who signed it?", stream=True):
        print(piece, end="", flush=True)
    chat = model.chat("samples/botchan.txt")
    print(chat.say("Who is the narrator?"))
    chat.save("botchan.fkv")                                 # freqkv chat botchan.fkv goes on

Documents are paths (text, PDF, ..., or a memory file kept by ``freqkv read`` or ``save``);
answers are text. ``stream=True`` gives an iterator of text pieces as they are generated.
Nothing is printed: no progress bars, no readouts; errors are :mod:`freqkv_cli.errors`
exceptions. The config file is not read: what is not passed takes the built-in default.
The CLI's chat answers through :meth:`Chat.reply`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .engine.chunk_size import DEFAULT_MAX_CHUNK
from .errors import UsageError
from .session.threaded import threaded_pieces
from .sizes import parse_size

# What load() takes; the other keyword arguments of summarize() and ask() are for answering.
LOAD_OPTIONS = ("model", "window", "cache", "ctx", "sink", "recent", "ratio", "exact", "device", "dtype")
LOAD_OPTIONS += ("base", "untuned", "trust_remote_code", "quantize", "device_map", "max_memory", "max_chunk")


@dataclass
class Answering:
    """How answers are generated (the CLI's defaults)."""

    max_new_tokens: int = 400
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    repetition_penalty: float = 1.1

    def sampler(self) -> Any:
        from .engine.sampling import Sampler

        return Sampler(
            temperature=self.temperature,
            top_p=self.top_p,
            seed=self.seed,
            repetition_penalty=self.repetition_penalty,
        )


@dataclass
class Reply:
    """One answer: its text, the tokens before it and in it, why it ended, how long it took."""

    text: str
    tokens_in: int
    tokens_out: int
    stop_reason: str  # eos, max_new_tokens, interrupted, ...
    seconds: float


def _quiet() -> None:
    """No progress bars from the libraries below (tqdm reads TQDM_DISABLE when first imported)."""
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a hub
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _size(value: int | str | None, name: str) -> int | None:
    if value is None or isinstance(value, int):
        return value
    try:
        return parse_size(value)
    except UsageError:
        raise UsageError(f"`{name}` {value!r} is not a size such as 4096 or '4k'") from None


class Model:
    """A model loaded once, with the cache settings every document and chat of it uses."""

    def __init__(
        self, loaded: Any, settings: Any, ctx: int | None, max_chunk: int = DEFAULT_MAX_CHUNK
    ) -> None:
        self.loaded = loaded  # a freqkv_cli.models.loaded.LoadedModel
        self.settings = settings  # CacheSettings: resolved against the model per session
        self.ctx = ctx
        self.max_chunk = max_chunk  # most tokens one forward call reads

    @property
    def name(self) -> str:
        return str(self.loaded.name)

    def session(self, system: str | None = None) -> Any:
        """A fresh :class:`~freqkv_cli.session.session.Session` under this model's cache settings."""
        from .session.session import Session

        policy = self.loaded.cache_policy(self.settings)
        return Session(self.loaded, policy, ctx=self.ctx, system=system, max_chunk=self.max_chunk)

    def summarize(
        self, path: str | os.PathLike[str], *, stream: bool = False, **options: Any
    ) -> str | Iterator[str]:
        """The summary of the document at ``path`` (``stream``: an iterator of its pieces).
        ``options``: ``pages``, ``password``, ``system``, and :class:`Answering`'s fields."""
        return self._task(path, "summarize", None, stream, options)

    def ask(
        self, path: str | os.PathLike[str], question: str, *, stream: bool = False, **options: Any
    ) -> str | Iterator[str]:
        """The answer to ``question`` about the document at ``path``. ``options``: as
        :meth:`summarize`, plus ``reread`` (passages quoted before the question, 8) and
        ``recall`` (how a memory file's passages are found, ``both``)."""
        if not question.strip():
            raise UsageError("`question` is empty")
        return self._task(path, "qa", question.strip(), stream, options)

    def chat(
        self,
        *paths: str | os.PathLike[str],
        system: str | None = None,
        pages: str | None = None,
        password: str | None = None,
        **options: Any,
    ) -> Chat:
        """A conversation, about the documents at ``paths`` (read first, in order, with ``pages``
        and ``password`` for PDFs) if any; a memory file as the first path goes on from it.
        ``options``: :class:`Answering`'s fields."""
        chat = Chat(self, system=system, **options)
        for path in paths:
            chat.read(path, pages=pages, password=password)
        return chat

    def _task(
        self, path: str | os.PathLike[str], task: str, question: str | None, stream: bool, options: dict
    ) -> str | Iterator[str]:
        pages, password = options.pop("pages", None), options.pop("password", None)
        system = options.pop("system", None)
        reread = int(options.pop("reread", 8 if task == "qa" else 0))
        recall_method = options.pop("recall", None)
        answering = _answering(options, max_new_tokens=200 if task == "qa" else 400)
        session = read_for_task(
            self, path, task, question, answering, pages, password, system, reread, recall_method
        )
        if stream:
            return _streamed(session, answering)
        return session.generate(max_new_tokens=answering.max_new_tokens, sampler=answering.sampler()).text


def read_for_task(
    model: Model,
    path: str | os.PathLike[str],
    task: str,
    question: str | None,
    answering: Answering,
    pages: str | None = None,
    password: str | None = None,
    system: str | None = None,
    reread: int = 0,
    recall_method: str | None = None,
) -> Any:
    """A session that has read ``path`` for ``task`` (``summarize``, ``qa``) and waits for the
    answer: a document is read with the question before and after it; a memory file is loaded
    and the passages recalled for the question are quoted before it."""
    from .documents import open_document
    from .memory.file_format import is_memory_file
    from .memory.recall import DEFAULT_RECALL, answer_from_memory
    from .memory.saved import load_session

    if is_memory_file(path):  # the same path as the commands take
        session = load_session(model.loaded, path, ctx=model.ctx, max_chunk=model.max_chunk).session
        answer_from_memory(session, task, question, reread, recall_method or DEFAULT_RECALL)
        return session
    document = open_document(path, password=password, pages=pages)
    session = model.session(system)
    session.read_document(
        document, task=task, question=question, reserve=answering.max_new_tokens, reread=reread
    )
    return session


def _answering(options: dict, **defaults: Any) -> Answering:
    values = {**defaults, **options}
    unknown = sorted(set(values) - set(Answering.__dataclass_fields__))
    if unknown:
        raise UsageError(f"unknown option {', '.join(f'`{name}`' for name in unknown)}")
    return Answering(**values)


def _streamed(session: Any, answering: Answering) -> Iterator[str]:
    def produce(on_text: Callable[[str], None], should_stop: Callable[[], bool]) -> None:
        session.generate(
            max_new_tokens=answering.max_new_tokens,
            sampler=answering.sampler(),
            on_text=on_text,
            should_stop=should_stop,
        )

    return threaded_pieces(produce)


class Chat:
    """A conversation held in the compressed cache: :meth:`read` documents, :meth:`say` things.

    ``log``: a :class:`~freqkv_cli.logs.ConversationLog` that keeps each exchange (the CLI's);
    None keeps nothing. ``options``: :class:`Answering`'s fields (settable later on
    :attr:`answering`)."""

    def __init__(
        self,
        model: Model,
        *,
        system: str | None = None,
        session: Any = None,
        log: Any = None,
        **options: Any,
    ) -> None:
        self.model = model
        self.session = session if session is not None else model.session(system)
        self.answering = _answering(options)
        self.log = log

    @classmethod
    def resume(cls, model: Model, path: str | os.PathLike[str], **options: Any) -> Chat:
        """Go on from a memory file (``freqkv read``, ``save``)."""
        from .memory.saved import load_session

        session = load_session(model.loaded, path, ctx=model.ctx, max_chunk=model.max_chunk).session
        if session.open_task is not None:  # read by `freqkv read`: the document's turn ends here
            session.finish_document(session.open_task)
        return cls(model, session=session, **options)

    def read(
        self,
        path: str | os.PathLike[str],
        *,
        pages: str | None = None,
        password: str | None = None,
        on_progress: Callable[[Any], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Any:
        """Read a document into the conversation; returns its ReadReport. A memory file (only as
        the first thing read) replaces the conversation with the saved one."""
        from .documents import open_document
        from .memory.file_format import is_memory_file

        if is_memory_file(path):
            if self.session.tokens_held:
                raise UsageError(f"{path} is a saved conversation: only a fresh chat can go on from it")
            self.session = Chat.resume(self.model, path).session
            return None
        document = open_document(path, password=password, pages=pages)
        return self.session.read_document(
            document, task="read", on_progress=on_progress, should_stop=should_stop
        )

    def say(self, text: str, *, stream: bool = False) -> str | Iterator[str]:
        """The answer to ``text`` (``stream``: an iterator of its pieces)."""
        if not stream:
            return self.reply(text).text
        return threaded_pieces(lambda on_text, stop: self.reply(text, on_text=on_text, should_stop=stop))

    def reply(
        self,
        text: str,
        *,
        on_text: Callable[[str], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Reply:
        """One exchange: ``text`` as the user's turn, the model's answer (each piece to
        ``on_text`` as it comes), logged when the chat has a log."""
        started = time.perf_counter()
        self.session.add_user_turn(text, should_stop=should_stop)
        tokens_in = self.session.tokens_held
        result = self.session.generate(
            max_new_tokens=self.answering.max_new_tokens,
            sampler=self.answering.sampler(),
            on_text=on_text,
            should_stop=should_stop,
        )
        reply = Reply(
            result.text, tokens_in, len(result.token_ids), result.stop_reason, time.perf_counter() - started
        )
        if self.log is not None:
            self.log.record(
                self.session,
                text,
                reply.text,
                tokens_in=reply.tokens_in,
                tokens_out=reply.tokens_out,
                stop_reason=reply.stop_reason,
                seconds=reply.seconds,
                options=vars(self.answering),
            )
        return reply

    def clear(self) -> int:
        """Forget the conversation, keep the documents (see ``Session.clear_conversation``)."""
        return int(self.session.clear_conversation())

    def reset(self) -> None:
        """Forget everything: the documents too."""
        self.session.reset()

    def save(self, path: str | os.PathLike[str]) -> None:
        """Keep the whole conversation (documents and turns) in a memory file, atomically."""
        from .memory.saved import save_session

        save_session(self.session, Path(path))


def load(
    model: str = "default",
    *,
    window: int | str | None = None,
    cache: str = "hybrid",
    ctx: int | str | None = None,
    sink: int | None = None,
    recent: int | None = None,
    ratio: float | None = None,
    exact: float | None = None,
    device: str = "auto",
    dtype: str = "auto",
    base: str | None = None,
    untuned: bool = False,
    trust_remote_code: bool = False,
    quantize: str | None = None,
    device_map: str | None = None,
    max_memory: str | None = None,
    max_chunk: int = DEFAULT_MAX_CHUNK,
) -> Model:
    """Load ``model`` (``default``, a model folder, a .gguf file or an adapter folder) once, with
    the cache settings its documents and chats use (None: the checkpoint's, else the model's).
    ``quantize``, ``device_map``, ``max_memory`` and ``max_chunk`` are the CLI's ``--quantize``
    (int8, int4), ``--device-map``, ``--max-memory`` and ``--max-chunk``."""
    _quiet()
    from .cache.policy import CacheSettings
    from .models.loading import load_model

    settings = CacheSettings(
        kind=cache, window=_size(window, "window"), sink=sink, recent=recent, ratio=ratio, exact=exact
    )
    settings.check()  # before the minutes a first load can take
    if not (isinstance(max_chunk, int) and max_chunk >= 1):
        raise UsageError(f"`max_chunk` {max_chunk!r} must be a whole number of tokens, 1 or more")
    loaded = load_model(
        model,
        device=device,
        dtype=dtype,
        base=base,
        trust_remote_code=trust_remote_code,
        untuned=untuned,
        quantize=quantize,
        device_map=device_map,
        max_memory=max_memory,
    )
    return Model(loaded, settings, _size(ctx, "ctx"), max_chunk)


def _split(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    loading = {key: options.pop(key) for key in LOAD_OPTIONS if key in options}
    return loading, options


def summarize(path: str | os.PathLike[str], *, stream: bool = False, **options: Any) -> str | Iterator[str]:
    """Load a model (``options`` of :func:`load`) and summarize the document at ``path``."""
    loading, rest = _split(options)
    return load(**loading).summarize(path, stream=stream, **rest)


def ask(
    path: str | os.PathLike[str], question: str, *, stream: bool = False, **options: Any
) -> str | Iterator[str]:
    """Load a model (``options`` of :func:`load`) and answer ``question`` about ``path``."""
    loading, rest = _split(options)
    return load(**loading).ask(path, question, stream=stream, **rest)


def stream_summarize(path: str | os.PathLike[str], **options: Any) -> Iterator[str]:
    return summarize(path, stream=True, **options)  # type: ignore[return-value]


def stream_ask(path: str | os.PathLike[str], question: str, **options: Any) -> Iterator[str]:
    return ask(path, question, stream=True, **options)  # type: ignore[return-value]
