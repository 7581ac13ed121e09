"""An exact, offline `tiktoken` twin of a Hugging Face byte-level BPE tokenizer.

`tiktoken_from_hf(tokenizer)` reads the tokenizer's own `tokenizer.json` (vocab, merges, pre-tokenizer,
added tokens) and builds a `tiktoken.Encoding` from it: nothing is downloaded, tiktoken's stock
encodings are never touched. The Encoding gives the same ids as
`tokenizer(text, add_special_tokens=False)["input_ids"]`, only faster.

Exactness is the contract, so everything that could make the two disagree is refused (the function
returns None and `unsupported_reason` says why), and what is built is checked before it is handed out:

* the model must be a plain byte-level BPE: no normalizer, no dropout, no byte fallback, no subword
  prefix/suffix; the pre-tokenizer ByteLevel (its GPT-2 regex), Digits + ByteLevel (digits folded into
  the regex) or Split(regex) + ByteLevel(use_regex=False) (the Split regex as is);
* tiktoken merges the adjacent pair whose concatenation has the lowest rank; HF merges the pair of
  lowest merge index. The ranks are the token ids when the ids follow the merge order (GPT-2, SmolLM2,
  Llama 3, Qwen 2 ...), else they are derived from the merge list and mapped back to ids;
* a vocab token that HF's BPE cannot reach from its own bytes is left out (tiktoken would emit it for
  a piece spelling it exactly; HF never emits it), unless the model has `ignore_merges` (then HF
  emits it too);
* added tokens are matched like HF does (before pre-tokenization) only if none has lstrip, rstrip or
  single_word and none is a prefix of another (HF takes the longest match, tiktoken the first);
* a byte missing from the vocab (HF silently drops it, SmolLM2 lacks 21 of 256, e.g. \\x04) and lone
  surrogates cannot be reproduced: texts holding such characters go to the HF tokenizer
  (`encode` and `count_tokens` do this); the Encoding alone gives placeholder ids above the vocab
  for them;
* the built Encoding must match HF on a probe of edge cases (scripts, digits, whitespace runs,
  emoji, specials) or it is dropped.

The result is cached per tokenizer object (building takes about a second for a 49k vocab).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import re
import threading
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import tiktoken

log = logging.getLogger(__name__)

# tokenizers' ByteLevel pre-tokenizer regex (pre_tokenizers/byte_level.rs), verbatim.
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"

# Digits(individual_digits=True) + ByteLevel(use_regex=True): Digits first cuts the text at every
# numeric character (Rust `char::is_numeric`, i.e. \p{N}), then the GPT-2 regex runs on each piece.
# Folded into one regex: a number is one character (no leading space: the space belongs to the
# piece before it), and a whitespace run followed by a digit ends its piece, so `(?!\S)` must
# accept a digit after it.
GPT2_DIGITS_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?![^\s\p{N}])|\s+"
# Digits(individual_digits=False) + ByteLevel: digit runs are their own pieces.
GPT2_DIGIT_RUNS_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?![^\s\p{N}])|\s+"

# Edge cases every built Encoding must reproduce before it is used.
PROBE_TEXTS: tuple[str, ...] = (
    "Hello, world! It's a test: we'll see, they've done it, I'm sure, you'd know, they're here.",
    "  leading spaces\tand\ttabs\n\n\nnew lines\r\nwindows\r\n\r\n   \n  trailing   ",
    "numbers 1234567 3.14159 1,000,000 -42 +7e-10 0x1F 2024-01-31 12:30:45 ½ ² Ⅻ ٣٤٥ ९८",
    "accents: café naïve résumé Ærøskøbing Straße ĳssel œuvre Ça İstanbul ǅ",
    "CJK: 日本語のテキストです。中文文本，标点符号！한국어 텍스트입니다. 〇〻",
    "emoji: 😀👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 ❤️ 🇫🇷 ✔︎ 🤖🚀",
    "mixed: Привет мир, γειά σου κόσμε, שלום עולם, مرحبا بالعالم, नमस्ते दुनिया, สวัสดีชาวโลก",
    "code:\n    def f(x):\n        return x**2  # comment\n\tif a!=b and c<=d: pass\n}}]]))",
    "spaces" + " " * 37 + "end" + "\n" * 9 + "x" + " \n" * 5 + "\t \t" + "\u3000\u00a0\u2003|",
    "combining: e\u0301 n\u0303 \u1100\u1161\u11a8 zero\u200bwidth\u200d joiner \ufeffbom \u00ad",
    "quotes ‘single’ “double” «guillemets» — dashes – and … ellipsis ‹›",
    "'s 't 're 've 'm 'll 'd 'S 'T 'RE 'x ''s",
    "ALL CAPS and MiXeD cAsE WORDS, snake_case camelCase kebab-case PascalCase",
    "math ∀x∈ℝ: x² ≥ 0 ∑ ∫ √2 ≈ 1.414 ≠ ∞ → ⇒ ⊂ ∪ ∩",
    "",
    " ",
    "\n",
    "a",
    "1",
    " 1 22 333 4444 55555   666666\n7777777",
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte <-> printable-character map used by byte-level BPE vocabularies."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars = keep[:]
    extra = 0
    for byte in range(256):
        if byte not in keep:
            keep.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {byte: chr(char) for byte, char in zip(keep, chars, strict=True)}


BYTE_TO_CHAR = _bytes_to_unicode()
CHAR_TO_BYTE = {char: byte for byte, char in BYTE_TO_CHAR.items()}


class Unsupported(Exception):
    """The tokenizer cannot be reproduced exactly by tiktoken (the message says why)."""


@dataclass(frozen=True)
class FastBPE:
    """A tiktoken Encoding plus what it takes to return exactly the HF ids."""

    encoding: tiktoken.Encoding
    # None when the Encoding's token values are the HF ids; else rank -> HF id.
    rank_to_id: tuple[int, ...] | None
    # Texts matching this go to the HF tokenizer (characters using bytes absent from the vocab).
    fallback: re.Pattern[str]
    specials: frozenset[str]
    n_merges: int
    n_dropped: int  # vocab tokens left out (unreachable, special, or not byte-level)

    def encode(self, text: str) -> list[int] | None:
        """HF ids of `text`, or None when this text must go to the HF tokenizer."""
        if self.fallback.search(text):
            return None
        ids = self.encoding.encode(text, allowed_special=self.specials, disallowed_special=())
        if self.rank_to_id is not None:
            table = self.rank_to_id
            ids = [table[rank] for rank in ids]
        return ids

    def encode_batch(self, texts: Sequence[str], num_threads: int = 8) -> list[list[int] | None]:
        out: list[list[int] | None] = [None] * len(texts)
        safe = [i for i, text in enumerate(texts) if not self.fallback.search(text)]
        batch = self.encoding.encode_batch(
            [texts[i] for i in safe],
            num_threads=num_threads,
            allowed_special=self.specials,
            disallowed_special=(),
        )
        table = self.rank_to_id
        for i, ids in zip(safe, batch, strict=True):
            out[i] = ids if table is None else [table[rank] for rank in ids]
        return out


# ---------------------------------------------------------------------------------------------------
# Building


def _backend_json(tokenizer: object) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None) or tokenizer
    to_str = getattr(backend, "to_str", None)
    if to_str is None:
        raise Unsupported("not a Hugging Face fast tokenizer (no tokenizers backend)")
    if getattr(tokenizer, "split_special_tokens", False) or getattr(backend, "encode_special_tokens", False):
        raise Unsupported("the tokenizer splits special tokens")
    data = json.loads(to_str())
    if backend is tokenizer and (data.get("truncation") or data.get("padding")):
        raise Unsupported("the tokenizers backend truncates or pads")  # transformers turns both off per call
    return data


def _pattern(pre: dict | None) -> str:
    """The tiktoken regex equivalent to the HF pre-tokenizer (byte-level is required)."""
    if pre is None:
        raise Unsupported("no pre-tokenizer (not a byte-level BPE)")
    steps = pre["pretokenizers"] if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]
    if not kinds or kinds[-1] != "ByteLevel":
        raise Unsupported(f"pre-tokenizer {kinds} does not end with ByteLevel")
    byte_level = steps[-1]
    if byte_level.get("add_prefix_space"):
        raise Unsupported("ByteLevel add_prefix_space=True")
    use_regex = byte_level.get("use_regex", True)
    if kinds == ["ByteLevel"]:
        return GPT2_PATTERN if use_regex else r"[\s\S]+"
    if kinds == ["Digits", "ByteLevel"] and use_regex:
        return GPT2_DIGITS_PATTERN if steps[0].get("individual_digits") else GPT2_DIGIT_RUNS_PATTERN
    if kinds == ["Split", "ByteLevel"] and not use_regex:
        split = steps[0]
        if split.get("behavior") != "Isolated" or split.get("invert"):
            raise Unsupported(f"Split behavior {split.get('behavior')} invert={split.get('invert')}")
        pattern = split.get("pattern", {})
        if "Regex" in pattern:
            return pattern["Regex"]
        if "String" in pattern:
            return re.escape(pattern["String"])
        raise Unsupported(f"Split pattern {pattern}")
    raise Unsupported(f"pre-tokenizer {kinds} (use_regex={use_regex}) has no tiktoken equivalent")


# str.translate table: byte-level character -> the byte as a latin-1 character; any other character
# below 256 -> U+FFFF, so that the latin-1 encode below fails for it as for characters above 255.
_TO_LATIN1 = {ord(char): byte for char, byte in CHAR_TO_BYTE.items()}
_TO_LATIN1.update({code: 0xFFFF for code in range(256) if code not in _TO_LATIN1})


def _token_bytes(token: str) -> bytes | None:
    """The raw bytes of a byte-level vocab entry, or None if it is not one."""
    try:
        return token.translate(_TO_LATIN1).encode("latin-1")
    except UnicodeEncodeError:
        return None


def _fallback_pattern(missing: Iterable[int]) -> re.Pattern[str]:
    """Characters whose UTF-8 form holds a byte the vocab lacks, plus lone surrogates."""
    ranges: list[tuple[int, int]] = [(0xD800, 0xDFFF)]
    for byte in missing:
        if byte < 0x80:
            ranges.append((byte, byte))
        elif byte < 0xC0:
            raise Unsupported(f"the vocab lacks UTF-8 continuation byte 0x{byte:02x}")
        elif 0xC2 <= byte <= 0xDF:
            low = (byte & 0x1F) << 6
            ranges.append((low, low + 0x3F))
        elif 0xE0 <= byte <= 0xEF:
            low = (byte & 0x0F) << 12
            ranges.append((max(low, 0x800), low + 0xFFF))
        elif 0xF0 <= byte <= 0xF4:
            low = (byte & 0x07) << 18
            ranges.append((max(low, 0x10000), min(low + 0x3FFFF, 0x10FFFF)))
        # 0xC0, 0xC1 and 0xF5..0xFF never occur in UTF-8.
    parts = "".join(f"\\U{lo:08x}" if lo == hi else f"\\U{lo:08x}-\\U{hi:08x}" for lo, hi in sorted(ranges))
    return re.compile(f"[{parts}]")


def _hf_encode_batch(tokenizer: object, texts: Sequence[str]) -> list[list[int]]:
    """The reference: what the rest of freqkv does, `tokenizer(text, add_special_tokens=False)`."""
    if not texts:
        return []
    if hasattr(tokenizer, "backend_tokenizer"):
        return [
            list(ids) for ids in tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
        ]  # type: ignore[operator]
    return [enc.ids for enc in tokenizer.encode_batch(list(texts), add_special_tokens=False)]  # type: ignore[attr-defined]


def _check_added_tokens(added: list[dict]) -> None:
    """HF finds added tokens leftmost-longest (in two passes: unnormalized ones first, then the
    normalized ones); tiktoken finds its special tokens leftmost-first in one pass. The two agree
    when no added token is a prefix of another and, if both kinds are present, none overlaps another.
    """
    contents = sorted(token["content"] for token in added)
    if "" in contents:
        raise Unsupported("an added token is empty")
    for a, b in itertools.pairwise(contents):  # sorted: a prefix sorts right before its extensions
        if b.startswith(a):
            raise Unsupported(f"added token {a!r} is a prefix of {b!r}")
    if len({bool(token.get("normalized")) for token in added}) > 1:
        # Two passes: a token of the second kind inside or overlapping one of the first could lose.
        full = set(contents)
        prefixes = {content[:i] for content in contents for i in range(1, len(content))}
        for content in contents:
            n = len(content)
            inner = any(content[i:j] in full for i in range(n) for j in range(i + 1, n + 1) if j - i < n)
            if inner or any(content[i:] in prefixes for i in range(1, n)):
                raise Unsupported(f"added token {content!r} overlaps another (mixed normalized flags)")


def build(tokenizer: object, *, probe: Sequence[str] = PROBE_TEXTS) -> FastBPE:
    """Build and check the tiktoken twin; raises Unsupported with the reason when it cannot be exact."""
    data = _backend_json(tokenizer)
    if data.get("normalizer") is not None:
        raise Unsupported(f"normalizer {data['normalizer'].get('type')} (tiktoken has none)")
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise Unsupported(f"model type {model.get('type')} is not BPE")
    if model.get("dropout"):
        raise Unsupported("BPE dropout")
    if model.get("byte_fallback"):
        raise Unsupported("BPE byte_fallback")
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise Unsupported("BPE subword prefix/suffix")
    pat_str = _pattern(data.get("pre_tokenizer"))

    vocab: dict[str, int] = model["vocab"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in model.get("merges", [])]
    added = data.get("added_tokens") or []
    for token in added:
        if token.get("lstrip") or token.get("rstrip") or token.get("single_word"):
            raise Unsupported(f"added token {token['content']!r} has lstrip/rstrip/single_word")
    special_ids = {token["content"]: token["id"] for token in added}
    _check_added_tokens(added)

    # Which vocab tokens can HF's BPE produce? Without ignore_merges only those it reaches from their
    # own bytes (BPE is local: a token formed inside a longer piece is formed the same way alone).
    backend_model = (getattr(tokenizer, "backend_tokenizer", None) or tokenizer).model  # type: ignore[attr-defined]
    ignore_merges = bool(model.get("ignore_merges"))
    added_id_set = set(special_ids.values())
    token_bytes: dict[str, bytes] = {}
    dropped = 0
    for token, index in vocab.items():
        raw = _token_bytes(token)
        if index in added_id_set or raw is None:
            dropped += 1
            continue
        if len(raw) > 1 and not ignore_merges and [t.id for t in backend_model.tokenize(token)] != [index]:
            dropped += 1
            continue
        token_bytes[token] = raw
    missing = [b for b in range(256) if BYTE_TO_CHAR[b] not in token_bytes]
    fallback = _fallback_pattern(missing)

    # Merge order: the first merge producing each token. Ids follow it -> ranks are the ids.
    first_merge: dict[str, int] = {}
    for index, (left, right) in enumerate(merges):
        if left not in token_bytes or right not in token_bytes or (left + right) not in token_bytes:
            continue  # never fires in HF (a part or the result is unreachable)
        if first_merge.setdefault(left + right, index) != index:
            # HF ranks each merge; tiktoken can rank the token only once.
            raise Unsupported(f"token {left + right!r} is produced by two merges")
    unmerged = [t for t, raw in token_bytes.items() if len(raw) > 1 and t not in first_merge]
    if unmerged:  # HF only reaches them by a whole-piece lookup; tiktoken would also merge into them
        raise Unsupported(f"{len(unmerged)} multi-byte tokens are not produced by any merge")
    in_order = sorted(first_merge, key=first_merge.__getitem__)
    ids_in_order = [vocab[t] for t in in_order]
    singles = [t for t, raw in token_bytes.items() if len(raw) == 1]
    ids_follow_merges = all(a < b for a, b in itertools.pairwise(ids_in_order))

    top = max([*vocab.values(), *special_ids.values()]) + 1
    if ids_follow_merges:
        # Single bytes are never ranked against merges (tiktoken only ranks pairs), so their ids are fine.
        ranks = {token_bytes[t]: vocab[t] for t in token_bytes}
        specials = dict(special_ids)
        placeholder = top
        rank_to_id = None
    else:
        ranks = {token_bytes[t]: i for i, t in enumerate(singles)}
        ranks.update({token_bytes[t]: len(singles) + i for i, t in enumerate(in_order)})
        table = [vocab[t] for t in singles] + [vocab[t] for t in in_order]
        specials = {}
        for content, index in special_ids.items():
            specials[content] = len(table)
            table.append(index)
        placeholder = len(table)
        rank_to_id = table
    for byte in missing:  # never emitted for texts `fallback` lets through
        ranks[bytes([byte])] = placeholder
        placeholder += 1
        if rank_to_id is not None:
            rank_to_id.append(-1)

    name = f"hf-bpe-{getattr(tokenizer, 'name_or_path', '') or 'tokenizer'}"
    try:
        encoding = tiktoken.Encoding(name, pat_str=pat_str, mergeable_ranks=ranks, special_tokens=specials)
    except ValueError as exc:  # the regex does not compile under fancy-regex
        raise Unsupported(f"tiktoken rejects the pattern: {exc}") from None
    fast = FastBPE(
        encoding=encoding,
        rank_to_id=None if rank_to_id is None else tuple(rank_to_id),
        fallback=fallback,
        specials=frozenset(specials),
        n_merges=len(merges),
        n_dropped=dropped,
    )
    texts = [*probe, "".join(probe), *(f"x{s}y{s}" for s in list(special_ids)[:8])]
    expected = _hf_encode_batch(tokenizer, texts)
    for text, want in zip(texts, expected, strict=True):
        got = fast.encode(text)
        if got is not None and got != want:
            raise Unsupported(f"differs from the HF tokenizer on the probe {text[:40]!r}")
    return fast


# ---------------------------------------------------------------------------------------------------
# Cache and public API

_cache: weakref.WeakKeyDictionary[object, tuple[int, FastBPE | None, str | None]] = (
    weakref.WeakKeyDictionary()
)
_lock = threading.Lock()


def _size(tokenizer: object) -> int:
    try:
        return len(tokenizer)  # type: ignore[arg-type]
    except TypeError:
        return -1


def fast_bpe(tokenizer: object) -> FastBPE | None:
    """The cached, verified FastBPE for this tokenizer, or None (see `unsupported_reason`)."""
    with _lock:
        try:
            hit = _cache.get(tokenizer)
        except TypeError:  # not weak-referenceable
            hit = None
        if hit is not None and hit[0] == _size(tokenizer):
            return hit[1]
        try:
            fast, reason = build(tokenizer), None
        except Unsupported as exc:
            fast, reason = None, str(exc)
            log.info("tiktoken twin not used: %s", reason)
        except Exception as exc:  # never let the fast path break tokenization
            fast, reason = None, f"{type(exc).__name__}: {exc}"
            log.warning("tiktoken twin failed to build: %s", reason)
        with contextlib.suppress(TypeError):
            _cache[tokenizer] = (_size(tokenizer), fast, reason)
        return fast


def tiktoken_from_hf(tokenizer: object) -> tiktoken.Encoding | None:
    """A tiktoken Encoding giving exactly the HF ids (`add_special_tokens=False`), or None.

    None when the tokenizer cannot be reproduced exactly (`unsupported_reason` says why) or when the
    HF ids are not in merge order (then only `fast_bpe(...).encode`, which maps ranks back, is exact).
    Texts holding characters that match `fast_bpe(tokenizer).fallback` (bytes the vocab lacks) are
    outside the contract; `encode`/`count_tokens` route those to the HF tokenizer.
    """
    fast = fast_bpe(tokenizer)
    if fast is None or fast.rank_to_id is not None:
        return None
    return fast.encoding


def unsupported_reason(tokenizer: object) -> str | None:
    """Why `tiktoken_from_hf` gives None for this tokenizer (None when it does not)."""
    fast = fast_bpe(tokenizer)
    if fast is not None:
        return None if fast.rank_to_id is None else "token ids are not in merge order (use fast_bpe)"
    try:
        return _cache[tokenizer][2]
    except (KeyError, TypeError):
        return "unknown"


def encode(text: str, tokenizer: object) -> list[int]:
    """`tokenizer(text, add_special_tokens=False)["input_ids"]`, through tiktoken when it is exact."""
    fast = fast_bpe(tokenizer)
    if fast is not None:
        ids = fast.encode(text)
        if ids is not None:
            return ids
    return _hf_encode_batch(tokenizer, [text])[0]


def count_tokens(texts: str | Iterable[str], tokenizer: object, *, num_threads: int = 8) -> int:
    """Total tokens of `texts` (no special tokens added), through tiktoken when it is exact."""
    batch = [texts] if isinstance(texts, str) else list(texts)
    fast = fast_bpe(tokenizer)
    if fast is None:
        return sum(len(ids) for ids in _hf_encode_batch(tokenizer, batch))
    total = 0
    rest: list[str] = []
    safe: list[str] = []
    for text in batch:
        (rest if fast.fallback.search(text) else safe).append(text)
    if len(safe) == 1:
        total += len(fast.encoding.encode(safe[0], allowed_special=fast.specials, disallowed_special=()))
    elif safe:
        total += sum(
            len(ids)
            for ids in fast.encoding.encode_batch(
                safe, num_threads=num_threads, allowed_special=fast.specials, disallowed_special=()
            )
        )
    total += sum(len(ids) for ids in _hf_encode_batch(tokenizer, rest))
    return total
