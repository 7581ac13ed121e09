"""Streamed text word-wrapped at a terminal's width: no word is split at the edge."""

from __future__ import annotations

from typing import TextIO

from rich.cells import cell_len


class WordWrap:
    """Writes text to ``stream`` as it streams in, breaking lines between words at ``width``
    columns. A word is held until it ends (a space or a newline comes, or :meth:`finish`), so it
    is never cut by the edge; a word wider than the line is cut, as it must be."""

    def __init__(self, stream: TextIO, width: int) -> None:
        self.stream = stream
        self.width = max(width, 8)
        self.column = 0
        self.word = ""
        self.space = ""  # the spaces before the held word

    def write(self, text: str) -> None:
        for char in text:
            if char == "\n":
                self._put_word()
                self.stream.write("\n")
                self.column, self.space = 0, ""
            elif char in " \t":
                self._put_word()
                self.space += char
            else:
                self.word += char
        self.stream.flush()

    def finish(self) -> None:
        """Write the last word held back."""
        self._put_word()
        self.stream.flush()

    def _put_word(self) -> None:
        if not self.word:
            return
        if self.column and self.column + cell_len(self.space + self.word) > self.width:
            self.stream.write("\n")
            self.column, self.space = 0, ""
        while cell_len(self.word) > self.width - self.column:  # longer than a whole line
            cut = self.width - self.column
            self.stream.write(self.space + self.word[:cut] + "\n")
            self.word, self.space, self.column = self.word[cut:], "", 0
        self.stream.write(self.space + self.word)
        self.column += cell_len(self.space + self.word)
        self.word, self.space = "", ""
