"""Terminal output: the answer on stdout (live through rich on a TTY, plain text when
piped), notices on stderr, so `llava ask … > answer.txt` captures the answer alone.

Colour follows https://no-color.org: when NO_COLOR is set to anything non-empty, nothing
is styled at all (no colour, no bold, no dim).
"""

from __future__ import annotations

import os
import re
import sys
from typing import TextIO

from rich.console import Console


def color_enabled() -> bool:
    return not os.environ.get("NO_COLOR")


def _console(**kwargs) -> Console:
    if not color_enabled():
        kwargs.setdefault("no_color", True)
    return Console(highlight=False, soft_wrap=True, **kwargs)


class AnswerWriter:
    """Writes answer pieces as they arrive and ends the answer with one newline.

    With ``stream=False`` the pieces are collected and written at ``end``, in one piece.
    """

    def __init__(self, stream: TextIO | None = None, *, live: bool = True) -> None:
        self.stream = stream or sys.stdout
        self.console = _console(file=self.stream) if self.stream.isatty() else None
        self.live = live
        self.parts: list[str] = []
        self.wrote = False
        self.last = ""

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def write(self, piece: str) -> None:
        if not piece:
            return
        self.parts.append(piece)
        self.last = piece
        if not self.live:
            return
        self._emit(piece)

    def _emit(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text, end="", markup=False, emoji=False)
            self.console.file.flush()
        else:
            self.stream.write(text)
            self.stream.flush()
        self.wrote = True

    def end(self) -> None:
        if not self.live and self.parts:
            self._emit(self.text)
        self.stream.write("\n")
        self.stream.flush()


_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\ud800-\udfff]")  # tab stays
_CONTROL_BUT_NEWLINES = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ud800-\udfff]")


def _escape(match: re.Match) -> str:
    char = match.group()
    return f"\\u{ord(char):04x}" if ord(char) >= 0xd800 else char.encode("unicode_escape").decode("ascii")


def printable(text: str, *, one_line: bool = True) -> str:
    """``text`` safe for a terminal: control characters (a newline in a file name, an
    escape sequence) and undecodable bytes (the surrogate escapes of a name that is not
    UTF-8) shown as Python escapes, so an error is always the one line it claims to be.
    With ``one_line`` false, newlines stay."""
    pattern = _CONTROL if one_line else _CONTROL_BUT_NEWLINES
    return pattern.sub(_escape, text) if pattern.search(text) else text


class Notices:
    """One-line messages on stderr; dim/coloured on a terminal unless NO_COLOR, plain otherwise.

    ``quiet`` silences everything but errors; ``verbose`` lets ``detail`` lines through.
    """

    def __init__(self, quiet: bool = False, verbose: bool = False) -> None:
        self.console = _console(stderr=True)
        self.quiet = quiet
        self.verbose = verbose and not quiet

    def _print(self, message: str, style: str | None, *, one_line: bool = False) -> None:
        self.console.print(printable(message, one_line=one_line), style=style if color_enabled() else None,
                           markup=False)

    def info(self, message: str) -> None:
        if not self.quiet:
            self._print(message, "dim")

    def detail(self, message: str) -> None:
        """A --verbose line."""
        if self.verbose:
            self._print(message, "dim")

    def warn(self, message: str) -> None:
        if not self.quiet:
            self._print(f"llava: warning: {message}", "yellow", one_line=True)

    def error(self, message: str) -> None:
        self._print(f"llava: error: {message}", "bold red", one_line=True)

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
