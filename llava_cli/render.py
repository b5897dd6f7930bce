"""Terminal output: the answer on stdout (live through rich on a TTY, plain text when
piped), notices on stderr, so `llava ask … > answer.txt` captures the answer alone."""

from __future__ import annotations

import sys
from typing import TextIO

from rich.console import Console


class AnswerWriter:
    """Writes answer pieces as they arrive and ends the answer with one newline."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.console = Console(file=self.stream, highlight=False, soft_wrap=True) if self.stream.isatty() else None
        self.wrote = False
        self.last = ""

    def write(self, piece: str) -> None:
        if not piece:
            return
        if self.console is not None:
            self.console.print(piece, end="", markup=False, emoji=False)
            self.console.file.flush()
        else:
            self.stream.write(piece)
            self.stream.flush()
        self.wrote = True
        self.last = piece

    def end(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


class Notices:
    """One-line messages on stderr; dim on a terminal, plain otherwise."""

    def __init__(self, quiet: bool = False) -> None:
        self.console = Console(stderr=True, highlight=False, soft_wrap=True)
        self.quiet = quiet

    def info(self, message: str) -> None:
        if not self.quiet:
            self.console.print(message, style="dim", markup=False)

    def warn(self, message: str) -> None:
        self.console.print(f"llava: warning: {message}", style="yellow", markup=False)

    def error(self, message: str) -> None:
        self.console.print(f"llava: error: {message}", style="bold red", markup=False)

    def status(self, message: str):
        """A spinner while something slow happens (only on a terminal)."""
        if self.console.is_terminal and not self.quiet:
            return self.console.status(message, spinner="dots")
        return _Null()


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
