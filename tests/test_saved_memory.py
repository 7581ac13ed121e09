"""A read document saved and asked later: the same answer as asking right after reading."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import FAMILIES
from tinymodel import save_tiny_model

from freqkv_cli.cache.policy import CachePolicy
from freqkv_cli.documents.document import Document
from freqkv_cli.errors import InputError, ModelError
from freqkv_cli.evaluation.needle import text_document
from freqkv_cli.memory.recall import RECALL_METHODS, recall
from freqkv_cli.memory.saved import load_session, save_session
from freqkv_cli.models.loading import load_model
from freqkv_cli.session.session import Session

BOOK = " ".join(
    f"Chapter {i}. The river ran past mill number {i * 7 % 13} while the ferryman sang." for i in range(60)
)
BOOK = BOOK[:2000] + " The ferryman was called Oskar Brandvold. " + BOOK[2000:]
QUESTION = "What was the ferryman called?"
POLICY = CachePolicy(kind="hybrid", window=256, sink=4, recent=32, ratio=0.5, exact=0.25)

ASK = r"""
import json, sys, torch
sys.path.insert(0, {tests!r})
from freqkv_cli.memory.recall import recall
from freqkv_cli.memory.saved import load_session
from freqkv_cli.models.loading import load_model
torch.manual_seed(0)
loaded = load_model({model!r}, device="cpu", dtype="float32")
memory = load_session(loaded, {path!r})
session = memory.session
session.finish_document("qa", {question!r}, passages=recall(session, {question!r}, 3, {method!r}))
logits = session.engine.next_logits()[0]
result = session.generate(max_new_tokens=12)
print(json.dumps({{"tokens": result.token_ids, "logits": logits.tolist()}}))
"""


def read_and_save(folder: Path, path: Path, policy: CachePolicy, text: str = BOOK) -> Session:
    loaded = load_model(str(folder), device="cpu", dtype="float32")
    session = Session(loaded, policy)
    session.read_document(text_document(text), task="read", finish=False)
    save_session(session, path)
    return session


def ask_here(session: Session, method: str) -> tuple[list[int], torch.Tensor]:
    session.finish_document("qa", QUESTION, passages=recall(session, QUESTION, 3, method))
    logits = session.engine.next_logits()[0]
    return session.generate(max_new_tokens=12).token_ids, logits


@pytest.mark.parametrize("family", FAMILIES)
def test_a_saved_memory_answers_in_a_new_process_as_it_would_right_after_reading(
    tmp_path: Path, family: str
) -> None:
    folder = save_tiny_model(tmp_path / "model", family)
    path = tmp_path / "book.fkv"
    session = read_and_save(folder, path, POLICY)
    assert session.stats().compressions > 5
    tokens, logits = ask_here(session, "both")
    script = ASK.format(
        tests=str(Path(__file__).parent), model=str(folder), path=str(path), question=QUESTION, method="both"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    other = json.loads(out.stdout)
    assert other["tokens"] == tokens
    torch.testing.assert_close(torch.tensor(other["logits"]), logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["freqkv", "sink", "full"])
@pytest.mark.parametrize("method", RECALL_METHODS)
def test_every_policy_and_recall_method_goes_on_where_it_stopped(
    tmp_path: Path, kind: str, method: str
) -> None:
    folder = save_tiny_model(tmp_path / "model")
    path = tmp_path / "book.fkv"
    session = read_and_save(folder, path, POLICY.with_(kind=kind))
    tokens, logits = ask_here(session, method)
    again = load_session(session.loaded, path).session
    other_tokens, other_logits = ask_here(again, method)
    assert other_tokens == tokens
    torch.testing.assert_close(other_logits, logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["tokens", "words", "both"])
def test_lexical_recall_quotes_the_sentence_that_answers(tmp_path: Path, method: str) -> None:
    folder = save_tiny_model(tmp_path / "model")
    session = read_and_save(folder, tmp_path / "book.fkv", POLICY)
    quoted = [session.tokenizer.decode(ids) for ids in recall(session, QUESTION, 3, method)]
    assert any("Oskar Brandvold" in text for text in quoted), quoted
    for text in quoted:  # byte tokens: each passage is a piece of the book
        assert text in BOOK


def test_the_kv_part_of_a_memory_is_the_window_whatever_the_length(tmp_path: Path) -> None:
    folder = save_tiny_model(tmp_path / "model")
    sizes = {}
    for repeats in (2, 8):
        path = tmp_path / f"book{repeats}.fkv"
        read_and_save(folder, path, POLICY.with_(kind="freqkv"), " ".join([BOOK] * repeats))
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            kv = sum(f.get_tensor(k).nbytes for k in f.keys() if ".layer." in k)  # noqa: SIM118 - safe_open is no mapping
            ids = f.get_tensor("document_ids")
        sizes[repeats] = kv
        assert ids.element_size() <= 4 and ids.numel() >= len(" ".join([BOOK] * repeats).encode()) - 1
    window_bytes = 2 * 2 * 2 * POLICY.window * 16 * 4  # layers x (K, V) x KV heads x N x head_dim x fp32
    assert 0.9 * window_bytes < sizes[2] <= window_bytes and 0.9 * window_bytes < sizes[8] <= window_bytes


def test_a_memory_of_another_model_is_refused_and_left_alone(tmp_path: Path) -> None:
    folder = save_tiny_model(tmp_path / "model")
    path = tmp_path / "book.fkv"
    read_and_save(folder, path, POLICY)
    before = path.read_bytes()
    other = load_model(str(save_tiny_model(tmp_path / "other", seed=1)), device="cpu", dtype="float32")
    with pytest.raises(ModelError, match="another model"):
        load_session(other, path)
    truncated = tmp_path / "cut.fkv"
    truncated.write_bytes(before[: len(before) // 2])
    with pytest.raises(InputError):
        load_session(load_model(str(folder), device="cpu", dtype="float32"), truncated)
    assert path.read_bytes() == before


def test_documents_are_recorded_with_their_hash(tmp_path: Path) -> None:
    folder = save_tiny_model(tmp_path / "model")
    path = tmp_path / "book.fkv"
    session = read_and_save(folder, path, POLICY)
    loaded = load_session(session.loaded, path)
    assert loaded.header.documents == session.documents
    assert loaded.session.documents[0]["tokens"] == len(session.document_ids)
    assert isinstance(text_document(BOOK), Document)
