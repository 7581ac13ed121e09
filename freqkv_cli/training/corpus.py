"""Training text in: documents -> one token stream -> reproducible random windows."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..documents import open_document
from ..errors import UsageError

TEXT_SUFFIXES = (".txt", ".md", ".pdf", ".xz")


def expand_paths(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given; a folder stands for its text/PDF files (sorted, not recursive)."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
            if not inside:
                raise UsageError(f"--data folder '{path}' holds no .txt, .md or .pdf files")
            files.extend(inside)
        else:
            files.append(path)
    if not files:
        raise UsageError("no training data: pass --data FILE (repeatable)")
    return files


def _read_text(path: Path) -> str:
    if path.suffix.lower() == ".xz":
        import lzma

        try:
            return lzma.decompress(path.read_bytes()).decode("utf-8")
        except (OSError, lzma.LZMAError, UnicodeDecodeError) as exc:
            raise UsageError(f"--data '{path}': not UTF-8 text compressed with xz ({exc})") from None
    return open_document(path).text()


@dataclass
class TokenCorpus:
    """All training documents as one token stream, each document ended by ``eos``.

    tokens:  ``(total,)`` int64
    sources: ``[{"file", "tokens", "sha256"}, ...]`` for the record in ``freqkv.json``.
    """

    tokens: torch.Tensor
    sources: list[dict]

    @classmethod
    def from_files(cls, paths: Sequence[str | Path], tokenizer: object, eos_id: int | None) -> TokenCorpus:
        pieces: list[torch.Tensor] = []
        sources: list[dict] = []
        for path in expand_paths(paths):
            text = _read_text(path)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
            if eos_id is not None:
                ids = [*ids, eos_id]
            pieces.append(torch.tensor(ids, dtype=torch.long))
            digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
            sources.append({"file": path.name, "tokens": len(ids), "sha256": digest})
        return cls(torch.cat(pieces), sources)

    def __len__(self) -> int:
        return int(self.tokens.numel())

    def batch(self, step: int, size: int, seq_len: int, seed: int) -> torch.Tensor:
        """``(size, seq_len)`` windows at random offsets, a pure function of ``(seed, step)``:
        a resumed run sees exactly the data an uninterrupted one would have."""
        if len(self) < seq_len:
            raise UsageError(f"training data has {len(self)} tokens, fewer than --seq-len {seq_len}")
        generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
        starts = torch.randint(0, len(self) - seq_len + 1, (size,), generator=generator)
        return torch.stack([self.tokens[s : s + seq_len] for s in starts.tolist()])
