"""The tiktoken twin of a byte-level BPE gives exactly the HF ids, or is not used at all."""

from __future__ import annotations

import json
import random
import site
import sys
from functools import lru_cache
from pathlib import Path

import pytest
from tinymodel import byte_tokenizer
from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from freqkv_cli.models import fast_tokenizer as ft
from freqkv_cli.models.tokenizer import load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
CORPUS_BYTES = 3_200_000

EDGE_CASES = [
    *ft.PROBE_TEXTS,
    " leading space",
    "   three leading spaces",
    "\tleading tab",
    "line one\r\nline two\r\n\r\nline four\r\n",
    "\r\r\n\n\r",
    "1234567",
    " 1234567",
    "1234567890123456789012345678901234567890",
    "3.14159265358979 2.718281828 6.022e23 1e-9 007 0.0",
    "version 1.2.3-rc.4+build.567",
    "café résumé naïve façade jalapeño Ångström Øresund Łódź Dvořák",
    "日本語 中文 한국어 ไทย ລາວ ᠮᠣᠩᠭᠣᠯ ትግርኛ ᏣᎳᎩ",
    "😀😃😄😁😆 👩🏽‍💻 🧑‍🤝‍🧑 🏴󠁧󠁢󠁳󠁣󠁴󠁿 #️⃣ 1️⃣",
    "mixed:αβγ123абв456日本789😀0",
    " " * 100,
    "\n" * 100,
    " \n" * 50,
    "a" + " " * 17 + "b" + "\n" * 17 + "c" + "\t" * 17 + "d",
    "x  \n  y   \n\n   z",
    "word" * 300,
    "-" * 200 + "=" * 200 + "#" * 64,
    "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more text <|im_end|> end",
    "<|im_start<|im_end|>|>",
    "<repo_name><reponame><filename><file_sep><gh_stars>",
    "'s 't 're 've 'm 'll 'd",
    "don't won't it's I'm you're we've they'll he'd O'Neil rock'n'roll",
    "\u00a0nbsp\u2009thin\u202fnarrow\u3000ideographic\u2028line\u2029para\u0085nel",
    "\ufeffBOM at start",
    "ﬁ ﬂ ﬃ ligatures, ＦＵＬＬＷＩＤＴＨ ａｂｃ １２３",
    "𝕳𝖊𝖑𝖑𝖔 𝐁𝐨𝐥𝐝 𝟙𝟚𝟛 𓀀𓀁 𐍈 𝄞",
]

# Characters whose UTF-8 bytes the SmolLM2 vocab lacks: HF drops them, so these texts go to HF.
FALLBACK_CASES = ["a\x04b", "x\x06\x13\x14\x16\x1dy", "ctrl\x04 . \x04. 5\x045", "\U00050000 plane 5"]


@lru_cache(maxsize=1)
def _corpus_files() -> list[Path]:
    packages = Path(site.getsitepackages()[0])
    return sorted(p for ext in ("py", "md", "txt") for p in packages.rglob(f"*.{ext}") if p.is_file())


def corpus(limit: int = CORPUS_BYTES) -> list[str]:
    """The first documents of `_corpus` holding at least `limit` bytes (all of it if smaller)."""
    texts, size = [], 0
    for text in _corpus():
        if size >= limit:
            break
        texts.append(text)
        size += len(text.encode())
    return texts


@lru_cache(maxsize=1)
def _corpus(limit: int = CORPUS_BYTES, per_file: int = 60_000) -> tuple[str, ...]:
    """Botchan, then a spread of the venv's *.py/*.md/*.txt files (every k-th), each cut at `per_file`."""
    texts = [(ROOT / "samples" / "botchan.txt").read_text(encoding="utf-8")]
    size = len(texts[0].encode())
    files = _corpus_files()
    step = max(1, len(files) // 400)
    for offset in range(step):
        for path in files[offset::step]:
            try:
                text = path.read_text(encoding="utf-8")[:per_file]
            except (OSError, UnicodeDecodeError):
                continue
            texts.append(text)
            size += len(text.encode())
            if size >= limit:
                return tuple(texts)
    return tuple(texts)


def fuzz_texts(count: int, seed: int = 0) -> list[str]:
    """Random mixes of letters of many scripts, digits, whitespace runs, punctuation and emoji."""
    rng = random.Random(seed)
    pools = [
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
        "0123456789",
        "0123456789٠١٢٣٤٥٦٧٨٩०१२३४५६७८९½¼²³ⅠⅫ①",
        " ",
        "  \t\n\r\u00a0\u3000\u2003",
        ".,;:!?'\"()[]{}<>/\\|@#$%^&*-_=+~`",
        "'s't're've'm'll'd",
        "àáâãäåæçèéêëìíîïðñòóôõöøùúûüýþÿĀāĂăĄąĆćČčĐđĘęĚěĞğİıŁłŃńŇňŐőŒœŘřŚśŞşŠšŢţŤťŮůŰűŸŹźŻżŽž",
        "абвгдеёжзийклмнопрстуфхцчшщъыьэюяΑΒΓΔαβγδεζηθ",
        "日本語中文字한국어テキストカタカナひらがな漢字",
        "אבגדהוזחטיכלמנסעפצקרשתابتثجحخدذرزسشصضطظعغفقكلمنهوي",
        "नमस्तेदुनियाสวัสดีชาวโลก\u0301\u0308\u200d\u200b",
        "😀😃😄😁😆😅🤣😂🙂🙃😉😊😇🥰😍🤩👍🏽👨‍👩‍👧❤️🇫🇷🚀🤖",
    ]
    texts = []
    for _ in range(count):
        parts = []
        for _ in range(rng.randint(1, 60)):
            pool = rng.choice(pools)
            parts.append("".join(rng.choice(pool) for _ in range(rng.choice((1, 1, 2, 3, 5, 8, 20)))))
        texts.append("".join(parts))
    return texts


def code_point_texts(step: int = 1, per_text: int = 256) -> list[str]:
    """Every `step`-th BMP code point (and a sample of the astral planes) in a few contexts."""
    points = [c for c in range(0x20, 0x10000, step) if not 0xD800 <= c <= 0xDFFF]
    points += list(range(0x10000, 0x40000, 97)) + list(range(0xE0000, 0x110000, 61))
    texts = []
    for start in range(0, len(points), per_text):
        chunk = (chr(c) for c in points[start : start + per_text])
        texts.append("\n".join(f"a{c}{c} 1{c}  {c}.{c}" for c in chunk))
    return texts


@pytest.fixture(scope="module")
def tok() -> object:
    return load_tokenizer("default")


@pytest.fixture(scope="module")
def fast(tok: object) -> ft.FastBPE:
    built = ft.fast_bpe(tok)
    assert built is not None, ft.unsupported_reason(tok)
    return built


def hf_ids(tokenizer: object, texts: list[str]) -> list[list[int]]:
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]  # type: ignore[operator]


def assert_identical(fast: ft.FastBPE, tokenizer: object, texts: list[str]) -> int:
    """Every text through both; returns the bytes compared (fallback texts are not counted)."""
    expected = hf_ids(tokenizer, texts)
    got = fast.encode_batch(texts)
    compared = 0
    for text, want, have in zip(texts, expected, got, strict=True):
        if have is None:
            continue
        assert have == want, f"differs on {text[:80]!r}"
        compared += len(text.encode())
    return compared


def test_default_tokenizer_has_an_exact_tiktoken_twin(tok: object, fast: ft.FastBPE) -> None:
    encoding = ft.tiktoken_from_hf(tok)
    assert encoding is fast.encoding  # cached, ids are the HF ids (SmolLM2's ids follow its merges)
    assert ft.unsupported_reason(tok) is None
    assert fast.rank_to_id is None
    assert encoding.n_vocab >= len(tok)  # type: ignore[arg-type]
    for text in EDGE_CASES:
        assert ft.encode(text, tok) == tok(text, add_special_tokens=False)["input_ids"], repr(text)  # type: ignore[operator]
        assert encoding.encode(text, allowed_special="all") == ft.encode(text, tok)


def test_identical_ids_on_megabytes(tok: object, fast: ft.FastBPE) -> None:
    texts = corpus()
    compared = assert_identical(fast, tok, texts)
    assert compared >= 3_000_000, f"only {compared} bytes of corpus compared"
    # whole documents and the same documents cut in pages (what the streaming engine tokenizes)
    pages = [text[i : i + 3000] for text in texts[:5] for i in range(0, len(text), 3000)]
    assert_identical(fast, tok, pages)


def test_identical_ids_on_every_bmp_code_point_and_fuzz(tok: object, fast: ft.FastBPE) -> None:
    assert_identical(fast, tok, code_point_texts())
    assert_identical(fast, tok, fuzz_texts(1500))


def test_bytes_the_vocab_lacks_go_to_hf(tok: object, fast: ft.FastBPE) -> None:
    for text in FALLBACK_CASES:
        assert fast.encode(text) is None
        assert ft.encode(text, tok) == tok(text, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    mixed = [*EDGE_CASES, *FALLBACK_CASES]
    assert ft.count_tokens(mixed, tok) == sum(len(ids) for ids in hf_ids(tok, mixed))
    assert ft.count_tokens("one text", tok) == len(hf_ids(tok, ["one text"])[0])
    assert ft.count_tokens([], tok) == 0


def _variant(tok: object, pre_tokenizer: dict, **model: object) -> PreTrainedTokenizerFast:
    """The SmolLM2 vocab and merges under another pre-tokenizer / model option."""
    data = json.loads(tok.backend_tokenizer.to_str())  # type: ignore[attr-defined]
    data["pre_tokenizer"] = pre_tokenizer
    data["model"].update(model)
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(data)))


LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}


@pytest.mark.parametrize(
    "pre_tokenizer",
    [
        {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, BYTE_LEVEL]},
        {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": False}, BYTE_LEVEL]},
        {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": LLAMA3_SPLIT},
                    "behavior": "Isolated",
                    "invert": False,
                },
                {**BYTE_LEVEL, "use_regex": False},
            ],
        },
    ],
    ids=["digits-individual", "digit-runs", "llama3-split"],
)
def test_other_pre_tokenizers_are_folded_exactly(tok: object, pre_tokenizer: dict) -> None:
    variant = _variant(tok, pre_tokenizer)
    fast = ft.build(variant)
    texts = [*EDGE_CASES, *fuzz_texts(400, seed=1), *code_point_texts(step=31), *corpus(100_000)]
    assert assert_identical(fast, variant, texts) > 100_000


def _trained_bpe(vocab_size: int = 1500) -> Tokenizer:
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>"],
    )
    backend.train_from_iterator([(ROOT / "samples" / "botchan.txt").read_text(encoding="utf-8")], trainer)
    return backend


def test_ids_out_of_merge_order_are_mapped_back() -> None:
    """RoBERTa-style vocabularies number tokens by frequency, not merge order: ranks come from merges."""
    data = json.loads(_trained_bpe().to_str())
    vocab = data["model"]["vocab"]
    order = sorted(vocab, key=vocab.__getitem__)
    shuffled = order[1:]
    random.Random(0).shuffle(shuffled)
    data["model"]["vocab"] = {token: index for index, token in enumerate([order[0], *shuffled])}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(data)))
    fast = ft.build(tokenizer)
    assert fast.rank_to_id is not None
    assert ft.tiktoken_from_hf(tokenizer) is None  # its token values are not the HF ids
    assert "merge order" in (ft.unsupported_reason(tokenizer) or "")
    texts = [*EDGE_CASES, *fuzz_texts(500, seed=2), *corpus(150_000)]
    assert assert_identical(fast, tokenizer, texts) > 150_000
    assert ft.count_tokens(texts, tokenizer) == sum(len(ids) for ids in hf_ids(tokenizer, texts))


def test_tiny_byte_tokenizer() -> None:
    tokenizer = byte_tokenizer()
    encoding = ft.tiktoken_from_hf(tokenizer)
    assert encoding is not None, ft.unsupported_reason(tokenizer)
    texts = [*EDGE_CASES, "<|im_start|>hi<|im_end|>", *fuzz_texts(200, seed=3)]
    for text, want in zip(texts, hf_ids(tokenizer, texts), strict=True):
        assert encoding.encode(text, allowed_special="all") == want, repr(text)
    assert ft.count_tokens(texts, tokenizer) == sum(len(ids) for ids in hf_ids(tokenizer, texts))


def test_the_cache_follows_added_tokens() -> None:
    tokenizer = byte_tokenizer()
    first = ft.tiktoken_from_hf(tokenizer)
    assert first is not None and ft.tiktoken_from_hf(tokenizer) is first
    tokenizer.add_tokens(["<new>"], special_tokens=True)
    second = ft.tiktoken_from_hf(tokenizer)
    assert second is not None and second is not first
    text = "a<new>b"
    ids = ft.encode(text, tokenizer)
    assert ids == hf_ids(tokenizer, [text])[0]
    assert len(ids) == 3 and ids[1] == tokenizer.convert_tokens_to_ids("<new>")


@pytest.mark.parametrize(
    ("added", "ok"),
    [
        ([{"content": "<a>", "normalized": False}, {"content": "<b>", "normalized": True}], True),
        ([{"content": "ab"}, {"content": "abc"}], False),
        ([{"content": "ab", "normalized": False}, {"content": "xaby", "normalized": True}], False),
        ([{"content": "ab", "normalized": False}, {"content": "bc", "normalized": True}], False),
        ([{"content": "ab", "normalized": False}, {"content": "bc", "normalized": False}], True),
    ],
)
def test_added_token_matching_must_agree(added: list[dict], ok: bool) -> None:
    if ok:
        ft._check_added_tokens(added)
    else:
        with pytest.raises(ft.Unsupported):
            ft._check_added_tokens(added)


def _word_level() -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.WordLevel(vocab={"[UNK]": 0, "hello": 1, "world": 2}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")


def _metaspace_bpe() -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.BPE(vocab={"▁": 0, "a": 1, "▁a": 2}, merges=[("▁", "a")]))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    return PreTrainedTokenizerFast(tokenizer_object=backend)


def _normalized_byte_level() -> PreTrainedTokenizerFast:
    tokenizer = byte_tokenizer()
    tokenizer.backend_tokenizer.normalizer = normalizers.NFC()
    return tokenizer


def _prefix_space_byte_level() -> PreTrainedTokenizerFast:
    tokenizer = byte_tokenizer()
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    return tokenizer


def _lstrip_added_token() -> PreTrainedTokenizerFast:
    tokenizer = byte_tokenizer()
    tokenizer.add_tokens([AddedToken("<mask>", lstrip=True)], special_tokens=True)
    return tokenizer


def _prefix_added_tokens() -> PreTrainedTokenizerFast:
    tokenizer = byte_tokenizer()
    tokenizer.add_tokens(["<|im_start|>x"], special_tokens=True)  # HF: longest match; tiktoken: first
    return tokenizer


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (_word_level, "WordLevel"),
        (_metaspace_bpe, "Metaspace"),
        (_normalized_byte_level, "normalizer"),
        (_prefix_space_byte_level, "add_prefix_space"),
        (_lstrip_added_token, "lstrip"),
        (_prefix_added_tokens, "prefix"),
    ],
)
def test_tokenizers_it_cannot_reproduce_give_none(make: object, reason: str) -> None:
    tokenizer = make()  # type: ignore[operator]
    assert ft.tiktoken_from_hf(tokenizer) is None
    assert reason in (ft.unsupported_reason(tokenizer) or "")
    texts = ["hello world", "a a", "café", "x <mask> <|im_start|>x <|im_start|>y"]
    assert ft.count_tokens(texts, tokenizer) == sum(len(ids) for ids in hf_ids(tokenizer, texts))
    assert ft.encode("hello world", tokenizer) == hf_ids(tokenizer, ["hello world"])[0]


def test_a_probe_mismatch_makes_it_unused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail safe: if the twin differs from HF anywhere on the probe, it is not built."""
    variant = byte_tokenizer()
    real = ft._hf_encode_batch
    monkeypatch.setattr(ft, "_hf_encode_batch", lambda t, texts: [[*ids, 0] for ids in real(t, texts)])
    assert ft.tiktoken_from_hf(variant) is None
    assert "differs" in (ft.unsupported_reason(variant) or "")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
