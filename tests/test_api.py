"""The Python API: summarize, ask, streams, a Chat, one model loaded once; cheap to import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import freqkv_cli
from freqkv_cli.errors import UsageError


@pytest.fixture(scope="module")
def model(tiny: str) -> freqkv_cli.Model:
    return freqkv_cli.load(tiny, window=256, device="cpu")


def test_importing_the_package_imports_no_torch() -> None:
    code = "import sys, freqkv_cli; freqkv_cli.__version__; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_ask_and_summarize_give_text_and_streams_give_the_same_pieces(model, doc: Path) -> None:
    answer = model.ask(doc, "Who is the narrator?", max_new_tokens=6)
    assert isinstance(answer, str) and answer
    pieces = list(model.ask(doc, "Who is the narrator?", max_new_tokens=6, stream=True))
    assert len(pieces) >= 1 and "".join(pieces) == answer  # greedy: the same answer, in pieces
    summary = model.summarize(doc, max_new_tokens=4)
    assert isinstance(summary, str) and summary


def test_module_level_calls_load_the_model_themselves(tiny: str, doc: Path, capfd) -> None:
    text = freqkv_cli.summarize(doc, model=tiny, window=256, device="cpu", max_new_tokens=3)
    streamed = "".join(freqkv_cli.stream_ask(doc, "Why?", model=tiny, window="256", max_new_tokens=3))
    assert text and streamed
    captured = capfd.readouterr()
    assert captured.out == "" and "it/s" not in captured.err  # nothing printed, no progress bars


def test_a_stream_left_early_stops_the_generation(model, doc: Path) -> None:
    stream = model.ask(doc, "Tell me everything.", max_new_tokens=200, stream=True)
    first = next(iter(stream))
    stream.close()  # the thread stops at the next token and is joined
    assert first


def test_chat_reads_says_clears_and_saves(model, doc: Path, tmp_path: Path) -> None:
    chat = model.chat(doc, max_new_tokens=5)
    first = chat.say("Hello?")
    assert isinstance(first, str)
    assert "".join(chat.say("And then?", stream=True))
    assert chat.clear() == 0 and chat.say("Hello?") == first  # back to just after the reading
    memory = tmp_path / "chat.fkv"
    chat.save(memory)
    again = freqkv_cli.Chat.resume(model, memory, max_new_tokens=5)
    assert again.session.documents[0]["sha256"] == chat.session.documents[0]["sha256"]
    assert again.say("What now?") == chat.say("What now?")  # the same conversation goes on


def test_bad_options_are_refused_in_our_words(model, doc: Path) -> None:
    with pytest.raises(UsageError, match="unknown option `temprature`"):
        model.ask(doc, "q", temprature=0.5)
    with pytest.raises(UsageError, match="`window`"):
        freqkv_cli.load("default", window="lots")
    with pytest.raises(UsageError, match="question"):
        model.ask(doc, "  ")


def test_load_quantizes_and_bounds_each_forward_as_the_cli_does(
    doc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bitsandbytes as bnb
    from tinymodel import save_quantizable_model

    from freqkv_cli.engine.streaming import StreamingEngine

    monkeypatch.setenv("FREQKV_HOME", str(tmp_path / "home"))
    folder = save_quantizable_model(tmp_path / "model")
    model = freqkv_cli.load(str(folder), window=512, device="cpu", quantize="int8", max_chunk=40)
    quantized = [m for m in model.loaded.model.modules() if isinstance(m, bnb.nn.Linear8bitLt)]
    assert len(quantized) == 7 * model.loaded.model.config.num_hidden_layers  # q k v o gate up down
    sizes: list[int] = []
    forward = StreamingEngine._forward

    def counted(self: StreamingEngine, ids: list[int]) -> object:
        sizes.append(len(ids))
        return forward(self, ids)

    monkeypatch.setattr(StreamingEngine, "_forward", counted)
    assert isinstance(model.ask(doc, "Who is the narrator?", max_new_tokens=3), str)
    assert max(sizes) == 40 and sum(sizes) > 1000  # the document read 40 tokens at a time at most
    with pytest.raises(UsageError, match="`max_chunk`"):
        freqkv_cli.load(str(folder), device="cpu", max_chunk=0)
